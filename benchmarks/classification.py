"""Classification accuracy of the quick profile, over training seeds, against the baseline.

Retrains every backbone of ``train.backbones`` (params.yaml, with its pretrained
weights when ``train.weights`` points at them) once per seed on the pipeline's own
slices and split, rebuilds the ensembles on VALIDATION predictions exactly as the
``ensemble`` stage does, and scores the final ensemble (the rule the evaluate stage
uses) and each backbone on the test split: slice accuracy, macro-F1 and specimen-level
accuracy, with mean and standard deviation over seeds. The classical baseline (HOG +
logistic regression, C chosen on validation) is scored on the same slices.

    python benchmarks/classification.py --seeds 2024 1 2     # after `dvc repro`
    python benchmarks/classification.py --from-run           # the pipeline's own models
    python benchmarks/classification.py --from-run --learning-curves --difficulty \
        --out benchmarks/results/classification_curves.json  # + accuracy vs data size

``--learning-curves`` retrains one small backbone (``--curve-backbone``) on subsets of
the training split: a fraction of the slices of every training specimen, and at most
*n* training specimens per genus, and records test accuracy for each, with the
classical baseline refitted on the same subset; ``--difficulty`` also scores the
baseline on test specimens half of whose slices it has seen (a diagnostic of how much
of the difficulty is new specimens). ``--no-reserve`` trains on the ordinary slices only
(without the training reserve of ``slice.train_factor``), and ``--phase2-epochs`` sets the
length of phase 2, so that the reserve can be measured against training as long without
it:

    python benchmarks/classification.py --backbones mobilenetv3_small --seeds 2024 \
        --no-reserve --phase2-epochs 75 --out benchmarks/results/classification_no_reserve.json

The learning curves are drawn next to the JSON (same name, ``.png``).

A retraining over several seeds takes hours on 2 cores; the JSON is rewritten after
each finished seed (``complete: false`` until the last). ``--resume`` reads that file
back and retrains only the seeds it lacks, refusing if its settings differ from this
run's (params, slices, backbones):

    python benchmarks/classification.py --from-run --seeds 1 2 --resume \
        --out benchmarks/results/classification_cycle_end.json

Writes ``benchmarks/results/classification.json`` naming the machine. Accuracy numbers
are on the VIRTUAL collection: they test the pipeline, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib import config  # noqa: E402
from foramlib.evaluation import ensemble, metrics  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import training
from foramlib.learn.augment import mix_batch  # noqa: E402


def train_config(params: dict, backbone: str, seed: int) -> training.TrainConfig:
    """The train stage's configuration of `backbone` from params.yaml, with `seed`."""
    return training.TrainConfig.from_params(params, backbone, seed=seed)


def datasets_for(cfg: training.TrainConfig, index: pd.DataFrame, store, names) -> dict:
    """The train/val/test batches `cfg` trains on, as the train stage builds them."""
    mix = (lambda x, y, rng: mix_batch(x, y, cfg.augment, rng)) if cfg.augment.enabled else None
    return data.make_datasets(
        index, store, names, batch_size=cfg.batch_size, seed=cfg.seed, mix=mix,
        input_size=cfg.input_size, workers=cfg.workers,
    )  # fmt: skip


def train_once(cfg: training.TrainConfig, index: pd.DataFrame, store, names, out_dir):
    """Train one backbone; return its val and test Predictions."""
    datasets = datasets_for(cfg, index, store, names)
    result = training.train_backbone(cfg, datasets, names, out_dir, progress=None)
    out = {}
    for split in ("val", "test"):
        out[split] = metrics.load_predictions(
            Path(out_dir) / f"predictions_{split}.csv", name=cfg.backbone
        )
    return out, result.summary


def validation_curve(history_csv) -> dict:
    """Per-epoch validation loss and accuracy (one view) of a run's ``history.csv``.

    Recorded so that the stopping rule of a run can be judged afterwards: a run trained
    to the end of its budget holds, epoch by epoch, every shorter run of the same seed.
    """
    hist = pd.read_csv(history_csv)
    curve = {k: [round(float(v), 4) for v in hist[k]] for k in ("val_loss", "val_accuracy")}
    curve["phase"] = [int(v) for v in hist["phase"]]
    return curve


def score(pred: metrics.Predictions) -> dict:
    report = metrics.report_from_probs(pred.name, pred.y_true, pred.probs, pred.names)
    return dict(
        accuracy=round(float(report.overall["accuracy"]), 4),
        macro_f1=round(float(report.overall["macro_f1"]), 4),
        specimen_accuracy=round(metrics.specimen_accuracy(pred), 4),
    )


