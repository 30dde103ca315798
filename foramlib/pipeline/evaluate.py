"""The ``evaluate`` stage: the paper's Tables 4–8 and Figures 3–5 for this run, the
authors' released numbers and the printed ones beside them, the classical baseline,
specimen-level answers, and ``results/metrics.json``.

Every choice is made on validation predictions (the final model, the specimen
uncertainty threshold); the test split only measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from foramlib.pipeline._config import StageConfig, backbone_names, params_field

__all__ = ["EvaluateStageConfig", "EvaluateStageResult", "run"]


@dataclass(frozen=True)
class EvaluateStageConfig(StageConfig):
    """What the ``evaluate`` stage reads and writes.

    Parameters
    ----------
    backbones : tuple of str
        The trained backbones (keys of ``train.backbones``).
    source : str
        ``data.source``: labels the figures (virtual data is always labelled virtual).
    seed : int
        The classical baseline's ``random_state``; also the genus check's probes.
    probe_shape, probe_supersample : int
        ``virtual.shape`` and ``virtual.supersample``: the genus check's unknown-taxon
        probes are rendered like the virtual collection's scans.
    preset : str
        ``virtual.preset``: with ``seed``, where each virtual shell's axis lies in its
        scan (the test accuracy by the angle between a section and that axis).
    models_dir, ensembles_dir, split_index, slices, reference_dir : str
        Inputs: the backbones' predictions, the ensemble stage's choices, the split, the
        slice store (the baseline's features) and the authors' released reports.
    tables_dir, figures_dir, predictions_dir, metrics_json : str
        Outputs.
    section_check : str
        Output: the check "does this look like a foraminifer section?"
        (:mod:`foramlib.inference.section_check`), fitted on the training slices, its threshold
        set on the validation slices; the dashboard and ``foram classify`` load it.
    genus_check : str
        Output: the check "is this one of these genera?"
        (:mod:`foramlib.inference.genus_check`) on the final model's main member's
        features, its threshold set on the validation slices, measured on the test
        slices and on sections of virtual pseudo-taxa the collection lacks.

    Examples
    --------
    >>> cfg = EvaluateStageConfig.from_params(
    ...     {"seed": 1, "data": {"source": "virtual"}, "train": {"backbones": {"a": {}}},
    ...      "virtual": {"preset": "paper", "shape": 64, "supersample": 2}})
    >>> cfg.backbones, cfg.metrics_json, cfg.probe_shape
    (('a',), 'results/metrics.json', 64)
    """

    stage = "evaluate"
    backbones: tuple[str, ...] = params_field("train.backbones", normalize=backbone_names)
    source: str = params_field("data.source", default="virtual")
    seed: int = params_field("seed", default=0)
    probe_shape: int = params_field("virtual.shape", default=128)
    probe_supersample: int = params_field("virtual.supersample", default=2)
    preset: str = params_field("virtual.preset", default="paper")
    models_dir: str = "models"
    ensembles_dir: str = "results/ensemble"
    split_index: str = "data/split/index.csv"
    slices: str = "data/slices"
    reference_dir: str = "reference/authors-results"
    tables_dir: str = "results/tables"
    figures_dir: str = "results/figures"
    predictions_dir: str = "results/predictions"
    metrics_json: str = "results/metrics.json"
    section_check: str = "results/section_check.npz"
    genus_check: str = "results/genus_check.npz"


@dataclass(frozen=True)
class EvaluateStageResult:
    """The stage's outputs, for display (everything is also on disk)."""

    final: str  # the final model, chosen on validation
    summary: dict  # the content of metrics.json
    tables: dict[str, pd.DataFrame]  # table4 ... table8 of this run
    baseline_scores: pd.DataFrame  # the baseline's C search on validation
    baseline_line: str  # one line on the baseline's fit
    differences: pd.DataFrame  # authors' released reports vs the printed tables
    notes: list[str]
    specimen_line: str  # one line on the specimen-level uncertainty rule
    votes: pd.DataFrame  # one row per test specimen
    comparison: pd.DataFrame  # final model vs baseline, slices and specimens
    section_check: pd.DataFrame  # genuine sections kept, other inputs let through
    section_line: str  # one line on how the section check was fitted
    genus_check: pd.DataFrame  # known genera kept, unknown taxa let through
    genus_line: str  # one line on how the genus check was fitted
    sections: pd.DataFrame  # test accuracy by fossil area (and angle to the shell's axis)
    figures: dict[str, Path] = field(default_factory=dict)


def _write_table(table: pd.DataFrame, path: Path) -> None:
    from foramlib.io.atomic import write_csv

    write_csv(table.reset_index() if table.index.name else table, path)


def _split_images(config: EvaluateStageConfig):
    """The train, validation and test slices (and their index rows), and the slicing
    settings the store was cut with."""
    from foramlib.dataset import slicing
    from foramlib.dataset.preprocess import PreprocessConfig
    from foramlib.evaluation import baseline
    from foramlib.learn import loader as data

    index, arrays = slicing.load_slices(config.slices, data.load_split_index(config.split_index))
    images = {s: baseline.split_images(index, arrays, s) for s in ("train", "val", "test")}
    record = Path(config.slices) / Path(slicing.STORE_RECORD).name  # how the store was cut
    if record.is_file():
        cut = slicing.SlicingConfig.from_record(json.loads(record.read_text("utf-8")))
    else:
        size = int(images["test"][0].shape[-1])
        cut = slicing.SlicingConfig(preprocess=PreprocessConfig(size=size))
    return images, cut


def _section_check(config: EvaluateStageConfig, tables_dir: Path, images, cut):
    """Fit the section check (train), set its threshold (validation), measure it on the
    test slices and on the probes; write the check and its table."""
    from foramlib.inference import section_check
    from foramlib.io.atomic import write_csv

    check = section_check.fit_section_check(
        images["train"][0], images["val"][0], seed=config.seed, n_jobs=2
    )
    check.save(config.section_check)
    test, rows = images["test"]
    probes = section_check.probe_sets(config.seed)
    table = section_check.measure(check, test, rows["species"].to_numpy(), probes, cut.preprocess)
    write_csv(table, tables_dir / "section_check.csv")
    line = (
        f"mixture of {check.info['components']} Gaussians over "
        f"{len(section_check.FEATURE_NAMES)} descriptors of {check.info['n_train']} training "
        f"slices; threshold {check.threshold:.1f} keeps {check.keep:.0%} of the "
        f"{check.info['n_val']} validation slices"
    )
    return check, table, line


def _genus_check(config: EvaluateStageConfig, tables_dir: Path, images, cut, spec):
    """Fit the genus check on the final model's main member (training features, the
    threshold on validation), measure it on the test slices and on unknown pseudo-taxa;
    write the check and its table."""
    import keras

    from foramlib.inference import genus_check as gc
    from foramlib.io.atomic import write_csv

    member = gc.main_member(spec)
    path = Path(config.models_dir) / member / "model.keras"
    features = gc.feature_model(keras.saving.load_model(path, compile=False))
    feats = {s: gc.embed(features, images[s][0]) for s in images}
    train_rows = images["train"][1]
    check = gc.fit_genus_check(
        feats["train"],
        feats["val"],
        labels=train_rows["species"].to_numpy(),
        seed=config.seed,
        member=member,
        model_sha256=gc.file_digest(path),
        size=int(images["train"][0].shape[-1]),
    )
    check.save(config.genus_check)
    probes, probe_rows = gc.unknown_taxa_sections(
        cut,
        seed=config.seed,
        shape=config.probe_shape,
        supersample=config.probe_supersample,
        n_jobs=2,
    )
    table = gc.measure(
        check,
        feats["test"],
        images["test"][1]["specimen_id"].to_numpy(),
        gc.embed(features, probes),
        probe_rows["specimen_id"].to_numpy(),
    )
    write_csv(table, tables_dir / "genus_check.csv")
    line = (
        f"distance to the {check.k}th nearest of {check.info['n_reference']} training slices "
        f"in {member}'s feature space; threshold {check.threshold:.3f} keeps {check.keep:.0%} "
        f"of the {check.info['n_val']} validation slices; probes: "
        f"{probe_rows['specimen_id'].nunique()} virtual scans of "
        f"{probe_rows['taxon'].nunique()} pseudo-taxa"
    )
    return check, table, line


def _sections(config: EvaluateStageConfig, scored: dict, models: list[str]) -> pd.DataFrame:
    """Test accuracy of `models` by the sections' fossil area and, for the virtual
    collection (whose shells' orientation in each scan is known), by the angle between
    the section's plane and the shell's axis."""
    from foramlib.evaluation import sections
    from foramlib.learn import loader as data

    first = scored[models[0]]
    index = data.load_split_index(config.split_index).set_index("slice_id")
    ids = first.frame["slice_id"].astype(str)
    missing = ids[~ids.isin(index.index)]
    if len(missing):
        raise ValueError(
            f"{config.split_index}: {len(missing)} test slices of the predictions are not "
            f"in the split index, e.g. {missing.iloc[0]!r}"
        )
    rows = index.loc[ids].reset_index()
    correct = {m: scored[m].y_pred == scored[m].y_true for m in models}
    axes = None
    if config.source == "virtual":
        from foramlib.virtual import collection as virtual

        plans = virtual.plan_collection(virtual.taxa_preset(config.preset), config.seed)
        axes = virtual.shell_axes(plans)
    return sections.section_table(rows, correct, axes)


def run(config: EvaluateStageConfig) -> EvaluateStageResult:
    """Score every backbone, ensemble and the baseline on the test split and write the
    tables, figures, predictions and ``metrics.json`` (each file atomically)."""
    from foramlib.evaluation import baseline, ensemble, metrics, paper, reference, reports
    from foramlib.inference import scan
    from foramlib.io.atomic import write_csv, write_text
    from foramlib.learn import loader as data
    from foramlib.viz import plots

    backbones = list(config.backbones)
    tables_dir, figures_dir = Path(config.tables_dir), Path(config.figures_dir)
    models_dir = Path(config.models_dir)

    # --- every backbone and ensemble on the test split
    test = {
        b: metrics.load_predictions(models_dir / b / "predictions_test.csv", name=b)
        for b in backbones
    }
    metrics.align(list(test.values()))
    template = test[backbones[0]]
    names, y_true = template.names, template.y_true
    spec_files = sorted(Path(config.ensembles_dir).glob("*.json"))
    specs = {p.stem: ensemble.EnsembleSpec.load(p) for p in spec_files}
    ours = {b: metrics.report_from_probs(b, p.y_true, p.probs, names) for b, p in test.items()}
    ensemble_probs = {}
    for name, spec in specs.items():
        ensemble_probs[name] = spec.apply({m: test[m].probs for m in spec.members})
        ours[name] = metrics.report_from_probs(name, y_true, ensemble_probs[name], names)
        frame = template.frame[["slice_id", "specimen_id", "true"]].copy()
        frame[[f"p_{n}" for n in names]] = ensemble_probs[name]
        write_csv(frame, Path(config.predictions_dir) / f"{name}_test.csv")

    # --- the classical baseline on the very same slices (foramlib.evaluation.baseline's recipe)
    run_ = baseline.run_baseline(
        data.load_split_index(config.split_index), config.slices, names, seed=config.seed
    )
    paths = baseline.write_predictions(run_, config.predictions_dir)
    base_name = baseline.BASELINE_NAME
    base_test = metrics.load_predictions(paths["test"], name=base_name, names=names)
    metrics.align([template, base_test])
    base_report = metrics.report_from_probs(base_name, base_test.y_true, base_test.probs, names)
    baseline_line = (
        f"C = {run_.fit.C} (validation accuracy {run_.fit.val_accuracy:.3f}); test accuracy "
        f"{base_report.overall['accuracy']:.3f}; {sum(run_.seconds.values()):.0f} s"
    )

    # --- the paper's tables; the final model is chosen on VALIDATION predictions
    patch = specs.get("PatchEnsemble")
    weak = list(patch.weak) if patch else []
    methods = {m: ours[m] for m in ["PatchEnsemble", "Top-2", "Top-3", "Top-4"] if m in ours}
    val = {
        b: metrics.load_predictions(models_dir / b / "predictions_val.csv", name=b)
        for b in backbones
    }
    final, _ = ensemble.choose_final(specs, val)
    table8_reports = {
        f"Ensemble (Final: {final})": ours[final],
        **{b: ours[b] for b in backbones},
        base_name: base_report,
    }
    with_baseline = {**methods, base_name: base_report}
    tables = {
        "table4": reports.table4(with_baseline, weak),
        "table5": reports.table5(with_baseline),
        "table6": reports.table6(with_baseline),
        "table7": reports.table7(with_baseline),
        "table8": reports.table8(table8_reports),
    }
    for name, table in tables.items():
        _write_table(table, tables_dir / f"{name}.csv")

    # --- the authors' released reports and the printed tables
    authors = reference.load_authors_results(config.reference_dir)
    authors_tables = reference.authors_tables(authors)
    printed = {f"table{i}": getattr(paper, f"table{i}")() for i in range(4, 9)}
    for name in authors_tables:
        _write_table(authors_tables[name], tables_dir / f"authors_{name}.csv")
        _write_table(printed[name], tables_dir / f"paper_{name}.csv")
    differences = reference.compare_tables(authors_tables, printed)
    notes = reference.comparison_notes(authors, differences)
    write_csv(differences, tables_dir / "authors_vs_paper.csv")
    write_csv(pd.DataFrame({"note": notes}), tables_dir / "authors_notes.csv")

    # --- specimen-level answers: one vote per test specimen, the rule from validation
    scored = {
        **test,
        **{m: template.with_probs(m, p) for m, p in ensemble_probs.items()},
        base_name: base_test,
    }
    specimen = {m: metrics.specimen_accuracy(p) for m, p in scored.items()}
    votes = metrics.specimen_votes(scored[final])
    final_spec = specs.get(final) or ensemble.EnsembleSpec("top_k", (final,), tuple(names), k=1)
    specimen_rule = scan.calibrate_specimens(final_spec, config.models_dir)
    votes, flagged = scan.flag_votes(votes, specimen_rule)
    specimen_line = (
        f"specimen-level threshold {specimen_rule.threshold:.3f} (validation: "
        f"{specimen_rule.n_val} specimens, target reached: {specimen_rule.reached}); test: "
        f"{flagged['accepted']} of {flagged['specimens']} specimens accepted, "
        f"accuracy among them {flagged['accepted_accuracy']}"
    )
    write_csv(votes.round({"confidence": 3}), tables_dir / "specimens_test.csv")
    comparison = baseline.comparison_table(
        ours[final], specimen[final], base_report, specimen[base_name]
    )
    write_csv(comparison, tables_dir / "baseline_comparison.csv")

    # --- which sections it reads: by fossil area, and by the angle to the shell's axis
    section_rows = _sections(config, scored, [final, base_name])
    write_csv(section_rows.round(3), tables_dir / "sections_test.csv")

    # --- "does this look like a foraminifer section?" (train fits, validation sets)
    images, cut = _split_images(config)
    check, check_table, check_line = _section_check(config, tables_dir, images, cut)
    # --- "is it one of these genera?" (the final model's features; validation sets)
    genus, genus_table, genus_line = _genus_check(config, tables_dir, images, cut, final_spec)

    # --- figures
    label = plots.data_label(config.source)
    final_probs = ensemble_probs[final] if final in ensemble_probs else test[final].probs
    figures = {
        "figure3_models.png": plots.model_comparison_figure(
            tables["table8"], f"{label}: models (test)"
        ),
        "figure4_species.png": plots.species_metrics_figure(
            {b: ours[b] for b in backbones}, f"{label}: per-species metrics (test)"
        ),
        "figure5_weak.png": plots.weak_classes_figure(
            tables["table4"], f"{label}: weak classes {weak}, ensembles and baseline (test)"
        ),
        "confusion_final.png": plots.confusion_figure(
            metrics.confusion(y_true, final_probs.argmax(axis=1), len(names)),
            names,
            f"{label}: {final}, normalised confusion (test)",
        ),
        "roc_final.png": plots.roc_figure(
            metrics.roc_curves(y_true, final_probs), names, f"{final}: one-vs-rest ROC (test)"
        ),
        "figure3_authors.png": plots.model_comparison_figure(
            authors_tables["table8"], "Authors' released reports: models (test)"
        ),
        "figure5_authors.png": plots.weak_classes_figure(
            authors_tables["table4"], "Authors' released reports: weak classes"
        ),
        "confusion_specimens.png": plots.confusion_figure(
            metrics.specimen_confusion(votes, names),
            names,
            f"{label}\n{final}: one vote per test specimen ({len(votes)}), row-normalised",
        ),
        "sections_test.png": plots.section_accuracy_figure(
            section_rows, f"{label}\nwhich test sections are read correctly"
        ),
    }
    written = {}
    for name, fig in figures.items():
        written[name] = figures_dir / name
        plots.save_figure(fig, written[name])

    summary = {
        "data_source": config.source,
        "final": final,
        "test_slices": int(len(y_true)),
        "models": {
            m: {k: v for k, v in r.overall.items() if v is not None} for m, r in ours.items()
        },
        "specimen_accuracy": specimen,
        "final_specimen_accuracy": specimen[final],
        "specimen_uncertainty": {**flagged, "rule": specimen_rule.rule},
        "baseline": baseline.summary(run_, base_report, specimen[base_name], ours[final]),
        "weak_classes": weak,
        "section_check": {
            "keep": check.keep,
            "threshold": round(check.threshold, 3),
            **check.info,
            "accepted": check_table.set_index("family")["accepted"].to_dict(),
        },
        "genus_check": {
            "keep": genus.keep,
            "k": genus.k,
            "threshold": round(genus.threshold, 4),
            **{k: v for k, v in genus.info.items() if k != "model_sha256"},
            "accepted": genus_table.set_index("family")["accepted"].to_dict(),
        },
    }
    write_text(config.metrics_json, json.dumps(summary, indent=2) + "\n")
    return EvaluateStageResult(
        final=final,
        summary=summary,
        tables=tables,
        baseline_scores=run_.fit.scores,
        baseline_line=baseline_line,
        differences=differences,
        notes=notes,
        specimen_line=specimen_line,
        votes=votes,
        comparison=comparison,
        section_check=check_table,
        section_line=check_line,
        genus_check=genus_table,
        genus_line=genus_line,
        sections=section_rows,
        figures=written,
    )
