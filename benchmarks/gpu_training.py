"""The paper profile's backbones trained on a GPU: throughput and accuracy in one budget.

For each backbone of the paper profile asked for (default ConvNeXtLarge at 384 px and
EfficientNetV2S at 224 px, the sizes ``profiles/paper.yaml`` gives them):

1. images/s of the model step alone against the real input pipeline
   (:func:`train_throughput.measure`: ``fit`` on one in-memory batch served again and
   again against ``fit`` on :class:`foramlib.learn.loader.SliceBatches`, CutMix/MixUp included,
   one compiled train function for both);
2. the real training path, :func:`foramlib.learn.training.train_backbone`, with the paper
   profile's settings (batch size, augmentation, dropout, weight decay, label smoothing,
   precision, patience), on the pipeline's own slice store and specimen split, for as
   many phase-2 epochs as the measured pipeline rate fits into ``--train-seconds``;
3. validation and test scores of its predictions (slice accuracy, macro-F1, specimen
   accuracy), the rule of ``benchmarks/classification.py``.

No network: ``weights`` is None (no ImageNet), so phase 1 (a head on a frozen random
backbone) is skipped by default and phase 2 uses a from-scratch learning rate (the
quick profile's ``phase2_lr``, not the paper's fine-tuning rate). Everything that
differs from the paper profile is written to the JSON under ``overrides``. The JSON is
rewritten after every step, so a run stopped at its time limit keeps what it measured.

    KERAS_BACKEND=jax python benchmarks/gpu_training.py --store data/slices \\
        --index data/split/index.csv --deadline-seconds 520

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

import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from classification import score, train_once  # noqa: E402
from machine import machine, today  # noqa: E402
from train_throughput import measure  # noqa: E402

from foramlib.config import load_params  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import training
from foramlib.learn.augment import mix_batch  # noqa: E402

# Share of the wall budget left to the epochs themselves: the rest covers validation
# passes, the phase-2 compile and the predictions.
EPOCH_SHARE = 0.7


def epochs_for(budget_s: float, images_per_s: float, n_train: int, batch: int) -> int:
    """Phase-2 epochs that fit `budget_s` at `images_per_s` (at least 1).

    >>> epochs_for(100, 1000, 5000, 32)
    14
    >>> epochs_for(1, 10, 5000, 32)
    1
    """
    steps = -(-n_train // batch)
    return max(1, int(EPOCH_SHARE * budget_s * images_per_s / (steps * batch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="profiles/paper.yaml", help="profile to train with")
    parser.add_argument("--backbones", nargs="+", default=["efficientnetv2_s", "convnext_large"])
    parser.add_argument("--store", default="data/slices")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument(
        "--train-seconds",
        type=float,
        nargs="+",
        default=[120],
        help="training budget per backbone (one value, or one per backbone)",
    )
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=520,
        help="the whole run; a backbone's budget shrinks to what is left",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the throughput test")
    parser.add_argument(
        "--throughput-only", action="store_true", help="measure images/s, train nothing"
    )
    parser.add_argument("--phase1-epochs", type=int, default=0)
    parser.add_argument("--phase2-lr", type=float, default=1e-3)
    parser.add_argument("--precision", default=None, help="default: the profile's")
    parser.add_argument("--workers", type=int, default=None, help="default: the profile's")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "gpu_training.json")
    )
    args = parser.parse_args()
    t_start = time.perf_counter()
    import keras

    params = load_params(args.params)
    budgets = (
        args.train_seconds * len(args.backbones)
        if len(args.train_seconds) == 1
        else args.train_seconds
    )
    if len(budgets) != len(args.backbones):
        parser.error(f"--train-seconds: give 1 or {len(args.backbones)} values, got {len(budgets)}")
    index = data.load_split_index(args.index)
    names = data.class_names(index)
    n_train = int((index["split"] == "train").sum())
    accelerators = training.available_accelerators()
    overrides = dict(weights=None, phase1_epochs=args.phase1_epochs, phase2_lr=args.phase2_lr)
    if args.precision:
        overrides["precision"] = args.precision
    if args.workers:
        overrides["workers"] = args.workers
    result = dict(
        benchmark="paper-profile training on a GPU (virtual collection)",
        profile=args.params,
        backend=keras.backend.backend(),
        device=accelerators or f"CPU ({os.cpu_count()} cores)",
        store=str(args.store),
        slices=index["split"].value_counts().to_dict(),
        classes=len(names),
        overrides=overrides,
        train_seconds=budgets,
        deadline_seconds=args.deadline_seconds,
        step_method="fit on one in-memory batch served again and again",
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

    def setup(cfg: training.TrainConfig) -> dict:
        keras.mixed_precision.set_global_policy(
            training.resolve_precision(cfg.precision, accelerators)
        )
        mix = (lambda x, y, rng: mix_batch(x, y, cfg.augment, rng)) if cfg.augment.enabled else None
        return data.make_datasets(
            index, args.store, names, batch_size=cfg.batch_size, seed=cfg.seed, mix=mix,
            input_size=cfg.input_size, workers=cfg.workers,
        )  # fmt: skip

    # Throughput of every backbone first: it is the cheaper half, and it sizes the epochs.
    configs = {b: training.TrainConfig.from_params(params, b, **overrides) for b in args.backbones}
    for backbone, cfg in configs.items():
        precision = training.resolve_precision(cfg.precision, accelerators)
        datasets = setup(cfg)
        t0 = time.perf_counter()
        run = measure(backbone, cfg.input_size, cfg.batch_size, args.steps, datasets["train"])
        run.update(precision=precision, measure_seconds=round(time.perf_counter() - t0, 1))
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        save()
    for run, budget in zip(
        result["runs"], budgets if not args.throughput_only else [], strict=False
    ):
        backbone, cfg = run["backbone"], configs[run["backbone"]]
        left = args.deadline_seconds - (time.perf_counter() - t_start)
        budget = min(budget, left - 30)
        if budget < 20:
            run["skipped_training"] = f"{left:.0f} s left of the deadline"
            save()
            continue
        rate = run["pipeline_images_per_s"]
        epochs = epochs_for(budget, rate, n_train, cfg.batch_size)
        cfg = training.TrainConfig.from_dict(
            {**cfg.as_dict(), "phase2_epochs": epochs, "restart_epochs": epochs}
        )
        run.update(train_budget_seconds=round(budget, 1), phase2_epochs=epochs)
        result["train_configs"][backbone] = cfg.as_dict()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            keras.mixed_precision.set_global_policy("float32")  # train_backbone sets its own
            predictions, summary = train_once(cfg, index, args.store, names, tmp)
            history = pd.read_csv(Path(tmp) / "history.csv")
        run.update(
            train_wall_seconds=round(time.perf_counter() - t0, 1),
            epochs_run=summary["epochs_run"],
            train_images_per_s=summary["train_images_per_s"],
        )
        for split, p in predictions.items():
            run.update({f"{split}_{k}": v for k, v in score(p).items()})
        result["histories"][backbone] = history.round(4).to_dict(orient="list")
        print(json.dumps(run), flush=True)
        save()
    save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
