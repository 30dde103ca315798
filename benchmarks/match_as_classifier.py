"""Could the 3D matcher classify? Nearest training specimen against the network.

The matching chapter finds that a section of a specimen left out of the index still
tends to land in a specimen of its own genus (31 of 40). That index held every other
specimen, validation and test ones included. As a classifier the matcher may only see
the **training** specimens: this benchmark matches sections of the validation and test
specimens against those alone (``match(..., specimens=<training ids>)``, the full
search with its refinement and retries, no time budget) and takes the genus of the
best-fitting training specimen as the answer. On the same sections it reports the
network (the final model's main member, ``models/<member>/predictions_<split>.csv``)
and the HOG + logistic-regression baseline (``results/predictions/``), per section and
per specimen (the matcher: the most frequent top-1 genus of its sections, ties to the
higher summed score; the models: their mean probability over the same sections).

The validation columns decide whether the idea is worth building; the test columns are
reported beside them. Needs the pipeline's outputs (``dvc repro index`` and the train,
ensemble and evaluate stages)::

    python benchmarks/match_as_classifier.py --per-specimen 3

Writes ``benchmarks/results/match_as_classifier.json`` naming the machine. Accuracy
numbers are on the VIRTUAL collection: they test the pipeline, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib import config  # noqa: E402
from foramlib.evaluation import baseline, ensemble, metrics  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.matching.index import load_collection  # noqa: E402
from foramlib.matching.search import match  # noqa: E402


def sample_sections(index: pd.DataFrame, split: str, per_specimen: int, seeds) -> dict:
    """For each seed, `per_specimen` sections of every specimen of `split`, drawn without
    replacement and never a section that an earlier seed drew (so adding a seed keeps
    the earlier samples as they were)."""
    drawn, samples = set(), {}
    for seed in seeds:
        rng, picked = np.random.default_rng(seed), []
        for _, rows in index[index["split"] == split].groupby("specimen_id", sort=True):
            rows = rows[~rows["slice_id"].isin(drawn)]
            take = rng.choice(len(rows), size=min(per_specimen, len(rows)), replace=False)
            picked.append(rows.iloc[np.sort(take)])
        samples[seed] = pd.concat(picked, ignore_index=True)
        drawn |= set(samples[seed]["slice_id"])
    return samples


def specimen_vote(frame: pd.DataFrame) -> pd.Series:
    """The matcher's answer per specimen: its most frequent genus, ties to the higher
    summed score."""
    tally = frame.groupby(["specimen_id", "matched"])["score"].agg(["size", "sum"])
    best = tally.sort_values(["size", "sum"], ascending=False).reset_index()
    return best.drop_duplicates("specimen_id").set_index("specimen_id")["matched"]


def rows_of(preds: metrics.Predictions, slice_ids) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities and true class indices of `preds` for these slices, in order."""
    at = pd.Series(np.arange(len(preds.frame)), index=preds.frame["slice_id"].astype(str))
    pos = at.loc[[str(i) for i in slice_ids]].to_numpy()
    return preds.probs[pos].copy(), preds.y_true[pos]


def scores(probs: np.ndarray, y: np.ndarray, specimens: np.ndarray, names=None) -> dict:
    """Section accuracy, and specimens right by their mean probability
    (:func:`foramlib.evaluation.metrics.specimen_votes`, the evaluate stage's vote)."""
    names = list(names) if names is not None else [str(i) for i in range(probs.shape[1])]
    preds = metrics.Predictions.from_arrays("m", probs, y, names, specimen_ids=specimens)
    votes = metrics.specimen_votes(preds)
    return dict(
        section_accuracy=round(float((preds.y_pred == preds.y_true).mean()), 4),
        specimens_right=f"{int((votes['true'] == votes['predicted']).sum())}/{len(votes)}",
    )


def combined_scores(preds: metrics.Predictions, frame: pd.DataFrame, weight: float) -> dict:
    """Accuracy of the network's probabilities plus `weight` on the matcher's genus."""
    probs, y = rows_of(preds, frame["slice_id"])
    column = {name: i for i, name in enumerate(preds.names)}
    for i, genus in enumerate(frame["matched"]):
        if genus in column:
            probs[i, column[genus]] += weight
    return scores(probs, y, frame["specimen_id"].to_numpy(), preds.names)


WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def match_sections(collection, reference, sections: pd.DataFrame, slices: Path, label: str):
    """The best-fitting training specimen of every section, with its score and time."""
    answers = []
    for n, row in enumerate(sections.itertuples(index=False), 1):
        image = np.load(slices / row.array, mmap_mode="r")[int(row.row)]
        t0 = time.perf_counter()
        found = match(
            collection.index,
            np.asarray(image),
            top_k=1,
            specimens=reference,
            volumes=collection.volumes,
        )
        best = found[0] if found else None  # no match counts as a wrong answer
        answers.append(
            dict(
                slice_id=row.slice_id,
                specimen_id=row.specimen_id,
                true=row.species,
                matched=best.species if best else "",
                matched_specimen=best.specimen_id if best else "",
                score=round(float(best.scores["combined"]), 4) if best else 0.0,
                seconds=round(time.perf_counter() - t0, 2),
            )
        )
        print(f"{label} {n}/{len(sections)}: {answers[-1]}", flush=True)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", default="data/split/index.csv")
    parser.add_argument("--match-index", default="data/index")
    parser.add_argument("--slices", default="data/slices")
    parser.add_argument("--per-specimen", type=int, default=3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="one sample of sections per seed"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the samples that --out already holds"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "match_as_classifier.json")
    )
    args = parser.parse_args()
    params = config.load_params(args.params)
    index = data.load_split_index(args.index)
    specimens = pd.read_csv(Path(args.index).with_name("specimens.csv"), dtype=str)
    reference = sorted(specimens.loc[specimens["split"] == "train", "specimen_id"])
    collection = load_collection(args.match_index, ".")
    missing = sorted(set(reference) - set(collection.specimens["specimen_id"]))
    if missing:
        raise SystemExit(f"{args.match_index} lacks training specimen(s) {missing[:5]}")
    final = json.loads(Path("results/metrics.json").read_text("utf-8"))["final"]
    spec_path = Path("results/ensemble") / f"{final}.json"
    member = ensemble.EnsembleSpec.load(spec_path).members[0] if spec_path.is_file() else final
    kept = {}
    if args.resume and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text("utf-8"))
        if old.get("per_specimen") == args.per_specimen:
            for split in ("val", "test"):
                for answer in old.get(split, {}).get("answers", []):
                    kept.setdefault((split, answer["sample_seed"]), []).append(answer)

    result = dict(
        benchmark="match_as_classifier",
        date=today(),
        machine=machine(),
        data=f"{params['data']['source']} collection"
        + (" (synthetic, not the paper's scans)" if params["data"]["source"] == "virtual" else ""),
        reference="the training specimens only (one scan each, from the 3D index)",
        per_specimen=args.per_specimen,
        seeds=args.seeds,
        network=member,
        baseline_name=baseline.BASELINE_NAME,
    )
    loaded, frames = {}, {}
    for split in ("val", "test"):
        net = metrics.load_model_predictions(Path("models") / member, split)
        hog = metrics.load_predictions(
            Path("results/predictions") / f"baseline_hog_lr_{split}.csv",
            name="baseline",
            names=net.names,
        )
        loaded[split] = net, hog
        answers = []
        samples = sample_sections(index, split, args.per_specimen, args.seeds)
        for seed, sections in samples.items():
            if (split, seed) in kept:
                answers += kept[(split, seed)]
                continue
            found = match_sections(
                collection, reference, sections, Path(args.slices), f"{split} seed {seed}"
            )
            answers += [dict(a, sample_seed=seed) for a in found]
            result[split] = dict(answers=answers)  # partial: --resume goes on from here
            write_text(args.out, json.dumps(result, indent=2) + "\n")
        frame = frames[split] = pd.DataFrame(answers)
        votes = specimen_vote(frame)
        truth = frame.drop_duplicates("specimen_id").set_index("specimen_id")["true"]
        specs = frame["specimen_id"].to_numpy()
        net_probs, y = rows_of(net, frame["slice_id"])
        right_m = (frame["matched"] == frame["true"]).to_numpy()
        right_n = net_probs.argmax(axis=1) == y
        result[split] = dict(
            sections=len(frame),
            specimens=int(frame["specimen_id"].nunique()),
            matcher=dict(
                section_accuracy=round(float(right_m.mean()), 4),
                specimens_right=f"{int((votes == truth.loc[votes.index]).sum())}/{len(votes)}",
                seconds_median=round(float(frame["seconds"].median()), 2),
                seconds_p95=round(float(frame["seconds"].quantile(0.95)), 2),
            ),
            network=scores(net_probs, y, specs, net.names),
            baseline=scores(*rows_of(hog, frame["slice_id"]), specs, hog.names),
            sections_right=dict(
                both=int((right_m & right_n).sum()),
                matcher_only=int((right_m & ~right_n).sum()),
                network_only=int((~right_m & right_n).sum()),
                neither=int((~right_m & ~right_n).sum()),
            ),
            answers=answers,
        )
    mixes = {
        f"w={w:g}": {s: combined_scores(loaded[s][0], frames[s], w) for s in ("val", "test")}
        for w in WEIGHTS
    }
    best = max(WEIGHTS, key=lambda w: (mixes[f"w={w:g}"]["val"]["section_accuracy"], -w))
    result["network_plus_matcher"] = dict(
        rule="network probabilities + w on the matched genus, per section; specimens: mean",
        chosen_on_validation=f"w={best:g}",
        **mixes,
    )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("val", "test")}
    for split in ("val", "test"):
        summary[split] = {k: v for k, v in result[split].items() if k != "answers"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
