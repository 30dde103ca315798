"""Training throughput: the model step alone vs the real input pipeline, in one run.

For each backbone and batch size, images/s of
(a) ``fit`` on one in-memory batch served again and again (the model step: forward,
    backward and the on-device augmentation layers; no reading, no mixing), and
(b) ``fit`` on the real pipeline: batches read from a memory-mapped slice store,
    CutMix/MixUp at the batch level, the same model.
Both run the same compiled train function in the same loop (one compile; under JAX
both dispatch asynchronously, so neither pays a host sync per step that the other does
not: ``train_on_batch`` returns its losses to the host every step and would understate
the step).
Goal on a GPU: (b) >= 90 % of (a). Writes JSON naming the device and backend.

    python benchmarks/train_throughput.py --backbone mobilenetv3_small --input-size 96 \\
        --batch-sizes 32 [--store data/slices --index data/split/index.csv]

Without --store a synthetic slice store of random uint8 slices is made in a temporary
folder (so the script also runs on a machine without the pipeline's data).
"""

from __future__ import annotations

import argparse
import itertools
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

from foramlib.dataset.slicing import load_slices  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import training
from foramlib.learn.augment import AugmentConfig, mix_batch  # noqa: E402
from foramlib.learn.models import build_model  # noqa: E402


def synthetic_store(root: Path, size: int, n: int, n_classes: int = 12) -> pd.DataFrame:
    """Random uint8 slices in 4 arrays with a train-only index."""
    rng = np.random.default_rng(0)
    rows = []
    for a in range(4):
        name = f"vol{a}.npy"
        np.save(root / name, rng.integers(0, 256, (n // 4, size, size), dtype=np.uint8))
        for r in range(n // 4):
            rows.append(
                dict(
                    slice_id=f"vol{a}:{r:05d}",
                    specimen_id=f"S{a}",
                    species=f"genus{(a * 7 + r) % n_classes:02d}",
                    array=name,
                    row=r,
                    split="train",
                )
            )
    return pd.DataFrame(rows)


def repeat_batch(x, y, steps: int):
    """A dataset of `steps` copies of one batch: the model step without the input pipeline."""
    import keras

    class Repeat(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return x, y

    return Repeat()


def timed_fit(model, dataset, steps: int, warmup: int = 2) -> float:
    """Images/s of ``model.fit`` over `steps` batches after `warmup` untimed ones."""
    import keras

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            if b == warmup:
                self.t0 = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.t0

    timer = Timer()
    x, _ = dataset[0]
    model.fit(dataset, epochs=1, steps_per_epoch=steps + warmup, verbose=0, callbacks=[timer])
    return steps * len(x) / timer.seconds


def measure(backbone: str, input_size: int, batch: int, steps: int, ds) -> dict:
    """Model step vs real pipeline (images/s) of `backbone` on the batches of `ds`."""
    names = ds.names
    augment = AugmentConfig()
    model = build_model(backbone, input_size=input_size, n_classes=len(names), augment=augment)
    training._compile(
        model,
        training.TrainConfig(backbone=backbone, input_size=input_size, batch_size=batch),
        1e-4,
    )
    x, y = ds[0]
    t0 = time.perf_counter()
    model.fit(repeat_batch(x, y, 1), epochs=1, verbose=0)  # build and compile, untimed
    compile_seconds = time.perf_counter() - t0
    step_rate = timed_fit(model, repeat_batch(x, y, steps + 2), steps)
    pipe_rate = timed_fit(model, ds, steps)
    return dict(
        backbone=backbone,
        input_size=input_size,
        batch_size=batch,
        steps=steps,
        first_step_seconds=round(compile_seconds, 1),
        model_step_images_per_s=round(step_rate, 1),
        pipeline_images_per_s=round(pipe_rate, 1),
        pipeline_over_step=round(pipe_rate / step_rate, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["mobilenetv3_small"])
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--store", help="slice store folder (default: a synthetic one)")
    parser.add_argument("--index", help="split index CSV of --store")
    parser.add_argument(
        "--precision", nargs="+", default=["auto"], choices=list(training.PRECISIONS),
        help="dtype policies, each measured in turn (compare them within one run); auto: "
        "as training does (mixed_float16 on a GPU, else float32)",
    )  # fmt: skip
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "train_throughput.json")
    )
    args = parser.parse_args()
    import keras

    precisions = [training.resolve_precision(p) for p in args.precision]
    tmp = tempfile.TemporaryDirectory()
    if args.store:
        store = Path(args.store)
        index = data.load_split_index(args.index)
        index = index[index["split"] == "train"]
    else:
        store = Path(tmp.name)
        index = synthetic_store(store, args.input_size, 64 * max(args.batch_sizes))
    names = sorted(index["species"].unique())
    _, arrays = load_slices(store, index)
    augment = AugmentConfig()
    runs = []
    for precision, backbone, batch in itertools.product(
        precisions, args.backbone, args.batch_sizes
    ):
        keras.mixed_precision.set_global_policy(precision)
        ds = data.SliceBatches(
            index,
            arrays,
            names,
            batch_size=batch,
            shuffle=True,
            mix=lambda x, y, rng: mix_batch(x, y, augment, rng),
            input_size=args.input_size,
            workers=args.workers,
        )
        runs.append(
            dict(precision=precision, **measure(backbone, args.input_size, batch, args.steps, ds))
        )
        print(json.dumps(runs[-1]))
    accelerators = training.available_accelerators()
    result = dict(
        benchmark="train throughput",
        backend=keras.backend.backend(),
        device=accelerators or f"CPU ({os.cpu_count()} cores)",
        precision=precisions[0] if len(precisions) == 1 else precisions,
        store="synthetic" if not args.store else str(args.store),
        runs=runs,
        goal="pipeline >= 90% of the model step on a GPU",
        machine=machine(),
        date=today(),
    )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
