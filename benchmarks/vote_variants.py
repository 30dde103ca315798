"""Two cheap ideas for better answers, tried on the pipeline's saved predictions.

1. **A vote with the classical baseline.** The HOG + logistic-regression baseline is
   right on more test *specimens* than the network (its errors are spread over the
   slices, the network's are whole specimens). Does a soft vote of the final model's
   main member and the baseline, ``(1 - w) * network + w * baseline``, do better?
2. **Specimen votes that trust the larger sections.** Sections with little fossil in
   them are read worse (see the book's *Which sections it reads*). Does weighting a
   specimen's vote by each section's fossil area, or keeping only its larger half,
   change the specimen answers?

Every choice is made on the VALIDATION columns; the test columns are reported beside
them, never used. Needs no training: it reads ``models/<backbone>/predictions_*.csv``,
``results/predictions/baseline_hog_lr_*.csv`` and the split index (after ``dvc repro``).

    python benchmarks/vote_variants.py

Writes ``benchmarks/results/vote_variants.json`` naming the machine. Accuracy numbers
are on the VIRTUAL collection: they test the pipeline, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib import config  # noqa: E402
from foramlib.evaluation import baseline, ensemble, metrics  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
RULES = {
    "mean probability (the pipeline's rule)": lambda p, area: p.mean(axis=0),
    "weighted by fossil area": lambda p, area: (p * area[:, None]).sum(axis=0),
    "weighted by fossil area squared": lambda p, area: (p * area[:, None] ** 2).sum(axis=0),
    "larger half of the sections only": lambda p, area: p[area >= np.median(area)].mean(axis=0),
    "one vote per section": lambda p, area: np.bincount(p.argmax(axis=1), minlength=p.shape[1]),
}


def specimen_hits(probs, y, specimens, area, rule) -> tuple[int, int]:
    """Specimens whose combined answer under `rule` is right, and how many there are."""
    hits = [
        rule(probs[specimens == s], area[specimens == s]).argmax() == y[specimens == s][0]
        for s in np.unique(specimens)
    ]
    return int(np.sum(hits)), len(hits)


def scores(probs, y, specimens, area) -> dict:
    right, total = specimen_hits(probs, y, specimens, area, RULES[next(iter(RULES))])
    return dict(
        slice_accuracy=round(float((probs.argmax(axis=1) == y).mean()), 4),
        specimens_right=f"{right}/{total}",
    )


def load(split: str, member: str, models: Path, predictions: Path, index: pd.DataFrame):
    net = metrics.load_predictions(models / member / f"predictions_{split}.csv", name=member)
    hog = metrics.load_predictions(
        predictions / f"baseline_hog_lr_{split}.csv", name="baseline", names=net.names
    )
    metrics.align([net, hog])
    rows = index.set_index("slice_id").loc[net.frame["slice_id"].astype(str)]
    return net, hog, rows["specimen_id"].to_numpy(), rows["fossil_fraction"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument("--models", default="models")
    parser.add_argument("--ensembles", default="results/ensemble")
    parser.add_argument("--predictions", default="results/predictions")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "vote_variants.json")
    )
    args = parser.parse_args()
    params = config.load_params(args.params)
    index = data.load_split_index(args.index)
    final = json.loads(Path("results/metrics.json").read_text("utf-8"))["final"]
    spec_path = Path(args.ensembles) / f"{final}.json"
    member = ensemble.EnsembleSpec.load(spec_path).members[0] if spec_path.is_file() else final
    loaded = {
        s: load(s, member, Path(args.models), Path(args.predictions), index)
        for s in ("val", "test")
    }

    mixes = {}
    for w in WEIGHTS:
        mixes[f"w={w:g}"] = {
            s: scores((1 - w) * net.probs + w * hog.probs, net.y_true, spec, area)
            for s, (net, hog, spec, area) in loaded.items()
        }
    best_w = max(WEIGHTS, key=lambda w: (mixes[f"w={w:g}"]["val"]["slice_accuracy"], -w))

    rules = {}
    for name, rule in RULES.items():
        rules[name] = {}
        for model in (member, baseline.BASELINE_NAME):
            rules[name][model] = {}
            for s, (net, hog, spec, area) in loaded.items():
                probs = net.probs if model == member else hog.probs
                right, total = specimen_hits(probs, net.y_true, spec, area, rule)
                rules[name][model][s] = f"{right}/{total}"

    result = dict(
        benchmark="vote_variants",
        date=today(),
        machine=machine(),
        data=f"{params['data']['source']} collection"
        + (" (synthetic, not the paper's scans)" if params["data"]["source"] == "virtual" else ""),
        final_model=final,
        network=member,
        soft_vote_with_baseline=dict(
            rule="(1 - w) * network + w * HOG baseline probabilities, per slice",
            chosen_on_validation=f"w={best_w:g}",
            **mixes,
        ),
        specimen_vote_rules=rules,
    )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