def final_ensemble(params: dict, val: dict, test: dict) -> tuple[str, metrics.Predictions]:
    """Build the ensembles on validation and apply the evaluate stage's final rule."""
    if len(val) == 1:  # one backbone (--backbones): it is the final model
        (name,) = val
        return name, test[name]
    e = params["ensemble"]
    specs = ensemble.build_ensembles(
        val, ks=range(2, min(e["max_k"], len(val)) + 1), mode=e["mode"], main=e["main"],
        n_weak=e["n_weak"],
    )  # fmt: skip
    name, spec = ensemble.choose_final(specs, val)
    probs = spec.apply({m: test[m].probs for m in spec.members})
    first = test[spec.members[0]]
    return name, metrics.Predictions.from_arrays(
        name, probs, first.y_true, first.names, specimen_ids=first.frame["specimen_id"].tolist()
    )


def summarise(runs: list[dict], key: str) -> dict:
    values = {m: [r[key][m] for r in runs] for m in runs[0][key]}
    return {
        m: dict(
            mean=round(float(np.mean(v)), 4),
            sd=round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else None,
            values=v,
        )
        for m, v in values.items()
    }


def subsets(index: pd.DataFrame, seed: int):
    """(kind, value, subset index): slice fractions and specimens per genus."""
    rng = np.random.default_rng(seed)
    train = index["split"] == "train"
    for frac in (0.25, 0.5, 1.0):
        keep = ~train | (rng.random(len(index)) < frac)
        yield "slices_fraction", frac, index[keep]
    per_genus = index[train].groupby("species")["specimen_id"].unique()
    for n in (1, 2, 3):
        chosen = {s for ids in per_genus for s in sorted(ids)[:n]}
        keep = ~train | index["specimen_id"].isin(chosen)
        yield "specimens_per_genus", n, index[keep]


def seen_specimen_check(index: pd.DataFrame, store, names, seed: int) -> dict:
    """How much of the difficulty is new specimens? The baseline on seen vs unseen ones.

    Half of every test specimen's slices (drawn at random) join the training split
    and the baseline is scored on the other half: the slice-level split that the paper
    warns overestimates accuracy. Scored beside the same baseline trained without them,
    on the same held-out half. The gap measures what generalising to an unseen
    specimen costs; it is a diagnostic, never a reported result.
    """
    from foramlib.evaluation import baseline as classical

    rng = np.random.default_rng(seed)
    test = index["split"] == "test"
    moved = test & (rng.random(len(index)) < 0.5)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sub in (
            ("unseen", index[~moved]),
            ("seen", index.assign(split=index["split"].where(~moved, "train"))),
        ):
            run = classical.run_baseline(sub, store, names, seed=seed)
            path = classical.write_predictions(run, Path(tmp) / label)["test"]
            out[label] = score(metrics.load_predictions(path, name=label, names=names))
    out["test_slices"] = int((test & ~moved).sum())
    return out


def curves_figure(result: dict, out) -> Path:
    """Draw the learning curves of a result next to its JSON (same name, ``.png``)."""
    from foramlib.viz import plots

    curves = result["learning_curves"]
    fig = plots.learning_curves_figure(
        curves["points"],
        curves["backbone"],
        f"Virtual collection (synthetic): test accuracy against training data "
        f"({result['machine']['cpu_count']} CPU cores, seed {result['seeds'][0]})",
    )
    return plots.save_figure(fig, Path(out).with_suffix(".png"))


