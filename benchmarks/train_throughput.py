"""Training throughput: the model step alone vs the real input pipeline, in one run.

For each backbone and batch size, images/s of
(a) ``train_on_batch`` on one in-memory batch (the model step: forward, backward and the
    on-device augmentation layers), and
(b) ``fit`` on the real pipeline: batches read from a memory-mapped slice store,
    CutMix/MixUp at the batch level, the same model.
Goal on a GPU: (b) >= 90 % of (a). Writes JSON naming the device and backend.

    python benchmarks/train_throughput.py --backbone mobilenetv3_small --input-size 96 \\
        --batch-sizes 32 [--store data/slices --index data/split/index.csv]

Without --store a synthetic slice store of random uint8 slices is made in a temporary
folder (so the script also runs on a machine without the pipeline's data).
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

from foramlib import data, training  # noqa: E402
from foramlib.atomic import write_text  # noqa: E402
from foramlib.augment import AugmentConfig, mix_batch  # noqa: E402
from foramlib.models import build_model  # noqa: E402
from foramlib.slicing import load_slices  # noqa: E402


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


def measure(backbone: str, input_size: int, batch: int, steps: int, ds) -> dict:
    import keras

    names = ds.names
    augment = AugmentConfig()
    model = build_model(backbone, input_size=input_size, n_classes=len(names), augment=augment)
    training._compile(
        model,
        training.TrainConfig(backbone=backbone, input_size=input_size, batch_size=batch),
        1e-4,
    )
    x, y = ds[0]
    model.train_on_batch(x, y)  # build and trace
    model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    step_rate = steps * batch / (time.perf_counter() - t0)

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            if b == 2:  # after warm-up
                self.t0 = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.t0

    timer = Timer()
    model.fit(ds, epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[timer])
    pipe_rate = steps * batch / timer.seconds
    return dict(
        backbone=backbone,
        input_size=input_size,
        batch_size=batch,
        steps=steps,
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
        "--precision", default="auto", choices=list(training.PRECISIONS),
        help="dtype policy; auto: as training does (mixed_float16 on a GPU, else float32)",
    )  # fmt: skip
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "train_throughput.json")
    )
    args = parser.parse_args()
    import keras

    precision = training.resolve_precision(args.precision)
    keras.mixed_precision.set_global_policy(precision)
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
    for backbone in args.backbone:
        for batch in args.batch_sizes:
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
            runs.append(measure(backbone, args.input_size, batch, args.steps, ds))
            print(json.dumps(runs[-1]))
    accelerators = training.available_accelerators()
    result = dict(
        benchmark="train throughput",
        backend=keras.backend.backend(),
        device=accelerators or f"CPU ({os.cpu_count()} cores)",
        precision=precision,
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
