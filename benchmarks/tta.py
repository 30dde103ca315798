"""Test-time augmentation of the pipeline's trained backbones: is it worth adopting?

Scores each backbone of ``train.backbones`` (the pipeline's saved ``models/<name>``) on
the validation and test splits twice: on the slices as stored, and with the mean
probability over the 8 symmetries of the square (rotations by 0/90/180/270° and their
mirror images). A section of a fossil has no preferred in-plane orientation (the slicer
draws it at random), so every symmetry is an equally valid view. The decision to adopt
it is taken on the VALIDATION numbers; the test numbers are reported beside them.

    python benchmarks/tta.py          # after `dvc repro`

Writes ``benchmarks/results/tta.json`` naming the machine. Accuracy numbers are on the
VIRTUAL collection: they test the pipeline, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib import config  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import tta


def specimen_accuracy(probs: np.ndarray, y: np.ndarray, specimens: np.ndarray) -> float:
    ok = [
        probs[specimens == s].mean(axis=0).argmax() == y[specimens == s][0]
        for s in np.unique(specimens)
    ]
    return round(float(np.mean(ok)), 4)


def score_backbone(name: str, size: int, index, store: str, models: str, names) -> dict:
    import keras

    model = keras.models.load_model(Path(models) / name / "model.keras")
    datasets = data.make_datasets(index, store, names, batch_size=64, input_size=size)
    out = {}
    for split in ("val", "test"):
        batches = datasets[split]
        xs, ys = zip(*(batches[i] for i in range(len(batches))), strict=True)
        x, y = np.concatenate(xs), np.concatenate(ys).argmax(axis=1)
        specimens = index.loc[index["split"] == split, "specimen_id"].to_numpy()
        row = dict(slices=int(len(y)))
        for n in tta.VIEW_COUNTS:
            t0 = time.perf_counter()
            probs = np.mean(
                [model.predict(v, batch_size=128, verbose=0) for v in tta.views(x, n)], 0
            )
            row[f"views_{n}"] = dict(
                accuracy=round(float((probs.argmax(1) == y).mean()), 4),
                specimen_accuracy=specimen_accuracy(probs, y, specimens),
                seconds=round(time.perf_counter() - t0, 1),
            )
        out[split] = row
        print(name, split, out[split], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--store", default="data/slices")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument("--models", default="models")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tta.json"))
    args = parser.parse_args()
    params = config.load_params(args.params)
    index = data.load_split_index(args.index)
    names = data.class_names(index)
    backbones = params["train"]["backbones"]
    result = dict(
        benchmark="tta",
        date=today(),
        machine=machine(),
        data=f"{params['data']['source']} collection"
        + (" (synthetic, not the paper's scans)" if params["data"]["source"] == "virtual" else ""),
        views=(
            "views_n: mean probability over n symmetries of the square (foramlib.learn.tta.views)"
        ),
        models={
            name: score_backbone(name, b["input_size"], index, args.store, args.models, names)
            for name, b in backbones.items()
        },
    )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
