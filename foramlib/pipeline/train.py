"""The ``train@<backbone>`` stages: two-phase transfer learning of one backbone.

One stage per key of ``train.backbones`` (a DVC ``foreach``). Its configuration is the
backbone's :class:`foramlib.learn.training.TrainConfig`, built from ``params.yaml`` by
:meth:`~foramlib.learn.training.TrainConfig.from_params`, plus the stage's paths, so the
training settings have one schema (the dataclass) and one reader.

Examples
--------
>>> cfg = TrainStageConfig(backbone="tiny_cnn")
>>> cfg.out_dir, cfg.history_figure, cfg.live_dir
('models/tiny_cnn', 'results/figures/history_tiny_cnn.png', 'results/training/tiny_cnn')
>>> TrainStageConfig.params_keys()["train.input_size"]
'train.backbones.{key}.input_size'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foramlib.learn.training import TrainConfig, TrainResult
from foramlib.pipeline._config import BackboneStageConfig

__all__ = ["TrainStageConfig", "TrainStageResult", "run"]

# TrainConfig fields that do not come from the train section under their own name
_NOT_IN_TRAIN_SECTION = {"backbone", "input_size", "seed"}


@dataclass(frozen=True)
class TrainStageConfig(BackboneStageConfig):
    """What one ``train@<backbone>`` stage reads and writes.

    Parameters
    ----------
    backbone : str
        The stage's backbone (the ``foreach`` key).
    train : TrainConfig
        Every training setting: ``train.*`` of ``params.yaml``, the backbone's
        ``train.backbones.<backbone>.input_size`` and the master ``seed``.
    split_index, slices : str
        The split stage's slice index and the slice store, in.
    out_dir, history_figure : str, optional
        ``models/<backbone>`` and ``results/figures/history_<backbone>.png`` unless
        given.
    live_dir : str, optional
        The DVCLive log of every epoch (``metrics.json``, ``plots/metrics/``), which
        ``dvc.yaml`` declares as the stage's metrics and plots and from which the
        learning curves are drawn; ``results/training/<backbone>`` unless given.
    """

    stage = "train"
    backbone: str = "tiny_cnn"
    train: TrainConfig | None = None
    split_index: str = "data/split/index.csv"
    slices: str = "data/slices"
    out_dir: str | None = None
    history_figure: str | None = None
    live_dir: str | None = None

    def __post_init__(self) -> None:
        if self.train is None:
            object.__setattr__(self, "train", TrainConfig(backbone=self.backbone))
        if self.train.backbone != self.backbone:
            raise ValueError(
                f"train@{self.backbone}: its TrainConfig is for {self.train.backbone!r}"
            )
        if self.out_dir is None:
            object.__setattr__(self, "out_dir", f"models/{self.backbone}")
        if self.history_figure is None:
            object.__setattr__(
                self, "history_figure", f"results/figures/history_{self.backbone}.png"
            )
        if self.live_dir is None:
            object.__setattr__(self, "live_dir", f"results/training/{self.backbone}")

    @classmethod
    def params_keys(cls) -> dict[str, str]:
        """``train.<field>`` -> its ``params.yaml`` key (``{key}``: the backbone)."""
        keys = {
            f"train.{f.name}": f"train.{f.name}"
            for f in dataclasses.fields(TrainConfig)
            if f.name not in _NOT_IN_TRAIN_SECTION
        }
        keys["train.input_size"] = "train.backbones.{key}.input_size"
        keys["train.seed"] = "seed"
        return keys

    @classmethod
    def from_params(cls, params: Mapping, **overrides: Any) -> TrainStageConfig:
        """The stage of ``overrides["backbone"]`` from a (validated) ``params.yaml``.

        `overrides` may replace the paths; ``train`` settings come from `params`.
        """
        backbone = cls._backbone_of(overrides)
        cls.check_keys(params, backbone)  # every key the stage reads must be there
        train = overrides.pop("train", None) or TrainConfig.from_params(params, backbone)
        return cls(train=train, **overrides)


@dataclass(frozen=True)
class TrainStageResult:
    """The stage's outputs, for display."""

    result: TrainResult  # model path, history, predictions, summary (all on disk too)
    slices: dict  # split -> number of slices
    classes: list
    history_figure: Path


def run(
    config: TrainStageConfig, *, progress: Callable[[str], None] | None = print
) -> TrainStageResult:
    """Train the backbone on the training split, early-stopped on validation.

    Writes ``model.keras``, the history, the validation and test predictions (mean over
    ``train.tta_views`` views), ``config.json`` and ``summary.json`` to ``out_dir``,
    every epoch through DVCLive to ``live_dir``, and the learning curves (read back
    from that log) to ``history_figure``. The test split is only predicted.
    """
    from foramlib.learn import loader as data
    from foramlib.learn import training
    from foramlib.learn.augment import mix_batch
    from foramlib.viz import plots

    cfg = config.train
    index = data.load_split_index(config.split_index)
    names = data.class_names(index)
    mix = (lambda x, y, rng: mix_batch(x, y, cfg.augment, rng)) if cfg.augment.enabled else None
    datasets = data.make_datasets(
        index,
        config.slices,
        names,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        mix=mix,
        input_size=cfg.input_size,
        workers=cfg.workers,
    )
    counts = {split: ds.n_images for split, ds in datasets.items()}
    if progress:
        progress(f"{counts} slices, {len(names)} classes")
    result = training.train_backbone(
        cfg, datasets, names, config.out_dir, live_dir=config.live_dir, progress=progress
    )
    logged = training.read_live_history(config.live_dir)
    fig = training.history_figure(logged, f"{cfg.backbone} ({cfg.input_size} px)")
    plots.save_figure(fig, config.history_figure)
    return TrainStageResult(
        result=result, slices=counts, classes=names, history_figure=Path(config.history_figure)
    )
