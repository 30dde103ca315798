"""Offline pretraining on a corpus of generic shells, then fine-tuning on the collection.

The measure of whether the ``corpus`` and ``pretrain@<backbone>`` stages are worth their
cost: in one run,

1. render a corpus of generic shells (:func:`foramlib.learn.pretraining.build_corpus`: no
   genus and no specimen of the collection, checked against the split index) with the
   collection's slicer, in as many worker processes as asked;
2. pretrain each backbone of the profile at its own input size
   (:func:`foramlib.learn.pretraining.pretrain_backbone`) for a wall-clock budget, and write
   its headless weights, ``<backbone>.weights.h5``, which ``train.weights`` loads;
3. with ``--finetune``, fine-tune them on the collection's own split with the profile's
   settings and a transfer schedule (phase 1 on the frozen backbone, then phase 2 with
   BatchNorm frozen); with ``--scratch-control``, train the same backbones from scratch
   with the profile's own schedule in the same run; score val and test slices and
   specimens (the rule of ``benchmarks/classification.py``).

The same script serves a 2-core machine (the budgets of the book's table) and a
borrowed GPU, where the corpus and the budgets can be far larger::

    KERAS_BACKEND=jax python benchmarks/pretrain_transfer.py --n-taxa 96 --specimens 6 \\
        --pretrain-seconds 200 80 --batch-size 128 --finetune --out-dir /tmp/pretrained

The JSON, ``pretrain_transfer.json`` in ``--out-dir``, is rewritten after every step (a
run stopped at its limit keeps what it did) and names the machine, the corpus, the
budgets, the epochs run and every score. Scores are on the VIRTUAL collection: they
test the pipeline, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from classification import score, train_once  # noqa: E402
from machine import machine, today  # noqa: E402

from foramlib.config import load_params  # noqa: E402
from foramlib.dataset.slicing import SlicingConfig  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import pretraining, training

# The transfer schedule tried on the collection: a head on the frozen pretrained
# backbone first (it has features now), then all layers at a fine-tuning rate.
FINETUNE = dict(
    phase1_epochs=3, phase1_lr=1e-3, phase2_epochs=20, phase2_lr=3e-4, restart_epochs=10
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="profile (backbones, slicing)")
    parser.add_argument("--backbones", nargs="+", default=None, help="default: the profile's")
    parser.add_argument("--n-taxa", type=int, default=96)
    parser.add_argument("--specimens", type=int, default=6, help="per pseudo-taxon (last held out)")
    parser.add_argument("--slices", type=int, default=64, help="candidate sections per specimen")
    parser.add_argument("--corpus-jobs", type=int, default=os.cpu_count())
    parser.add_argument("--corpus-dir", default=None, help="default: a temporary folder")
    parser.add_argument(
        "--pretrain-seconds", type=float, nargs="+", default=[150, 60],
        help="wall-clock budget per backbone (one value, or one per backbone)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8, help="batch-loading threads")
    parser.add_argument("--finetune", action="store_true", help="then fine-tune on the collection")
    parser.add_argument("--scratch-control", action="store_true", help="and train from scratch")
    parser.add_argument(
        "--finetune-epochs", type=int, nargs=2, default=None, metavar=("PHASE1", "PHASE2"),
        help="override the schedule's epochs (smoke tests)",
    )  # fmt: skip
    parser.add_argument("--store", default="data/slices")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument("--deadline-seconds", type=float, default=540)
    parser.add_argument("--out-dir", required=True, help="weights and the JSON go here")
    args = parser.parse_args()
    t_start = time.perf_counter()
    import keras

    params = load_params(args.params)
    backbones = args.backbones or list(params["train"]["backbones"])
    budgets = (
        args.pretrain_seconds * len(backbones)
        if len(args.pretrain_seconds) == 1
        else args.pretrain_seconds
    )
    if len(budgets) != len(backbones):
        parser.error(f"--pretrain-seconds: give 1 or {len(backbones)} values, got {len(budgets)}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = data.load_split_index(args.index)
    names = data.class_names(index)
    accelerators = training.available_accelerators()
    result = dict(
        benchmark="offline pretraining on generic shells, then fine-tuning (virtual collection)",
        profile=args.params,
        backend=keras.backend.backend(),
        device=accelerators or f"CPU ({os.cpu_count()} cores)",
        deadline_seconds=args.deadline_seconds,
        corpus={},
        pretrain={},
        finetune={},
        finetune_schedule=FINETUNE,
        machine=machine(),
        date=today(),
    )

    def save() -> None:
        result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_text(out / "pretrain_transfer.json", json.dumps(result, indent=2) + "\n")

    def left() -> float:
        return args.deadline_seconds - (time.perf_counter() - t_start)

    corpus_cfg = pretraining.CorpusConfig(
        n_taxa=args.n_taxa,
        specimens_per_taxon=args.specimens,
        slices_per_specimen=args.slices,
        shape=params["pretrain"]["corpus"]["shape"],
        supersample=params["pretrain"]["corpus"]["supersample"],
        seed=params["seed"],
    )
    slicing = SlicingConfig.from_params(params)
    corpus_dir = Path(args.corpus_dir or tempfile.mkdtemp(prefix="corpus-"))
    t0 = time.perf_counter()
    # the render workers import keras too: keep them off the GPU (this process is not
    # affected: JAX read its settings when it was imported)
    saved = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES")}
    os.environ.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    try:
        corpus = pretraining.build_corpus(corpus_dir, corpus_cfg, slicing, n_jobs=args.corpus_jobs)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
    pretraining.check_disjoint(corpus, index)
    result["corpus"] = dict(
        json.loads((corpus_dir / "corpus.json").read_text()),
        seconds=round(time.perf_counter() - t0, 1),
        jobs=args.corpus_jobs,
    )
    result["corpus"].pop("recipes", None)
    save()

    sizes = {b: int(params["train"]["backbones"][b]["input_size"]) for b in backbones}
    for backbone, budget in zip(backbones, budgets, strict=True):
        asked, budget = budget, min(budget, left() - 20)
        if budget < min(asked, 30):
            result["pretrain"][backbone] = dict(skipped=f"{left():.0f} s left of the deadline")
            save()
            continue
        cfg = pretraining.PretrainConfig(
            backbone,
            input_size=sizes[backbone],
            batch_size=args.batch_size,
            epochs=args.max_epochs,
            lr=args.lr,
            patience=args.max_epochs,  # the budget ends training, not a plateau
            seed=params["seed"],
            workers=args.workers,
        )
        with tempfile.TemporaryDirectory() as tmp:
            summary = pretraining.pretrain_backbone(cfg, corpus_dir, tmp, time_budget_s=budget)
            os.replace(Path(tmp) / "backbone.weights.h5", out / f"{backbone}.weights.h5")
            history = pd.read_csv(Path(tmp) / "history.csv").round(4)
        summary.update(config=cfg.as_dict(), history=history.to_dict(orient="list"))
        result["pretrain"][backbone] = summary
        save()

    schedule = dict(FINETUNE)
    if args.finetune_epochs:
        phase1, phase2 = args.finetune_epochs
        schedule.update(phase1_epochs=phase1, phase2_epochs=phase2)
        result["finetune_schedule"] = schedule
    runs = []
    if args.finetune:
        runs += [(b, str(out / f"{b}.weights.h5"), schedule) for b in backbones]
    if args.scratch_control:  # the profile's own from-scratch schedule
        epochs = {"phase2_epochs": args.finetune_epochs[1]} if args.finetune_epochs else {}
        runs += [(b, None, epochs) for b in backbones]
    for backbone, weights, schedule in runs:
        key = f"{backbone}/{'pretrained' if weights else 'scratch'}"
        if weights and not Path(weights).is_file():
            continue
        if left() < 100:
            result["finetune"][key] = dict(skipped=f"{left():.0f} s left of the deadline")
            save()
            continue
        cfg = training.TrainConfig.from_params(params, backbone, weights=weights, **schedule)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            keras.mixed_precision.set_global_policy("float32")  # train_backbone sets its own
            predictions, summary = train_once(cfg, index, args.store, names, tmp)
        run = dict(
            weights=weights and Path(weights).name,
            wall_seconds=round(time.perf_counter() - t0, 1),
            epochs_run=summary["epochs_run"],
        )
        for split, p in predictions.items():
            run.update({f"{split}_{k}": v for k, v in score(p).items()})
        result["finetune"][key] = run
        print(json.dumps({key: run}), flush=True)
        save()
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "pretrain"}, indent=2))


if __name__ == "__main__":
    main()
