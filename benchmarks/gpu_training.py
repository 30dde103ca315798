"""The paper profile's backbones trained on a GPU: accuracy, then throughput, in one budget.

For each backbone asked for (default EfficientNetV2S at 224 px, then ConvNeXtLarge at
384 px, the sizes ``profiles/paper.yaml`` gives them), in order:

1. the real training path, :func:`foramlib.learn.training.train_backbone`, with the
   paper profile's settings (batch size, augmentation, dropout, weight decay, label
   smoothing, precision, patience) on the pipeline's own slice store and specimen split,
   for ``--epochs`` phase-2 epochs of at most ``--steps-per-epoch`` steps (one cosine
   cycle over them), stopped early by a clock when its ``--train-seconds`` or the run's
   ``--deadline-seconds`` run out (the best weights so far are kept);
2. validation and test scores of its predictions (slice accuracy, macro-F1, specimen
   accuracy: the rule of ``benchmarks/classification.py``);
3. images/s of the model step alone against the real input pipeline, measured on the
   trained model so that no second XLA compile is paid (:func:`train_throughput.timed_fit`
   on one in-memory batch served again and again, then on the training batches with
   CutMix/MixUp; both run the compiled train function of step 1).

Training comes first because on a lent GPU the compile is the dear part: the last
run spent its minutes measuring throughput with two compiles per backbone and finished
no training. Each epoch's wall time is recorded (from the training history), so the
first epoch's compile shows.

No network: ``weights`` is None (no ImageNet), so phase 1 (a head on a frozen random
backbone) is skipped and phase 2 uses a from-scratch learning rate (the quick profile's
``phase2_lr``, not the paper's fine-tuning rate). Everything that differs from the
paper profile is written to the JSON under ``overrides``. The JSON is rewritten after
every step, so a run stopped at its limit keeps what it measured.

    KERAS_BACKEND=jax python benchmarks/gpu_training.py --store data/slices \\
        --index data/split/index.csv --deadline-seconds 500

A lent GPU machine has JAX but neither Keras nor the slices. Pack them here first
(both folders are in ``.git/info/exclude`` and travel as ``carry``; 45 MB of slices
for the quick run's store, training reserve included)::

    python benchmarks/gpu_training.py --pack .gpudata/slices.tar.xz
    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \\
        --platform manylinux_2_28_x86_64 keras==3.15.1 namex optree nibabel

then there: install ``.whl/*.whl`` with ``pip --target``, put it and the repository on
``PYTHONPATH``, ``tar -xJf .gpudata/slices.tar.xz`` and run the line above.

Accuracy numbers are on the VIRTUAL collection: they test the pipeline, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from classification import datasets_for, score  # noqa: E402
from machine import machine, today  # noqa: E402
from train_throughput import repeat_batch, timed_fit  # noqa: E402

from foramlib.config import load_params  # noqa: E402
from foramlib.evaluation import metrics  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import training


def pack(index_path, store, out) -> int:
    """Write the slice arrays `index_path` uses, the store's tables and the index to `out`.

    An xz tarball with the repository-relative paths (``data/slices/...``), to carry to
    a machine without the pipeline's data. Returns the number of files packed.
    """
    import tarfile

    from foramlib.io.atomic import atomic_path

    index = data.load_split_index(index_path)
    store = Path(store)
    files = [store / a for a in sorted(set(index["array"]))]
    files += [store / "index.csv", store / "reserve.csv", store / "slicing.json"]
    files = [f for f in files if f.is_file()] + [Path(index_path)]
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:xz") as tar:
        for f in files:
            tar.add(f, arcname=f.as_posix())
    return len(files)


def per_backbone(values: list, n: int, flag: str) -> list:
    """One value for each of `n` backbones: `values` as given, or its one value repeated.

    >>> per_backbone([5], 2, "--epochs")
    [5, 5]
    >>> per_backbone([1, 2, 3], 2, "--epochs")
    Traceback (most recent call last):
    ...
    ValueError: --epochs: give 1 or 2 values, got 3
    """
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{flag}: give 1 or {n} values, got {len(values)}")
    return list(values)


def whole_batches(index, batch_size: int, seed: int):
    """`index` less a few random training slices, so that every training batch is full.

    Under JAX a batch of another shape compiles the train step again (minutes for a
    large backbone), and the last batch of a pass is short unless the training split
    is a multiple of the batch size. Validation and test slices are all kept.

    >>> import pandas as pd
    >>> idx = pd.DataFrame({"split": ["train"] * 70 + ["val"] * 5})
    >>> whole_batches(idx, 32, seed=0)["split"].value_counts().to_dict()
    {'train': 64, 'val': 5}
    """
    train = index.index[index["split"] == "train"]
    surplus = len(train) % batch_size
    rng = np.random.default_rng(seed)
    return index.drop(rng.choice(train, size=surplus, replace=False))


def clock_stop(stop_at: float):
    """A Keras callback that ends training at the first batch finishing after `stop_at`.

    `stop_at` is a :func:`time.perf_counter` time; its ``stopped`` says whether it acted.
    """
    import keras

    class StopAt(keras.callbacks.Callback):
        stopped = False

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() >= stop_at:
                self.stopped = True
                self.model.stop_training = True

    return StopAt()


def gpu_names() -> list[str]:
    """The accelerators' model names (e.g. 'NVIDIA H100 80GB HBM3'), where JAX runs."""
    import keras

    if keras.backend.backend() != "jax":
        return []
    import jax

    return [d.device_kind for d in jax.devices() if d.platform == "gpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="profiles/paper.yaml", help="profile to train with")
    parser.add_argument("--backbones", nargs="+", default=["efficientnetv2_s", "convnext_large"])
    parser.add_argument("--store", default="data/slices")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[12, 6],
        help="phase-2 epochs per backbone (one value, or one per backbone)",
    )  # fmt: skip
    parser.add_argument(
        "--steps-per-epoch", type=int, default=150,
        help="cap on steps per epoch (short epochs: early stopping and the schedule see "
        "more points within a small budget)",
    )  # fmt: skip
    parser.add_argument(
        "--train-seconds", type=float, nargs="+", default=[200],
        help="training clock per backbone (one value, or one per backbone)",
    )  # fmt: skip
    parser.add_argument(
        "--deadline-seconds", type=float, default=500,
        help="the whole run: training stops so that predictions and throughput still fit",
    )  # fmt: skip
    parser.add_argument(
        "--after-seconds", type=float, default=60,
        help="time kept after a backbone's training for predictions and throughput",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the throughput test")
    parser.add_argument("--phase1-epochs", type=int, default=0)
    parser.add_argument("--phase2-lr", type=float, default=1e-3)
    parser.add_argument("--precision", default=None, help="default: the profile's")
    parser.add_argument("--workers", type=int, default=None, help="default: the profile's")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "gpu_training.json")
    )
    parser.add_argument(
        "--pack", metavar="TAR_XZ", help="only pack --store and --index for a GPU machine"
    )
    args = parser.parse_args()
    if args.pack:
        n = pack(args.index, args.store, args.pack)
        print(f"{args.pack}: {n} files")
        return
    t_start = time.perf_counter()
    try:
        epochs = per_backbone(args.epochs, len(args.backbones), "--epochs")
        budgets = per_backbone(args.train_seconds, len(args.backbones), "--train-seconds")
    except ValueError as err:
        parser.error(str(err))
    import keras

    params = load_params(args.params)
    index = data.load_split_index(args.index)
    names = data.class_names(index)
    accelerators = training.available_accelerators()
    overrides = dict(
        weights=None,
        phase1_epochs=args.phase1_epochs,
        phase2_lr=args.phase2_lr,
        max_steps_per_epoch=args.steps_per_epoch,
    )
    if args.precision:
        overrides["precision"] = args.precision
    if args.workers:
        overrides["workers"] = args.workers
    result = dict(
        benchmark="paper-profile training on a GPU (virtual collection)",
        profile=args.params,
        backend=keras.backend.backend(),
        device=accelerators or f"CPU ({os.cpu_count()} cores)",
        gpu=gpu_names(),
        store=str(args.store),
        slices=index["split"].value_counts().to_dict(),
        classes=len(names),
        chance_accuracy=round(1 / len(names), 4),
        overrides=overrides,
        deadline_seconds=args.deadline_seconds,
        step_method="fit on one in-memory batch served again and again, on the trained "
        "model (the training run's compiled step)",
        runs=[],
        train_configs={},
        histories={},
        goal="pipeline >= 90% of the model step",
        machine=machine(),
        date=today(),
    )

    def save() -> None:
        result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_text(args.out, json.dumps(result, indent=2) + "\n")

    for backbone, n_epochs, budget in zip(args.backbones, epochs, budgets, strict=True):
        run = dict(backbone=backbone)
        result["runs"].append(run)
        now = time.perf_counter()
        stop_at = min(now + budget, t_start + args.deadline_seconds - args.after_seconds)
        if stop_at - now < 30:
            run["skipped"] = f"{t_start + args.deadline_seconds - now:.0f} s left of the deadline"
            save()
            continue
        cfg = training.TrainConfig.from_params(params, backbone, **overrides)
        cfg = training.TrainConfig.from_dict(
            {**cfg.as_dict(), "phase2_epochs": n_epochs, "restart_epochs": n_epochs}
        )
        result["train_configs"][backbone] = cfg.as_dict()
        trimmed = whole_batches(index, cfg.batch_size, cfg.seed)
        run["train_slices_dropped"] = len(index) - len(trimmed)
        datasets = datasets_for(cfg, trimmed, args.store, names)
        stop = clock_stop(stop_at)
        run.update(
            input_size=cfg.input_size,
            batch_size=cfg.batch_size,
            planned_epochs=n_epochs,
            train_clock_seconds=round(stop_at - now, 1),
        )
        save()
        with tempfile.TemporaryDirectory() as tmp:
            trained = training.train_backbone(
                cfg, datasets, names, tmp, progress=print, callbacks=[stop]
            )
            predictions = {
                split: metrics.load_predictions(
                    Path(tmp) / f"predictions_{split}.csv", name=backbone
                )
                for split in ("val", "test")
            }
        summary = trained.summary
        run.update(
            precision=summary["precision"],
            parameters=summary["parameters"],
            epochs_run=summary["epochs_run"],
            stopped_by_clock=stop.stopped,
            epoch_seconds=trained.history["seconds"].round(1).tolist(),  # validation included
            train_seconds=summary["train_seconds"],
            predict_images_per_s=summary["predict_images_per_s"],
        )
        for split, p in predictions.items():
            run.update({f"{split}_{k}": v for k, v in score(p).items()})
        result["histories"][backbone] = trained.history.round(4).to_dict(orient="list")
        print(json.dumps(run), flush=True)
        save()

        # The step and the pipeline on the trained model: its train function is compiled.
        x, y = datasets["train"][0]
        t0 = time.perf_counter()
        step_rate = timed_fit(trained.model, repeat_batch(x, y, args.steps + 2), args.steps)
        pipe_rate = timed_fit(trained.model, datasets["train"], args.steps)
        run.update(
            steps=args.steps,
            model_step_images_per_s=round(step_rate, 1),
            pipeline_images_per_s=round(pipe_rate, 1),
            pipeline_over_step=round(pipe_rate / step_rate, 3),
            measure_seconds=round(time.perf_counter() - t0, 1),
        )
        print(json.dumps(run), flush=True)
        save()
        del trained, datasets
        keras.backend.clear_session()
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "histories"}, indent=2))


if __name__ == "__main__":
    main()
