"""Two-phase transfer learning of one backbone (paper §2.2–2.3), backend-agnostic.

Phase 1 trains the classifier head on a frozen backbone (paper: 10 epochs, lr 1e-4,
cosine decay); phase 2 unfreezes the backbone except its BatchNorm layers (paper: 20
epochs, lr 5e-5, cosine decay with warm restarts). A backbone trained from scratch
(``weights: null``) keeps its BatchNorm layers trainable: they have no statistics yet.
AdamW, categorical cross-entropy with label smoothing 0.1, early stopping on validation
loss (patience 5, best weights restored; optionally judged only at the end of a
learning-rate cycle, see :func:`early_stopping`), mixed precision on GPU and float32 on
CPU unless set. Augmentation runs inside the model (geometric and colour layers, active
only in training) and CutMix / MixUp at the batch level, where the labels are.

Everything is ``keras`` / ``keras.ops``; only device discovery and the optional
data-parallel strategy touch a backend directly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.io.atomic import atomic_path, write_csv, write_text
from foramlib.learn.augment import AugmentConfig
from foramlib.params import BACKBONE_SETTINGS

__all__ = [
    "PRECISIONS",
    "DISTRIBUTIONS",
    "EARLY_STOPPING",
    "RESTART_T_MUL",
    "TrainConfig",
    "TrainResult",
    "available_accelerators",
    "resolve_precision",
    "cycle_ends",
    "early_stopping",
    "enable_jit",
    "JIT_SAFE_ON_JAX",
    "train_backbone",
    "predictions_frame",
    "restarts_after",
    "history_figure",
]

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("none", "data_parallel")
#: When early stopping may end a phase: after any epoch (Keras' rule, the paper's), or
#: only at the end of a learning-rate cycle, where the rate has decayed
EARLY_STOPPING = ("epoch", "cycle_end")
#: Length of each warm-restart cycle of phase 2 over the one before (SGDR's T_mult)
RESTART_T_MUL = 2.0


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the paper's values as defaults).

    ``max_steps_per_epoch`` caps the steps of an epoch (None: the whole training set),
    for quick CPU runs; ``restart_epochs`` is the period of the warm restarts in phase 2.
    ``tta_views`` is the number of views (:mod:`foramlib.learn.tta`) over which the trained
    model's validation and test predictions are averaged, and with which it is served
    (1: none, as in the paper). ``early_stopping`` says when the patience rule may end a
    phase: ``"epoch"`` (after any epoch, as in the paper) or ``"cycle_end"`` (only at the
    end of a learning-rate cycle; :func:`early_stopping`).
    """

    backbone: str
    input_size: int = 224
    batch_size: int = 32
    weights: str | None = None
    dropout: float = 0.2
    phase1_epochs: int = 10
    phase1_lr: float = 1e-4
    phase2_epochs: int = 20
    phase2_lr: float = 5e-5
    restart_epochs: int = 5
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    patience: int = 5
    early_stopping: str = "epoch"
    precision: str = "auto"
    class_weights: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distribution: str = "none"
    workers: int = 1
    seed: int = 0
    max_steps_per_epoch: int | None = None
    tta_views: int = 1

    def __post_init__(self) -> None:
        from foramlib.learn.models import BACKBONES
        from foramlib.learn.tta import check_views

        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {sorted(BACKBONES)}")
        checks = [
            ("input_size", self.input_size >= 32, "an integer >= 32"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("phase1_epochs", self.phase1_epochs >= 0, "an integer >= 0"),
            ("phase2_epochs", self.phase2_epochs >= 0, "an integer >= 0"),
            ("restart_epochs", self.restart_epochs >= 1, "an integer >= 1"),
            ("phase1_lr", self.phase1_lr > 0, "a number > 0"),
            ("phase2_lr", self.phase2_lr > 0, "a number > 0"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
            ("patience", self.patience >= 1, "an integer >= 1"),
            (
                "early_stopping",
                self.early_stopping in EARLY_STOPPING,
                f"one of {list(EARLY_STOPPING)}",
            ),
            ("precision", self.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
            ("distribution", self.distribution in DISTRIBUTIONS, f"one of {list(DISTRIBUTIONS)}"),
            ("workers", self.workers >= 1, "an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"train.{name} = {getattr(self, name)!r} is invalid: expected {expected}"
                )
        check_views(self.tta_views, "train.tta_views")
        if self.phase1_epochs + self.phase2_epochs == 0:
            raise ValueError("train.phase1_epochs + train.phase2_epochs must be >= 1")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(
                f"train.max_steps_per_epoch = {self.max_steps_per_epoch!r} must be >= 1 or null"
            )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        return d

    @classmethod
    def from_params(cls, params: dict, backbone: str, **overrides) -> TrainConfig:
        """The train stage's configuration of `backbone` from a ``params.yaml`` mapping.

        Reads ``params["train"]`` and ``params["seed"]``. The backbone's entry
        ``train.backbones.<backbone>`` gives its ``input_size`` and may replace the
        section's settings named in :data:`foramlib.config.BACKBONE_SETTINGS` for this
        backbone alone; `overrides` replace fields last.

        Examples
        --------
        >>> params = {"seed": 1, "train": {
        ...     "backbones": {"tiny_cnn": {"input_size": 64, "phase2_epochs": 5}},
        ...     "tta_views": 8, "patience": 3, "phase2_epochs": 15}}
        >>> cfg = TrainConfig.from_params(params, "tiny_cnn", patience=4)
        >>> cfg.input_size, cfg.tta_views, cfg.patience, cfg.seed, cfg.phase2_epochs
        (64, 8, 4, 1, 5)
        """

        t = params["train"]
        keys = [f.name for f in fields(cls)]
        values = {k: t[k] for k in keys if k in t and k not in ("backbones", "augment")}
        values["seed"] = params["seed"]
        settings = t["backbones"].get(backbone) if isinstance(t["backbones"], dict) else None
        if isinstance(settings, dict):
            values.update({k: settings[k] for k in BACKBONE_SETTINGS if k in settings})
        if "input_size" not in overrides:
            if not isinstance(settings, dict) or "input_size" not in settings:
                raise ValueError(
                    f"train.backbones has no input_size for {backbone!r}: {t['backbones']!r}"
                )
            values["input_size"] = settings["input_size"]
        values["augment"] = AugmentConfig.from_dict(t.get("augment", {}))
        values.update(overrides)
        return cls(backbone=backbone, **values)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        return cls(**d)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_backbone` produced (all also written to disk)."""

    model_path: Path
    history: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    summary: dict
    #: The trained Keras model, still compiled: more steps or predictions reuse its
    #: compiled functions (an XLA compile of a large backbone costs minutes).
    model: object = field(default=None, repr=False, compare=False)


def available_accelerators() -> list[str]:
    """Names of the GPUs the active Keras backend sees (empty on a CPU machine)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def resolve_precision(precision: str, accelerators: list[str] | None = None) -> str:
    """``auto`` → ``mixed_float16`` on a GPU (the paper's fp16), ``float32`` on CPU.

    >>> resolve_precision("auto", []), resolve_precision("auto", ["gpu:0"])
    ('float32', 'mixed_float16')
    >>> resolve_precision("mixed_bfloat16", [])
    'mixed_bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    accelerators = available_accelerators() if accelerators is None else accelerators
    return "mixed_float16" if accelerators else "float32"


class _Strategy:
    """Context for data-parallel training: TF MirroredStrategy or Keras' JAX DataParallel."""

    def __init__(self, kind: str):
        import keras

        self.kind, self.replicas, self._scope, self._previous = kind, 1, None, None
        if kind == "none":
            return
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] or [
                d.name for d in tf.config.list_logical_devices("CPU")
            ]
            self._strategy = tf.distribute.MirroredStrategy(devices)
            self.replicas = self._strategy.num_replicas_in_sync
        elif backend == "jax":
            self._strategy = keras.distribution.DataParallel()
            self.replicas = len(keras.distribution.list_devices())
        else:
            raise ValueError(
                f"train.distribution = 'data_parallel' is not supported on the "
                f"{backend!r} backend; use tensorflow or jax"
            )

    def __enter__(self):
        import keras

        if self.kind == "none":
            return self
        if keras.backend.backend() == "tensorflow":
            self._scope = self._strategy.scope()
            self._scope.__enter__()
        else:
            self._previous = keras.distribution.distribution()
            keras.distribution.set_distribution(self._strategy)
        return self

    def __exit__(self, *exc):
        import keras

        if self._scope is not None:
            self._scope.__exit__(*exc)
        elif self.kind != "none":
            keras.distribution.set_distribution(self._previous)
        return False


#: per-epoch values of the run itself; every other key is a metric of a split
_RUN_KEYS = ("phase", "learning_rate", "seconds")


def _live_name(key: str) -> str:
    """The DVCLive name of a history column: ``val_loss`` -> ``val/loss``, ``top3`` ->
    ``train/top3``, ``phase`` -> ``phase``."""
    if key in _RUN_KEYS:
        return key
    return f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"


def _history_name(live_name: str) -> str:
    """The inverse of :func:`_live_name`."""
    split, _, metric = live_name.partition("/")
    if not metric:
        return live_name
    return f"val_{metric}" if split == "val" else metric


class _History:
    """Collects per-epoch logs of both phases with the phase and the learning rate.

    With `live_dir`, each epoch is also logged through DVCLive as it ends (one step an
    epoch; ``dvc plots show`` and ``dvc exp show`` read it, during training too).
    """

    def __init__(self, live_dir=None):
        self.rows: list[dict] = []
        self.live = None
        if live_dir is not None:
            from dvclive import Live

            # no experiment, no dvc.yaml of its own and no report: dvc.yaml declares
            # these files as the stage's metrics and plots
            self.live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)

    def _log(self, row: dict) -> None:
        self.rows.append(row)
        if self.live is not None:
            for key, value in row.items():
                if key != "epoch":  # DVCLive's step is the epoch, from 0
                    self.live.log_metric(_live_name(key), value)
            self.live.next_step()

    def close(self) -> None:
        """Finish the DVCLive log (its ``metrics.json`` then holds the last epoch)."""
        if self.live is not None:
            self.live.end()
            self.live = None

    def callback(self, phase: int):
        import keras

        log = self._log

        class Recorder(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                opt = self.model.optimizer
                lr = opt.learning_rate
                lr = float(keras.ops.convert_to_numpy(lr(opt.iterations) if callable(lr) else lr))
                log(
                    dict(
                        epoch=epoch + 1,
                        phase=phase,
                        learning_rate=lr,
                        seconds=round(time.perf_counter() - self._t0, 3),
                        **{k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"},
                    )
                )

        return Recorder()


def cycle_ends(n_epochs: int, cycle_epochs: int, t_mul: float = RESTART_T_MUL) -> list[int]:
    """The epochs (from 1) of a phase after which a cosine learning-rate cycle ends.

    The cycles of Keras' ``CosineDecayRestarts`` last `cycle_epochs`, then `t_mul` times
    as long as the one before; the phase's last epoch always counts as an end (its
    rate is as low as the budget lets it get). A cycle that ends inside an epoch ends
    with that epoch.

    Parameters
    ----------
    n_epochs : int
        Epochs of the phase (>= 1).
    cycle_epochs : int
        Length of the first cycle in epochs (>= 1): ``restart_epochs`` in phase 2, the
        whole phase for a plain cosine decay.
    t_mul : float
        Growth of each cycle over the one before (>= 1).

    Examples
    --------
    >>> cycle_ends(15, 5)        # the quick profile's phase 2: cycles of 5 and 10 epochs
    [5, 15]
    >>> cycle_ends(20, 5)        # the paper's phase 2: the third cycle is cut short
    [5, 15, 20]
    >>> cycle_ends(6, 2, t_mul=1.0)
    [2, 4, 6]
    """
    if n_epochs < 1 or cycle_epochs < 1:
        raise ValueError(
            f"n_epochs = {n_epochs!r} and cycle_epochs = {cycle_epochs!r} must be >= 1"
        )
    if t_mul < 1:
        raise ValueError(f"t_mul = {t_mul!r} must be >= 1: cycles never shrink")
    ends, boundary, length = set(), 0.0, float(cycle_epochs)
    while boundary + length < n_epochs:
        boundary += length
        ends.add(int(np.ceil(boundary - 1e-9)))
        length *= t_mul
    ends.add(n_epochs)
    return sorted(ends)


def early_stopping(patience: int, stop_after: Sequence[int] | None = None):
    """Keras' ``EarlyStopping`` on validation loss that may stop only after given epochs.

    The best weights are kept and restored at the end of the phase either way. With
    `stop_after` None this is Keras' rule: stop once `patience` epochs have passed
    without a lower validation loss. With `stop_after` (0-based epoch numbers as
    ``fit`` counts them, e.g. the cycle ends of :func:`cycle_ends` offset by the
    phase's first epoch) the same test is made only after those epochs, so the run
    goes on to the end of a cycle it has started. Under warm restarts the validation
    loss climbs right after each restart, when the learning rate jumps back up, and
    improves only as the rate decays again: a patience shorter than a cycle stops
    such a run in the middle of a cycle, before its best epoch.

    Parameters
    ----------
    patience : int
        Epochs without improvement before a stop (>= 1).
    stop_after : sequence of int, optional
        The epochs after which a stop may happen (None: after any epoch).

    Returns
    -------
    keras.callbacks.EarlyStopping

    Examples
    --------
    >>> stop = early_stopping(3, stop_after=[4, 14])
    >>> stop.patience, stop.restore_best_weights, sorted(stop.stop_after)
    (3, True, [4, 14])
    """
    import keras

    if patience < 1:
        raise ValueError(f"patience = {patience!r} must be an integer >= 1")

    class CycleEndStopping(keras.callbacks.EarlyStopping):
        def __init__(self, stop_after):
            super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
            self.stop_after = None if stop_after is None else frozenset(stop_after)

        def on_epoch_end(self, epoch, logs=None):
            stopping = self.model.stop_training  # another callback's decision stands
            super().on_epoch_end(epoch, logs)
            if self.stop_after is not None and epoch not in self.stop_after and not stopping:
                # patience ran out mid-cycle: the count goes on, and is tested again at
                # the cycle's end
                self.model.stop_training = False
                self.stopped_epoch = 0

    return CycleEndStopping(stop_after)


def _phase_stopping(config: TrainConfig, first_epoch: int, n_epochs: int, cycle: int):
    """The early stopping of a phase of `n_epochs` from `first_epoch` (0-based)."""
    if config.early_stopping == "epoch":
        return early_stopping(config.patience)
    ends = cycle_ends(n_epochs, cycle)
    return early_stopping(config.patience, [first_epoch + e - 1 for e in ends])


def _fast_batchnorm(model, momentum: float = 0.9) -> None:
    """Let BatchNorm statistics settle within a short from-scratch run.

    keras.applications build BatchNorm with momentum up to 0.999, tuned for long
    ImageNet training: after a few hundred steps from scratch the moving statistics are
    still near their initial values and inference-mode outputs collapse to one class.
    """
    import keras

    from foramlib.learn.models import backbone_of, sublayers

    for layer in sublayers(backbone_of(model)):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, momentum)


# Keras marks these layers as not jit-compilable on every backend (TensorFlow's XLA has
# no kernel for their image transform), which turns jit off for the whole model. Under
# JAX their ops are plain jax.numpy and compile; without jit JAX runs each train step op
# by op: half the speed on 2 CPU cores, and on an H100 the first EfficientNetV2S step
# had not finished after 4 minutes.
JIT_SAFE_ON_JAX = ("RandomRotation", "RandomZoom")


def enable_jit(model, backend: str | None = None) -> bool | str:
    """Let `model` be jit-compiled where the backend allows it; returns the
    ``jit_compile`` value to compile it with.

    On JAX, when the only layers Keras marks as not compilable are the augmentation
    layers of :data:`JIT_SAFE_ON_JAX`, they are marked compilable and ``True`` is
    returned; otherwise (other backends, or any other such layer) ``"auto"``, and the
    model is left as it is.

    Parameters
    ----------
    model : keras.Model
    backend : str, optional
        The Keras backend (default: the active one).

    Examples
    --------
    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.RandomZoom(0.1)])
    >>> enable_jit(m, backend="tensorflow"), enable_jit(m, backend="jax")
    ('auto', True)
    """
    import keras

    from foramlib.learn.models import sublayers

    backend = keras.backend.backend() if backend is None else backend
    blocked = [layer for layer in [model, *sublayers(model)] if not layer.supports_jit]
    if backend != "jax" or any(type(x).__name__ not in JIT_SAFE_ON_JAX for x in blocked):
        return "auto"
    for layer in blocked:
        layer.supports_jit = True
    return True


def _compile(model, config: TrainConfig, schedule) -> None:
    _compile_with(model, schedule, config.weight_decay, config.label_smoothing)


def _compile_with(model, schedule, weight_decay: float, label_smoothing: float) -> None:
    """AdamW + label-smoothed cross-entropy, accuracy and top-3 (training and pretraining)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=3, name="top3"),
        ],
        jit_compile=enable_jit(model),
    )


def predictions_frame(probs: np.ndarray, dataset, names: list[str], split: str) -> pd.DataFrame:
    """Class probabilities with slice provenance: one row per slice, one column per class."""
    labels = dataset.labels()
    frame = pd.DataFrame(
        {
            "slice_id": dataset.slice_ids(),
            "split": split,
            "true": [names[i] for i in labels],
            "predicted": [names[i] for i in probs.argmax(axis=1)],
        }
    )
    if "specimen_id" in dataset.index.columns:
        frame.insert(1, "specimen_id", dataset.index["specimen_id"].to_numpy())
    probs_df = pd.DataFrame(probs.astype(np.float64), columns=[f"p_{n}" for n in names])
    return pd.concat([frame, probs_df], axis=1)


def read_live_history(live_dir) -> pd.DataFrame:
    """The per-epoch history a training run logged through DVCLive, as a table.

    Parameters
    ----------
    live_dir : path-like
        The DVCLive folder (``plots/metrics/**.tsv``, one file a metric, one row a step).

    Returns
    -------
    DataFrame
        One row an epoch: ``epoch`` (from 1) and the metrics under the names of
        :class:`TrainResult.history` (``loss``, ``val_loss``, ``phase``, ...).

    Raises
    ------
    FileNotFoundError
        When `live_dir` holds no DVCLive metrics.
    """
    root = Path(live_dir) / "plots" / "metrics"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"{live_dir}: no DVCLive metrics (plots/metrics/*.tsv)")
    columns = {}
    for path in files:
        key = _history_name(path.relative_to(root).with_suffix("").as_posix())
        frame = pd.read_csv(path, sep="\t")
        columns[key] = frame.set_index("step").iloc[:, 0]
    history = pd.DataFrame(columns).sort_index()
    history.insert(0, "epoch", history.index.to_numpy() + 1)
    return history.reset_index(drop=True)


def restarts_after(history: pd.DataFrame) -> list[int]:
    """The epochs of a history after which the learning rate restarted (cycle ends).

    A history's ``learning_rate`` is the rate at the end of each epoch, so a restart
    shows as a rise over the epoch before, within one phase.

    Examples
    --------
    >>> h = pd.DataFrame({"phase": [1, 2, 2, 2, 2], "learning_rate": [0, .9, .1, 1., .5]})
    >>> restarts_after(h)
    [4]
    """
    if "learning_rate" not in history:
        return []
    lr, phase = history["learning_rate"].to_numpy(), history["phase"].to_numpy()
    rises = (lr[1:] > lr[:-1]) & (phase[1:] == phase[:-1])
    return [int(i) + 2 for i in np.flatnonzero(rises)]


def history_figure(history: pd.DataFrame, title: str):
    """Loss and accuracy curves of both phases (validation dashed), phase 2 shaded.

    Dotted lines mark the learning-rate restarts and a ring the epoch of the lowest
    validation loss, whose weights the model keeps.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    x = np.arange(1, len(history) + 1)
    best = int(np.argmin(history["val_loss"].to_numpy())) if "val_loss" in history else None
    for ax, metric in zip(axes, ["loss", "accuracy"], strict=True):
        if metric in history:
            ax.plot(x, history[metric], label="train")
        if f"val_{metric}" in history:
            ax.plot(x, history[f"val_{metric}"], "--", label="validation")
            if best is not None:
                ax.plot(
                    x[best], history[f"val_{metric}"].iloc[best], "o", mfc="none", ms=9,
                    color="C1", label="kept (lowest val loss)",
                )  # fmt: skip
        phase2 = x[history["phase"].to_numpy() == 2]
        if len(phase2):
            ax.axvspan(
                phase2[0] - 0.5, phase2[-1] + 0.5, color="0.92", zorder=0, label="fine-tuning"
            )
        # a restart after the last epoch is the schedule's, not the run's
        restarts = [e for e in restarts_after(history) if e < len(history)]
        for i, epoch in enumerate(restarts):
            label = None if i else "learning-rate restart"
            ax.axvline(epoch + 0.5, color="0.5", ls=":", lw=1, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def train_backbone(
    config: TrainConfig,
    datasets: dict,
    names: list[str],
    out_dir,
    *,
    live_dir=None,
    progress: Callable[[str], None] | None = print,
    callbacks: Sequence = (),
) -> TrainResult:
    """Train `config.backbone` on ``datasets["train"]``, early-stopped on ``"val"``.

    Parameters
    ----------
    config : TrainConfig
    datasets : dict
        ``train``, ``val`` and ``test`` :class:`foramlib.learn.loader.SliceBatches` (train
        shuffled, the others in index order).
    names : list of str
        Class order of the model's output.
    out_dir : path-like
        Receives ``model.keras`` (an inference copy, without optimizer state),
        ``history.csv``, ``class_names.json``, ``config.json``, ``summary.json`` and the
        probabilities ``predictions_val.csv`` / ``predictions_test.csv`` (each the mean
        over ``config.tta_views`` views of the slice).
    live_dir : path-like, optional
        Also log every epoch through DVCLive there, as it ends (read it back with
        :func:`read_live_history`).
    progress : callable or None
        Receives one line per stage of the run (None: silent).
    callbacks : sequence of keras.callbacks.Callback
        Added to both phases' ``fit`` (a time budget, say: a callback that sets
        ``model.stop_training`` ends the phase, and the best weights so far are kept).

    Returns
    -------
    TrainResult
    """
    import keras

    from foramlib.learn.loader import check_class_lists, class_weights, save_class_names
    from foramlib.learn.models import build_model, count_params, set_backbone_trainable
    from foramlib.learn.tta import predict_batches

    for split in ("train", "val", "test"):
        if split not in datasets:
            raise ValueError(f"datasets lacks the {split!r} split")
        check_class_lists(names, datasets[split].names, what=f"{split} dataset")
    out = Path(out_dir)
    accelerators = available_accelerators()
    precision = resolve_precision(config.precision, accelerators)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.utils.set_random_seed(config.seed)
    t_start = time.perf_counter()
    say = progress or (lambda s: None)
    history = _History(live_dir)
    try:
        keras.mixed_precision.set_global_policy(precision)
        with _Strategy(config.distribution) as strategy:
            model = build_model(
                config.backbone,
                input_size=config.input_size,
                n_classes=len(names),
                weights=config.weights,
                dropout=config.dropout,
                augment=config.augment if config.augment.enabled else None,
                seed=config.seed,
            )
            if config.weights is None:
                _fast_batchnorm(model)
            train, val = datasets["train"], datasets["val"]
            steps = (
                len(train)
                if config.max_steps_per_epoch is None
                else min(len(train), config.max_steps_per_epoch)
            )
            weights = class_weights(train.index, names) if config.class_weights else None
            say(
                f"{config.backbone}: {count_params(model)} parameters, {precision}, "
                f"{strategy.replicas} replica(s), {steps} steps/epoch of {config.batch_size}"
            )
            done = 0
            t_train = time.perf_counter()
            if config.phase1_epochs:
                set_backbone_trainable(model, False)
                _compile(
                    model,
                    config,
                    keras.optimizers.schedules.CosineDecay(
                        config.phase1_lr, decay_steps=max(1, config.phase1_epochs * steps)
                    ),
                )
                model.fit(
                    train,
                    validation_data=val,
                    epochs=config.phase1_epochs,
                    steps_per_epoch=steps,
                    class_weight=weights,
                    verbose=2,
                    callbacks=[
                        history.callback(1),
                        # one cosine decay over the phase: one cycle
                        _phase_stopping(config, 0, config.phase1_epochs, config.phase1_epochs),
                        *callbacks,
                    ],
                )
                done = len(history.rows)
            if config.phase2_epochs:
                # BatchNorm stays frozen under a pretrained backbone (Keras' fine-tuning
                # guide); from scratch it has no statistics yet and must learn them
                set_backbone_trainable(
                    model, True, keep_batchnorm_frozen=config.weights is not None
                )
                _compile(
                    model,
                    config,
                    keras.optimizers.schedules.CosineDecayRestarts(
                        config.phase2_lr,
                        first_decay_steps=max(1, config.restart_epochs * steps),
                        t_mul=RESTART_T_MUL,
                    ),
                )
                model.fit(
                    train,
                    validation_data=val,
                    initial_epoch=done,
                    epochs=done + config.phase2_epochs,
                    steps_per_epoch=steps,
                    class_weight=weights,
                    verbose=2,
                    callbacks=[
                        history.callback(2),
                        _phase_stopping(config, done, config.phase2_epochs, config.restart_epochs),
                        *callbacks,
                    ],
                )
            train_seconds = time.perf_counter() - t_train
            hist = pd.DataFrame(history.rows)
            hist["epoch"] = np.arange(1, len(hist) + 1)
            predictions, predict_seconds = {}, {}
            for split in ("val", "test"):
                t0 = time.perf_counter()
                probs = predict_batches(model, datasets[split], config.tta_views)
                predict_seconds[split] = time.perf_counter() - t0
                predictions[split] = predictions_frame(probs, datasets[split], names, split)
    finally:
        history.close()
        keras.mixed_precision.set_global_policy(previous_policy)

    summary = dict(
        backbone=config.backbone,
        input_size=config.input_size,
        precision=precision,
        backend=keras.backend.backend(),
        jit_compile=bool(model.jit_compile),
        accelerators=accelerators,
        replicas=strategy.replicas,
        classes=len(names),
        epochs_run=len(hist),
        best_val_loss=float(hist["val_loss"].min()) if "val_loss" in hist else None,
        train_seconds=round(train_seconds, 2),
        train_images_per_s=round(len(hist) * steps * config.batch_size / train_seconds, 1),
        tta_views=config.tta_views,
        predict_images_per_s={
            s: round(datasets[s].n_images / t, 1) for s, t in predict_seconds.items()
        },
        val_accuracy=float((predictions["val"]["true"] == predictions["val"]["predicted"]).mean()),
        wall_seconds=round(time.perf_counter() - t_start, 2),
        parameters=count_params(model),
        cpu_count=os.cpu_count(),
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    write_csv(hist, out / "history.csv")
    save_class_names(names, out / "class_names.json")
    write_text(out / "config.json", json.dumps(config.as_dict(), indent=2) + "\n")
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    for split, frame in predictions.items():
        write_csv(frame, out / f"predictions_{split}.csv")
    say(
        f"{config.backbone}: {len(hist)} epochs in {train_seconds:.0f} s "
        f"({summary['train_images_per_s']} img/s), val accuracy {summary['val_accuracy']:.3f}"
    )
    return TrainResult(out / "model.keras", hist, predictions, summary, model=model)
