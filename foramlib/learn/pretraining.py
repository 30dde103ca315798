"""Offline pretraining: backbones trained on a corpus of other shells (stand-in for ImageNet).

The paper's method is ImageNet transfer learning: phase 1 trains a classifier head on
a frozen *pretrained* backbone, phase 2 fine-tunes. Where the network does not allow
fetching ImageNet weights, random weights make phase 1 meaningless. This module gives
the pipeline an honest offline substitute:

1. :func:`build_corpus` renders a corpus of generic shells (:mod:`foramlib.virtual.shells`:
   random pseudo-taxa built from the generator's building blocks, no genus builder, no
   specimen of the collection) through the same scan simulation, and cuts them with
   the same slicer and preprocessing as the collection
   (:func:`foramlib.dataset.slicing.slice_array`).
2. :func:`pretrain_backbone` trains a backbone to tell the pseudo-taxa apart, validated
   on held-out specimens of each pseudo-taxon, and writes the headless backbone's
   weights, which ``train.weights`` then loads as a local path.

So the features come from *other* shells seen through the same scanner, as ImageNet
features come from other images; the collection's genera are learnt only in the
``train`` stages.

Examples
--------
>>> cfg = CorpusConfig(n_taxa=4, specimens_per_taxon=3, slices_per_specimen=10)
>>> cfg.n_volumes
12
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.io.atomic import atomic_dir, write_csv, write_text
from foramlib.learn.augment import AugmentConfig

__all__ = [
    "CorpusConfig",
    "PretrainConfig",
    "corpus_plans",
    "build_corpus",
    "load_corpus",
    "check_disjoint",
    "pretrain_backbone",
    "uses_pretraining",
    "run_pretrain_stage",
    "needs_corpus",
    "run_corpus_stage",
]

CORPUS_SPLITS = ("train", "val")


def _positive_int(name: str, value, lo: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} = {value!r} is invalid: expected an integer >= {lo}")


@dataclass(frozen=True)
class CorpusConfig:
    """Size of the pretraining corpus (``pretrain.corpus`` in params.yaml).

    Parameters
    ----------
    n_taxa : int
        Pseudo-taxa (classes of the pretraining task), >= 2.
    specimens_per_taxon : int
        Specimens of each; the last one of each pseudo-taxon is held out for
        validation, so >= 2.
    slices_per_specimen : int
        Candidate sections cut from each specimen (grazing ones are dropped).
    shape, supersample : int
        Volume edge in voxels and supersampling of the scan simulation.
    seed : int
        Seed of the recipes and of every specimen; kept apart from the collection's
        seeds by a fixed tag, so the same number never reproduces a collection specimen.
    """

    n_taxa: int = 48
    specimens_per_taxon: int = 5
    slices_per_specimen: int = 48
    shape: int = 96
    supersample: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int("pretrain.corpus.n_taxa", self.n_taxa, 2)
        _positive_int("pretrain.corpus.specimens_per_taxon", self.specimens_per_taxon, 2)
        _positive_int("pretrain.corpus.slices_per_specimen", self.slices_per_specimen, 1)
        _positive_int("pretrain.corpus.shape", self.shape, 32)
        _positive_int("pretrain.corpus.supersample", self.supersample, 1)
        _positive_int("pretrain.corpus.seed", self.seed, 0)

    @property
    def n_volumes(self) -> int:
        return self.n_taxa * self.specimens_per_taxon


# A fixed tag mixed into the corpus seeds: the collection's plans use SeedSequence
# ([seed, taxon, specimen]); the corpus uses ([seed, _CORPUS_TAG, ...]).
_CORPUS_TAG = 0x7E7A1


def corpus_plans(config: CorpusConfig):
    """The scans of the corpus: one per specimen, named ``P-Shell-001-01`` etc.

    Examples
    --------
    >>> plans = corpus_plans(CorpusConfig(n_taxa=2, specimens_per_taxon=2))
    >>> [p.specimen_id for p in plans]
    ['P-Shell-001-01', 'P-Shell-001-02', 'P-Shell-002-01', 'P-Shell-002-02']
    """
    from foramlib.virtual.collection import plan_collection
    from foramlib.virtual.shells import shell_taxa

    taxa = shell_taxa(config.n_taxa, config.specimens_per_taxon, seed=config.seed)
    plans = plan_collection(
        taxa, seed=int(np.random.SeedSequence([config.seed, _CORPUS_TAG]).generate_state(1)[0])
    )
    out = []
    for p in plans:
        number = p.specimen_id.rsplit("-", 1)[1]
        specimen = f"P-{p.species}-{number}"
        out.append(replace(p, specimen_id=specimen, file=f"{specimen}.npy"))
    return out


def _corpus_job(args):
    plan, config, slicing = args
    from foramlib.dataset.slicing import SliceError, slice_array
    from foramlib.virtual.collection import render_scan

    t0 = time.perf_counter()
    volume, _ = render_scan(plan, shape=config.shape, supersample=config.supersample)
    try:
        images, rows, _ = slice_array(
            volume,
            config.slices_per_specimen,
            slicing,
            plan.scan_seed % 2**31,
            name=plan.specimen_id,
        )
    except SliceError:
        images, rows = (
            np.zeros((0, slicing.preprocess.size, slicing.preprocess.size), np.uint8),
            None,
        )
    return images, rows, time.perf_counter() - t0


def build_corpus(
    out_dir,
    config: CorpusConfig,
    slicing,
    *,
    n_jobs: int = 1,
    progress: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Render and slice the pretraining corpus into a slice store at `out_dir`.

    Parameters
    ----------
    out_dir : path-like
        Replaced as a whole when done: one uint8 ``.npy`` per specimen, ``index.csv``
        (``slice_id, specimen_id, species, array, row, split`` and the plane) and
        ``corpus.json``.
    config : CorpusConfig
    slicing : foramlib.dataset.slicing.SlicingConfig
        The collection's slicing settings, so that both stores look alike.
    n_jobs : int
        Worker processes (the output does not depend on it).

    Returns
    -------
    DataFrame
        The index as written.
    """
    from foramlib.virtual.shells import shell_recipe
    from foramlib.workers import volume_pool

    _positive_int("n_jobs", n_jobs)
    plans = corpus_plans(config)
    jobs = [(p, config, slicing) for p in plans]
    frames = []
    t0 = time.perf_counter()
    # rendered like the collection: in workers whose numpy uses only its baseline
    # kernels, so the corpus does not depend on the CPU (see foramlib.virtual.collection)
    with atomic_dir(out_dir) as tmp, volume_pool(int(n_jobs), portable=True) as pool:
        results = pool.map(_corpus_job, jobs)
        for i, (plan, (images, rows, _)) in enumerate(zip(plans, results, strict=True)):
            if progress and ((i + 1) % 20 == 0 or i + 1 == len(plans)):
                progress(f"[{i + 1}/{len(plans)}] {plan.specimen_id}: {len(images)} sections")
            if not len(images):
                continue
            np.save(Path(tmp) / plan.file, images)
            rows = rows.copy()
            rows.insert(0, "slice_id", [f"{plan.specimen_id}:{k:05d}" for k in range(len(rows))])
            rows.insert(1, "specimen_id", plan.specimen_id)
            rows.insert(2, "species", plan.species)
            rows.insert(3, "plan", plan.plan)
            rows.insert(4, "array", plan.file)
            rows.insert(5, "row", np.arange(len(rows)))
            last = plan.specimen_id.endswith(f"-{config.specimens_per_taxon:02d}")
            rows.insert(6, "split", "val" if last else "train")
            frames.append(rows)
        index = pd.concat(frames, ignore_index=True)
        write_csv(index, Path(tmp) / "index.csv")
        taxa = sorted(index["species"].unique())
        plans_of = index.drop_duplicates("species").set_index("species")["plan"]
        summary = dict(
            what="pretraining corpus of generic shells (virtual; no genus or specimen of "
            "the collection)",
            config=asdict(config),
            n_taxa=len(taxa),
            n_specimens=int(index["specimen_id"].nunique()),
            n_slices=len(index),
            per_split={s: int((index["split"] == s).sum()) for s in CORPUS_SPLITS},
            recipes={t: shell_recipe(int(plans_of[t].split("-")[1])) for t in taxa},
            seconds=round(time.perf_counter() - t0, 1),
        )
        write_text(Path(tmp) / "corpus.json", json.dumps(summary, indent=2) + "\n")
    return index


