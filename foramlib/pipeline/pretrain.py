"""The ``pretrain@<backbone>`` stages: one backbone trained on the corpus of other shells.

The offline stand-in for ImageNet weights: the backbone learns to tell the corpus's
pseudo-taxa apart, validated on specimens it never saw, and its headless weights go to
``models/pretrain/<backbone>/backbone.weights.h5`` for ``train.weights``. Only when
``train.weights`` points there; otherwise the stage records why it was skipped.

Examples
--------
>>> cfg = PretrainStageConfig(backbone="tiny_cnn")
>>> cfg.out_dir, cfg.live_dir, cfg.pretrain.backbone
('models/pretrain/tiny_cnn', 'results/pretraining/tiny_cnn', 'tiny_cnn')
>>> PretrainStageConfig.params_keys()["pretrain.input_size"]
'train.backbones.{key}.input_size'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from foramlib.learn.pretraining import PretrainConfig
from foramlib.params import lookup
from foramlib.pipeline._config import BackboneStageConfig

__all__ = ["PretrainStageConfig", "PretrainStageResult", "run"]

#: PretrainConfig field -> its params.yaml key ({key}: the stage's backbone); the
#: other fields keep PretrainConfig's defaults
_KEYS = {
    "input_size": "train.backbones.{key}.input_size",
    "batch_size": "train.batch_size",
    "epochs": "pretrain.epochs",
    "lr": "pretrain.lr",
    "max_steps_per_epoch": "pretrain.max_steps_per_epoch",
    "seed": "seed",
}


@dataclass(frozen=True)
class PretrainStageConfig(BackboneStageConfig):
    """What one ``pretrain@<backbone>`` stage reads and writes.

    Parameters
    ----------
    backbone : str
        The stage's backbone (the ``foreach`` key).
    pretrain : PretrainConfig
        Its input size (``train.backbones.<backbone>.input_size``), batch size
        (``train.batch_size``), ``pretrain.epochs``, ``pretrain.lr``,
        ``pretrain.max_steps_per_epoch`` and the master ``seed``.
    weights : str or None
        ``train.weights``: the stage trains only when it points at ``out_dir``.
    corpus, out_dir : str
        The corpus store in; ``models/pretrain/<backbone>`` unless given.
    live_dir : str, optional
        The DVCLive log of every epoch (``metrics.json``, ``plots/metrics/``), which
        ``dvc.yaml`` declares as the stage's metrics and plots and from which the
        learning curves are drawn; empty when the stage is skipped;
        ``results/pretraining/<backbone>`` unless given.
    """

    stage = "pretrain"
    backbone: str = "tiny_cnn"
    pretrain: PretrainConfig | None = None
    weights: str | None = None
    corpus: str = "data/pretrain"
    out_dir: str | None = None
    live_dir: str | None = None

    def __post_init__(self) -> None:
        if self.pretrain is None:
            object.__setattr__(self, "pretrain", PretrainConfig(backbone=self.backbone))
        if self.pretrain.backbone != self.backbone:
            raise ValueError(
                f"pretrain@{self.backbone}: its PretrainConfig is for {self.pretrain.backbone!r}"
            )
        if self.out_dir is None:
            object.__setattr__(self, "out_dir", f"models/pretrain/{self.backbone}")
        if self.live_dir is None:
            object.__setattr__(self, "live_dir", f"results/pretraining/{self.backbone}")

    @classmethod
    def params_keys(cls) -> dict[str, str]:
        keys = {f"pretrain.{name}": key for name, key in _KEYS.items()}
        keys["weights"] = "train.weights"
        return keys

    @classmethod
    def from_params(cls, params: Mapping, **overrides: Any) -> PretrainStageConfig:
        """The stage of ``overrides["backbone"]`` from a (validated) ``params.yaml``."""
        backbone = cls._backbone_of(overrides)
        cls.check_keys(params, backbone)
        if "pretrain" not in overrides:
            values = {name: lookup(params, key.format(key=backbone)) for name, key in _KEYS.items()}
            overrides["pretrain"] = PretrainConfig(backbone=backbone, **values)
        overrides.setdefault("weights", lookup(params, "train.weights"))
        return cls(**overrides)


@dataclass(frozen=True)
class PretrainStageResult:
    """The stage's outputs, for display."""

    summary: dict  # summary.json: held-out accuracy and timing, or why it was skipped
    history: pd.DataFrame | None  # per-epoch curves, from the DVCLive log (None when skipped)


def run(config: PretrainStageConfig) -> PretrainStageResult:
    """Pretrain the backbone when ``train.weights`` asks for it, else record why not.

    Every epoch is logged through DVCLive to ``live_dir``; the learning curves are
    read back from that log, so the report shows what ``dvc plots show`` shows.
    """
    from foramlib.learn import pretraining, training

    summary = pretraining.run_pretrain_stage(
        config.pretrain, config.corpus, config.out_dir, config.weights, live_dir=config.live_dir
    )
    history = None if "skipped" in summary else training.read_live_history(config.live_dir)
    return PretrainStageResult(summary=summary, history=history)