def resumed_runs(path: Path, params: dict, seeds: list[int]) -> list[dict]:
    """The retrained runs of an earlier (partial) result at ``path`` that this run can keep.

    Parameters
    ----------
    path : Path
        The JSON an interrupted run of this benchmark wrote.
    params : dict
        This run's ``params`` record; the earlier one must be equal.
    seeds : list of int
        The seeds this run retrains; earlier runs of other seeds are dropped.

    Returns
    -------
    list of dict
        The earlier retrained runs of ``seeds``, in the order of ``seeds``.

    Raises
    ------
    ValueError
        If the file is missing, unreadable, or was made with other settings.
    """
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--resume: {path} does not exist; run without --resume") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--resume: {path} is not a readable result: {err}") from None
    if not isinstance(earlier, dict) or earlier.get("benchmark") != "classification":
        raise ValueError(f"--resume: {path} is not a classification benchmark result")
    if earlier.get("params") != params:
        changed = sorted(
            k for k in set(params) | set(earlier.get("params") or {})
            if params.get(k) != (earlier.get("params") or {}).get(k)
        )  # fmt: skip
        raise ValueError(
            f"--resume: {path} was made with other settings ({', '.join(changed)} differ); "
            "run without --resume or write to another --out"
        )
    by_seed = {r["seed"]: r for r in earlier.get("runs", []) if r.get("train_seconds") is not None}
    return [by_seed[s] for s in seeds if s in by_seed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--store", default="data/slices")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="training seeds to retrain (default 2024 1 2; none with --from-run)",
    )
    parser.add_argument(
        "--from-run",
        action="store_true",
        help="score the pipeline's trained models (models/, seed of params.yaml) as one run; "
        "--seeds adds retrained runs for other seeds",
    )
    parser.add_argument("--models", default="models")
    parser.add_argument("--predictions", default="results/predictions")
    parser.add_argument(
        "--backbones", nargs="+", help="retrain only these backbones (default: train.backbones)"
    )
    parser.add_argument("--learning-curves", action="store_true")
    parser.add_argument("--curve-backbone", default="tiny_cnn")
    parser.add_argument(
        "--difficulty",
        action="store_true",
        help="also score the baseline with half of each test specimen's slices seen in training",
    )
    parser.add_argument(
        "--no-reserve",
        action="store_true",
        help="train on the ordinary slices only: leave out the training reserve "
        "(slice.train_factor) that the split added, to measure what it brings",
    )
    parser.add_argument(
        "--phase2-epochs", type=int, help="override train.phase2_epochs (e.g. equal compute)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "classification.json")
    )
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the learning curves of --out"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the retrained seeds that a partial --out already holds (same settings)",
    )
    args = parser.parse_args()
    if args.replot:
        print(curves_figure(json.loads(Path(args.out).read_text(encoding="utf-8")), args.out))
        return
    params = config.load_params(args.params)
    if args.seeds is None:
        args.seeds = [] if args.from_run else [2024, 1, 2]
    if args.from_run and params["seed"] in args.seeds:
        parser.error(
            f"--seeds {args.seeds}: seed {params['seed']} is the pipeline's own run "
            "(--from-run); list only other seeds"
        )
    index = data.load_split_index(args.index)
    if args.no_reserve:
        from foramlib.dataset.slicing import RESERVE_SUFFIX

        index = index[~index["array"].str.endswith(RESERVE_SUFFIX)].reset_index(drop=True)
    if args.phase2_epochs is not None:
        params["train"]["phase2_epochs"] = args.phase2_epochs
    names = data.class_names(index)
    backbones = list(params["train"]["backbones"])
    if args.backbones:
        unknown = sorted(set(args.backbones) - set(backbones))
        if unknown:
            parser.error(f"--backbones {unknown} are not in train.backbones {backbones}")
        backbones = list(args.backbones)
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory()
    from foramlib.evaluation import baseline as classical

    stored = Path(args.predictions) / f"{classical.BASELINE_FILE}_test.csv"
    if not (args.from_run and stored.is_file()):  # else: the evaluate stage's, same slices
        run = classical.run_baseline(index, args.store, names, seed=params["seed"])
        stored = classical.write_predictions(run, tmp.name)["test"]
    baseline = score(metrics.load_predictions(stored, name="baseline", names=names))
    runs = []
    if args.from_run:  # the pipeline's own models (seed of params.yaml), no retraining
        val, test, per_model, epochs = {}, {}, {}, {}
        for b in backbones:
            for split, store in (("val", val), ("test", test)):
                store[b] = metrics.load_model_predictions(Path(args.models) / b, split)
            per_model[b] = score(test[b])
            summary = Path(args.models) / b / "summary.json"
            if summary.is_file():
                epochs[b] = json.loads(summary.read_text(encoding="utf-8")).get("epochs_run")
        name, final = final_ensemble(params, val, test)
        runs.append(dict(seed=params["seed"], final_name=name, final=score(final),
                         models=per_model, val_models={b: score(p) for b, p in val.items()},
                         train_seconds=None, epochs_run=epochs))  # fmt: skip

    settings = dict(
        file=str(args.params),
        profile=params.get("profile"),
        backbones={b: params["train"]["backbones"][b] for b in backbones},
        augment=params["train"]["augment"],
        weights=params["train"]["weights"],
        phases=[params["train"]["phase1_epochs"], params["train"]["phase2_epochs"]],
        slices_per_taxon=params["slice"]["slices_per_taxon"],
        train_factor=1 if args.no_reserve else params["slice"].get("train_factor", 1),
        train_slices=int((index["split"] == "train").sum()),
    )

    def collected(runs: list[dict]) -> dict:
        """The JSON of the runs so far."""
        result = dict(
            benchmark="classification",
            date=today(),
            machine=machine(),
            data="virtual collection (synthetic, not the paper's scans)",
            params=settings,
            test_slices=int((index["split"] == "test").sum()),
            test_specimens=int(index.loc[index["split"] == "test", "specimen_id"].nunique()),
            seeds=[r["seed"] for r in runs],
            retrained=[r["seed"] for r in runs if r["train_seconds"] is not None],
            final=summarise(runs, "final"),
            models={b: summarise([dict(x=r["models"][b]) for r in runs], "x") for b in backbones},
            baseline=dict(name="HOG + logistic regression", **baseline),
            runs=runs,
        )
        result["final_minus_baseline_points"] = round(
            100 * (result["final"]["accuracy"]["mean"] - baseline["accuracy"]), 1
        )
        return result

    if args.resume:
        try:
            done = resumed_runs(Path(args.out), settings, args.seeds)
        except ValueError as err:
            parser.error(str(err))
        runs += done
        print(f"resumed from {args.out}: seeds {[r['seed'] for r in done]}", flush=True)
    finished = {r["seed"] for r in runs}
    for seed in args.seeds:
        if seed in finished:
            continue
        val, test, per_model, seconds, epochs, curves = {}, {}, {}, {}, {}, {}
        for b in backbones:
            cfg = train_config(params, b, seed)
            preds, summary = train_once(
                cfg, index, args.store, names, Path(tmp.name) / f"{b}-{seed}"
            )
            val[b], test[b] = preds["val"], preds["test"]
            per_model[b] = score(test[b])
            seconds[b] = summary["train_seconds"]
            # an early stop is invisible in the scores: a run can end mid-cycle
            epochs[b] = summary["epochs_run"]
            curves[b] = validation_curve(Path(tmp.name) / f"{b}-{seed}" / "history.csv")
        name, final = final_ensemble(params, val, test)
        runs.append(
            dict(
                seed=seed,
                final_name=name,
                final=score(final),
                models=per_model,
                val_models={b: score(p) for b, p in val.items()},
                train_seconds=seconds,
                epochs_run=epochs,
                validation_curves=curves,
            )
        )
        print(f"seed {seed}: final {name} {runs[-1]['final']}", flush=True)
        if seed != args.seeds[-1]:  # a long run interrupted keeps the seeds it finished
            partial = dict(collected(runs), complete=False, seeds_requested=args.seeds)
            write_text(args.out, json.dumps(partial, indent=2) + "\n")
    result = collected(runs)
    if args.learning_curves:
        curves = []
        curve_seed = runs[0]["seed"]
        for kind, value, sub in subsets(index, seed=curve_seed):
            cfg = train_config(params, args.curve_backbone, curve_seed)
            t0 = time.perf_counter()
            preds, _ = train_once(
                cfg, sub, args.store, names, Path(tmp.name) / f"curve-{kind}-{value}"
            )
            seconds = round(time.perf_counter() - t0, 1)
            base = classical.run_baseline(sub, args.store, names, seed=params["seed"])
            base_test = classical.write_predictions(base, Path(tmp.name) / f"b-{kind}-{value}")
            base_score = score(metrics.load_predictions(base_test["test"], name="b", names=names))
            curves.append(
                dict(kind=kind, value=value, train_slices=int((sub["split"] == "train").sum()),
                     train_specimens=int(sub.loc[sub["split"] == "train", "specimen_id"].nunique()),
                     **score(preds["test"]), seconds=seconds,
                     **{f"baseline_{k}": v for k, v in base_score.items()})
            )  # fmt: skip
            print(f"{kind} {value}: {curves[-1]}", flush=True)
        result["learning_curves"] = dict(backbone=args.curve_backbone, points=curves)
    if args.difficulty:
        result["seen_specimens"] = seen_specimen_check(index, args.store, names, params["seed"])
        print(f"seen specimens: {result['seen_specimens']}", flush=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    if "learning_curves" in result:
        curves_figure(result, args.out)
    print(
        json.dumps(
            {k: result[k] for k in ("final", "baseline", "final_minus_baseline_points")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