def load_corpus(corpus_dir) -> tuple[pd.DataFrame, dict]:
    """The corpus index and its arrays (memory-mapped), checked for completeness."""
    from foramlib.dataset.slicing import load_slices

    corpus_dir = Path(corpus_dir)
    path = corpus_dir / "index.csv"
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: build the pretraining corpus first (dvc repro corpus)"
        )
    index = pd.read_csv(path, dtype={"specimen_id": str, "species": str, "slice_id": str})
    missing = {"slice_id", "specimen_id", "species", "array", "row", "split"} - set(index)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}")
    _, arrays = load_slices(corpus_dir, index=index, mmap=True)
    return index, arrays


def check_disjoint(corpus_index: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """Refuse a corpus that shares a specimen id or a taxon name with the collection.

    Examples
    --------
    >>> c = pd.DataFrame({"specimen_id": ["P-Shell-001-01"], "species": ["Shell-001"]})
    >>> check_disjoint(c, pd.DataFrame({"specimen_id": ["V-ALVE-01"], "species": ["Alveolina"]}))
    >>> check_disjoint(c, pd.DataFrame({"specimen_id": ["x"], "species": ["Shell-001"]}))
    Traceback (most recent call last):
    ...
    ValueError: the pretraining corpus shares taxa with the collection: ['Shell-001']
    """
    for column, what in (("specimen_id", "specimens"), ("species", "taxa")):
        shared = sorted(set(corpus_index[column].astype(str)) & set(manifest[column].astype(str)))
        if shared:
            raise ValueError(
                f"the pretraining corpus shares {what} with the collection: {shared[:8]}"
            )


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of pretraining one backbone (``pretrain`` in params.yaml)."""

    backbone: str
    input_size: int = 96
    batch_size: int = 32
    epochs: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.2
    patience: int = 4
    precision: str = "auto"
    seed: int = 0
    max_steps_per_epoch: int | None = None
    workers: int = 1
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(cutmix=False, mixup=False))

    def __post_init__(self) -> None:
        from foramlib.learn.models import BACKBONES

        if self.backbone not in BACKBONES:
            raise ValueError(
                f"pretrain backbone = {self.backbone!r} is unknown; valid: {sorted(BACKBONES)}"
            )
        _positive_int("pretrain.input_size", self.input_size, 32)
        _positive_int("pretrain.batch_size", self.batch_size)
        _positive_int("pretrain.epochs", self.epochs)
        _positive_int("pretrain.patience", self.patience)
        _positive_int("pretrain.workers", self.workers)
        if not self.lr > 0:
            raise ValueError(f"pretrain.lr = {self.lr!r} is invalid: expected a number > 0")
        if self.max_steps_per_epoch is not None:
            _positive_int("pretrain.max_steps_per_epoch", self.max_steps_per_epoch)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        return d


def _time_budget(lr: float, seconds: float):
    """A callback spending a wall-clock budget: cosine decay of the learning rate over
    the elapsed share of `seconds`, set at the start of each epoch, and a stop once the
    next epoch (timed as the last one) would not fit.

    The rate is set per epoch, not per step: a callback may change optimizer variables
    between epochs on every backend (under JAX the trainer holds them during an epoch).
    """
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = None
            self.last = 0.0
            self.stopped = False

        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self._e0 = time.perf_counter()
            share = min(1.0, (self._e0 - self.t0) / seconds)
            self.model.optimizer.learning_rate = lr * 0.5 * (1 + np.cos(np.pi * share))

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            # the next epoch is timed as this one (the first includes the compile, so it
            # overestimates: training stops early rather than late)
            self.last = now - self._e0
            if now - self.t0 + self.last > seconds:
                self.model.stop_training = True
                self.stopped = True

    return TimeBudget()


def pretrain_backbone(
    config: PretrainConfig,
    corpus_dir,
    out_dir,
    *,
    progress: Callable[[str], None] | None = print,
    time_budget_s: float | None = None,
    live_dir=None,
) -> dict:
    """Train `config.backbone` from scratch to tell the corpus's pseudo-taxa apart.

    Writes ``backbone.weights.h5`` (the headless backbone, for ``train.weights``),
    ``history.csv``, ``config.json`` and ``summary.json`` (including the accuracy on
    the held-out specimens of each pseudo-taxon, the transfer skill the weights carry)
    into `out_dir`, each atomically.

    With `time_budget_s`, training spends that wall-clock time instead of a fixed
    schedule (for a borrowed accelerator): the learning rate decays as a cosine of the
    elapsed share of the budget, and training stops before an epoch that would overrun
    it (``config.epochs`` remains the maximum). The pipeline stage uses epochs, which
    make the weights repeatable; a budgeted run records its epochs and wall time.

    With `live_dir`, every epoch is also logged through DVCLive there as it ends (as
    the ``train`` stages do: ``dvc plots show`` and ``dvc exp show`` read it, and
    :func:`foramlib.learn.training.read_live_history` reads it back).

    Returns
    -------
    dict
        The summary.
    """
    import keras

    from foramlib.learn.loader import SliceBatches
    from foramlib.learn.models import build_model, count_params, save_backbone_weights
    from foramlib.learn.training import _compile_with, _fast_batchnorm, _History, resolve_precision

    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s = {time_budget_s!r} is invalid: expected seconds > 0")

    index, arrays = load_corpus(corpus_dir)
    names = sorted(index["species"].unique())
    common = dict(
        batch_size=config.batch_size,
        input_size=config.input_size,
        seed=config.seed,
        workers=config.workers,
    )
    train = SliceBatches(index[index["split"] == "train"], arrays, names, shuffle=True, **common)
    val = SliceBatches(index[index["split"] == "val"], arrays, names, **common)
    precision = resolve_precision(config.precision)
    previous = keras.mixed_precision.global_policy().name
    keras.utils.set_random_seed(config.seed)
    history = _History(live_dir)
    t0 = time.perf_counter()
    steps = (
        len(train)
        if config.max_steps_per_epoch is None
        else min(len(train), config.max_steps_per_epoch)
    )
    try:
        keras.mixed_precision.set_global_policy(precision)
        model = build_model(
            config.backbone,
            input_size=config.input_size,
            n_classes=len(names),
            dropout=config.dropout,
            augment=config.augment if config.augment.enabled else None,
            seed=config.seed,
        )
        _fast_batchnorm(model)
        if time_budget_s is None:
            schedule = keras.optimizers.schedules.CosineDecay(
                config.lr, decay_steps=max(1, config.epochs * steps)
            )
            callbacks = []
        else:
            schedule, callbacks = config.lr, [_time_budget(config.lr, time_budget_s)]
        _compile_with(model, schedule, config.weight_decay, config.label_smoothing)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
        if progress:
            progress(
                f"pretrain {config.backbone}: {len(names)} pseudo-taxa, {train.n_images} "
                f"train / {val.n_images} held-out-specimen sections, {steps} steps/epoch"
            )
        model.fit(
            train,
            validation_data=val,
            epochs=config.epochs,
            steps_per_epoch=steps,
            verbose=2,
            callbacks=[history.callback(1), stop, *callbacks],
        )
        train_seconds = time.perf_counter() - t0
        probs = np.asarray(model.predict(val, verbose=0))
    finally:
        keras.mixed_precision.set_global_policy(previous)
        history.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hist = pd.DataFrame(history.rows)
    hist["epoch"] = np.arange(1, len(hist) + 1)
    summary = dict(
        backbone=config.backbone,
        input_size=config.input_size,
        pseudo_taxa=len(names),
        train_sections=train.n_images,
        val_sections=val.n_images,
        epochs_run=len(hist),
        val_accuracy_held_out_specimens=round(float((probs.argmax(1) == val.labels()).mean()), 4),
        chance=round(1 / len(names), 4),
        train_seconds=round(train_seconds, 1),
        train_images_per_s=round(len(hist) * steps * config.batch_size / train_seconds, 1),
        precision=precision,
        backend=keras.backend.backend(),
        parameters=count_params(model),
        cpu_count=os.cpu_count(),
        corpus=str(corpus_dir),
    )
    if time_budget_s is not None:
        summary.update(time_budget_s=time_budget_s, stopped_by_time=callbacks[0].stopped)
    save_backbone_weights(model, out / "backbone.weights.h5")
    write_csv(hist, out / "history.csv")
    write_text(out / "config.json", json.dumps(config.as_dict(), indent=2) + "\n")
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if progress:
        progress(
            f"pretrain {config.backbone}: {len(hist)} epochs in {train_seconds:.0f} s, "
            f"held-out-specimen accuracy {summary['val_accuracy_held_out_specimens']:.3f} "
            f"(chance {summary['chance']:.3f})"
        )
    return summary


def uses_pretraining(weights, out_dir, backbone: str) -> bool:
    """Whether ``train.weights`` points at this pretrain stage's output.

    >>> uses_pretraining("models/pretrain/{backbone}/backbone.weights.h5",
    ...                  "models/pretrain/tiny_cnn", "tiny_cnn")
    True
    >>> uses_pretraining("imagenet", "models/pretrain/tiny_cnn", "tiny_cnn")
    False
    """
    if weights is None or weights == "imagenet":
        return False
    path = Path(os.fspath(weights).replace("{backbone}", backbone))
    return path.resolve().parent == Path(out_dir).resolve()


def run_pretrain_stage(config: PretrainConfig, corpus_dir, out_dir, weights, live_dir=None) -> dict:
    """The ``pretrain@<backbone>`` stage: pretrain when ``train.weights`` asks for it.

    Otherwise (``imagenet``, ``null`` or another file) nothing is trained: `out_dir`
    only gets a ``summary.json`` saying why, so the paper profile pays nothing, and
    `live_dir` (if given) an empty DVCLive log, so the stage's declared metrics and
    plots exist and hold no stale epochs.
    """
    if uses_pretraining(weights, out_dir, config.backbone):
        return pretrain_backbone(config, corpus_dir, out_dir, live_dir=live_dir)
    summary = dict(
        backbone=config.backbone,
        skipped=f"train.weights = {weights!r} does not use this stage's weights",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("backbone.weights.h5", "history.csv"):
        (out / stale).unlink(missing_ok=True)
    if live_dir is not None:
        from foramlib.learn.training import _History

        _History(live_dir).close()  # DVCLive clears the old log: metrics.json is {}
        (Path(live_dir) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def needs_corpus(weights, backbones, pretrain_dir="models/pretrain") -> bool:
    """Whether any backbone's ``train.weights`` points into the pretrain stages' outputs.

    >>> needs_corpus("models/pretrain/{backbone}/backbone.weights.h5", ["tiny_cnn"])
    True
    >>> needs_corpus(None, ["tiny_cnn"]), needs_corpus("imagenet", ["tiny_cnn"])
    (False, False)
    """
    return any(uses_pretraining(weights, Path(pretrain_dir) / b, b) for b in backbones)


def run_corpus_stage(
    out_dir, config: CorpusConfig, slicing, *, weights, backbones, manifest, n_jobs: int = 1
) -> dict:
    """The ``corpus`` stage: build the corpus when ``train.weights`` uses pretraining.

    Otherwise `out_dir` only gets a ``corpus.json`` saying why (the paper profile uses
    ImageNet weights; a run from scratch needs no corpus). A built corpus is checked
    against the collection's `manifest` (no shared taxon or specimen).
    """
    if not needs_corpus(weights, backbones):
        summary = dict(skipped=f"train.weights = {weights!r} uses no pretrained weights")
        with atomic_dir(out_dir) as tmp:
            write_text(Path(tmp) / "corpus.json", json.dumps(summary, indent=2) + "\n")
        return summary
    index = build_corpus(out_dir, config, slicing, n_jobs=n_jobs)
    check_disjoint(index, pd.read_csv(manifest, dtype={"specimen_id": str}))
    return json.loads((Path(out_dir) / "corpus.json").read_text())
