"""The ``ensemble`` stage: Top-k votes and the PatchEnsemble, chosen on validation.

Examples
--------
>>> cfg = EnsembleStageConfig.from_params(
...     {"train": {"backbones": {"a": {}, "b": {}}},
...      "ensemble": {"max_k": 2, "mode": "soft", "main": None, "n_weak": 1}})
>>> cfg.backbones, cfg.out_dir
(('a', 'b'), 'results/ensemble')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from foramlib.pipeline._config import StageConfig, backbone_names, params_field

__all__ = ["EnsembleStageConfig", "EnsembleStageResult", "run"]


@dataclass(frozen=True)
class EnsembleStageConfig(StageConfig):
    """What the ``ensemble`` stage reads and writes.

    Parameters
    ----------
    backbones : tuple of str
        The trained backbones (keys of ``train.backbones``).
    max_k : int
        Top-2 ... Top-`max_k` soft (or majority) votes of the best backbones.
    mode : {"soft", "majority"}
    main : str or None
        The PatchEnsemble's main model (None: the best on validation).
    n_weak : int
        Weak classes of the main model patched by the others.
    models_dir, out_dir : str
        ``models/<backbone>/predictions_val.csv`` in, one JSON per ensemble out.
    """

    stage = "ensemble"
    backbones: tuple[str, ...] = params_field("train.backbones", normalize=backbone_names)
    max_k: int = params_field("ensemble.max_k", default=4)
    mode: str = params_field("ensemble.mode", default="soft")
    main: str | None = params_field("ensemble.main", default=None)
    n_weak: int = params_field("ensemble.n_weak", default=2)
    models_dir: str = "models"
    out_dir: str = "results/ensemble"


@dataclass(frozen=True)
class EnsembleStageResult:
    """The stage's outputs, for display."""

    specs: dict  # name -> ensemble.EnsembleSpec (saved under out_dir)
    members: pd.DataFrame  # validation metrics of each backbone, best first
    ensembles: pd.DataFrame  # validation metrics of each ensemble


def run(config: EnsembleStageConfig) -> EnsembleStageResult:
    """Build the ensembles from the backbones' validation predictions and save them.

    Only validation predictions are read: every choice (ranking, main model, weak
    classes) is made on them. The folder is replaced atomically.
    """
    from foramlib.evaluation import ensemble, metrics
    from foramlib.io.atomic import atomic_dir

    val = {
        b: metrics.load_predictions(Path(config.models_dir) / b / "predictions_val.csv", name=b)
        for b in config.backbones
    }
    metrics.align(list(val.values()))
    ranking = ensemble.rank_members(val)
    overall = {
        b: metrics.report_from_probs(b, v.y_true, v.probs, v.names).overall for b, v in val.items()
    }
    members = pd.DataFrame(overall).T.loc[ranking]
    specs = ensemble.build_ensembles(
        val,
        ks=range(2, config.max_k + 1),
        mode=config.mode,
        main=config.main,
        n_weak=config.n_weak,
    )
    with atomic_dir(config.out_dir) as tmp:
        for name, spec in specs.items():
            spec.save(Path(tmp) / f"{name}.json")
    rows = {}
    for name, spec in specs.items():
        probs = spec.apply({m: val[m].probs for m in spec.members})
        first = val[spec.members[0]]
        rows[name] = metrics.report_from_probs(name, first.y_true, probs, first.names).overall
    return EnsembleStageResult(specs=specs, members=members, ensembles=pd.DataFrame(rows).T)
