"""The match limit of a finished run: genuine queries kept, everything else let through.

Measures the workspace's limit (``results/match_check.json``, written by the
``calibrate_match`` stage on its own held-out queries) together with the section check
that ``foram match`` also applies (``results/section_check.npz``), on

* **genuine** queries: held-out oblique sections of indexed specimens, drawn on a seed
  stream apart from the calibration's (goal: >= 95 % called reliable), and how often a
  query called reliable has its true specimen and pose;
* the same sections searched **without their own specimen** (``specimens=`` every other
  one): a fossil absent from the collection. The score limit is not meant to catch
  these (a look-alike section of another specimen of the genus can fit well); the
  **specimen margin** is: a reliable match is searched again among the other specimens
  (:func:`foramlib.matching.reliability.runner_up`), and one whose specimen does not
  fit clearly better than the next (under the margin limit) "may be a specimen not in
  the collection". The rows say how often each answer is given, for genuine and absent
  specimens, and how often the genus of the best match is still right;
* inputs that are **not foraminifer sections**
  (:func:`foramlib.inference.section_check.probe_sets`: noise, crops of the pictures
  bundled with scikit-image, sections of unrelated virtual volumes; goal: <= 5 % let
  through), by the limit alone and with the section check.

Every share comes with its 95 % Clopper-Pearson interval.

    python benchmarks/match_check.py                  # after `dvc repro` (or `make demo`)
    python benchmarks/match_check.py --queries 10 --probe-seeds 1   # quick

Writes ``benchmarks/results/match_check.json`` naming the machine. The collection is
VIRTUAL: the numbers test the method, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402
from section_check import share  # noqa: E402

from foramlib.dataset.preprocess import PreprocessError  # noqa: E402
from foramlib.inference import section_check  # noqa: E402
from foramlib.inference.classify import section_refusal  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.matching import index as indexing  # noqa: E402
from foramlib.matching import reliability  # noqa: E402
from foramlib.matching.search import MatchError, match  # noqa: E402

STREAM = 0xBE7C  # the benchmark's queries: a stream apart from the calibration's


def best_match(collection, image, specimens=None):
    """The best match of `image` (None: the matcher refused it)."""
    try:
        return match(collection.index, image, volumes=collection.volumes, top_k=1,
                     specimens=specimens)[0]  # fmt: skip
    except (MatchError, PreprocessError):
        return None


def margin_of(collection, check, image, best, specimens=None):
    """The specimen margin of a reliable `best` (None: not reliable, or no other specimen)."""
    if best is None:
        return None
    verdict, _ = reliability.specimen_verdict(
        check, collection.index, image, best, volumes=collection.volumes, specimens=specimens
    )
    return verdict.margin


def margin_tradeoff(check, present, absent) -> list[dict]:
    """For margin limits kept at other shares of the calibration's margins: how many
    genuine and absent-specimen queries each would call "this specimen"."""
    rows = []
    for keep in (0.95, 0.9, 0.85, 0.8, 0.7):
        limit = reliability.limit_keeping(check.margins, keep)
        rows.append({
            "margin_keep": keep,
            "margin_limit": round(limit, 4),
            "genuine_called_this_specimen": share(
                sum(r["margin"] is not None and r["margin"] >= limit for r in present),
                len(present)),
            "absent_called_this_specimen": share(
                sum(r["margin"] is not None and r["margin"] >= limit for r in absent),
                len(absent)),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--queries", type=int, default=60, help="genuine (and absent) queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-seeds", type=int, default=2, help="probe seeds (1, 2, ...)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "match_check.json")
    )
    args = parser.parse_args()
    ws = Path(args.workspace)
    limit = ws / "results" / "match_check.json"
    check = reliability.load_match_check(limit)
    if check is None:
        raise SystemExit(f"{limit} is missing: run `dvc repro calibrate_match`")
    collection = indexing.load_collection(ws / "data" / "index", ws)
    collection.preload()
    specimens = list(collection.specimens["specimen_id"])
    table = collection.specimens
    genus = dict(zip(table["specimen_id"], table["species"], strict=True))
    out = {
        "what": "match limit of the workspace (results/match_check.json): queries called reliable",
        "machine": machine(),
        "date": today(),
        "check": {"threshold": round(check.threshold, 4), "keep": check.keep,
                  "margin_threshold": None if check.margin_threshold is None
                  else round(check.margin_threshold, 4),
                  "calibration_queries": check.n_queries, "seed": check.seed},
        "goals": {"genuine_kept": ">= 0.95", "other_inputs_accepted": "<= 0.05"},
        "settings": {"queries": args.queries, "seed": args.seed, "probe_seeds": args.probe_seeds},
    }  # fmt: skip

    def save() -> None:
        write_text(args.out, json.dumps(out, indent=2) + "\n")

    rng = np.random.default_rng(np.random.SeedSequence([args.seed, STREAM]))
    present, absent, seconds = [], [], []
    for i in range(args.queries):
        spec = specimens[int(rng.integers(len(specimens)))]
        volume, prepared = collection.volume(spec), collection.prepared(spec)
        truth, image, _ = reliability.draw_query(rng, volume, prepared)
        t0 = time.perf_counter()
        best = best_match(collection, image)
        seconds.append(time.perf_counter() - t0)
        section_ok = section_refusal(image, ws) is None
        margin = margin_of(collection, check, image, best)
        sure = None if margin is None else margin >= check.margin_threshold
        present.append(dict(
            reliable=best is not None and check.verdict(best.scores["combined"]).reliable,
            recovered=best is not None and reliability.pose_recovered(best, spec, truth),
            right_specimen=best is not None and best.specimen_id == spec,
            specimen_sure=bool(sure), specimen_unsure=sure is False, margin=margin,
            section_ok=section_ok,
        ))  # fmt: skip
        others = [s for s in specimens if s != spec]
        other = best_match(collection, image, others)
        margin = margin_of(collection, check, image, other, others)
        sure = None if margin is None else margin >= check.margin_threshold
        absent.append(dict(
            reliable=other is not None and check.verdict(other.scores["combined"]).reliable,
            genus_ok=other is not None and genus[other.specimen_id] == genus[spec],
            specimen_sure=bool(sure), specimen_unsure=sure is False, margin=margin,
            section_ok=section_ok,
        ))  # fmt: skip
        print(f"query {i + 1}/{args.queries}: {present[-1]} absent {absent[-1]}", flush=True)

    def count(rows, *keys):
        return share(sum(all(r[k] for k in keys) for r in rows), len(rows))

    kept = [r for r in present if r["reliable"]]
    out["genuine"] = {
        "called_reliable": count(present, "reliable"),
        "called_reliable_and_a_section": count(present, "reliable", "section_ok"),
        "true_pose_when_reliable": count(kept, "recovered"),
        "true_pose_all": count(present, "recovered"),
        # reliable and this specimen (goal: most genuine queries; each limit keeps 95 %)
        "called_this_specimen": count(present, "specimen_sure"),
        "called_maybe_not_in_collection": count(present, "specimen_unsure"),
        "right_specimen_when_called_this_specimen": count(
            [r for r in present if r["specimen_sure"]], "right_specimen"
        ),
        "seconds_p50": round(float(np.median(seconds)), 2) if seconds else None,
    }
    out["absent_specimen"] = {
        "called_reliable": count(absent, "reliable"),
        # the wrong answer for an absent specimen: a reliable fit named as its specimen
        "called_this_specimen": count(absent, "specimen_sure"),
        "called_maybe_not_in_collection": count(absent, "specimen_unsure"),
        "genus_right": count(absent, "genus_ok"),
        "genus_right_when_reliable": count([r for r in absent if r["reliable"]], "genus_ok"),
        "genus_right_when_maybe_not_in_collection": count(
            [r for r in absent if r["specimen_unsure"]], "genus_ok"
        ),
    }
    if check.margins:
        out["specimen_margin_tradeoff"] = margin_tradeoff(check, present, absent)
    print(json.dumps({k: out[k] for k in ("genuine", "absent_specimen")}, indent=1), flush=True)
    save()

    totals: dict[str, dict[str, int]] = {}
    for seed in range(1, args.probe_seeds + 1):
        probes = section_check.probe_sets(seed, n_noise=10, per_picture=1, per_volume=3)
        for family, images in probes.items():
            t = totals.setdefault(family, {"n": 0, "reliable": 0, "and_section": 0, "refused": 0})
            for image in images:
                best = best_match(collection, image)
                reliable = best is not None and check.verdict(best.scores["combined"]).reliable
                t["n"] += 1
                t["refused"] += best is None
                t["reliable"] += reliable
                t["and_section"] += reliable and section_refusal(image, ws) is None
            print(family, t, flush=True)
    out["not_sections"] = {
        f: {"called_reliable": share(t["reliable"], t["n"]),
            "called_reliable_and_a_section": share(t["and_section"], t["n"]),
            "refused_by_the_matcher": t["refused"]}
        for f, t in totals.items()
    }  # fmt: skip
    summed = {k: sum(t[k] for t in totals.values()) for k in ("n", "reliable", "and_section")}
    out["not_sections_all"] = {
        "called_reliable": share(summed["reliable"], summed["n"]),
        "called_reliable_and_a_section": share(summed["and_section"], summed["n"]),
    }
    print(json.dumps(out["not_sections_all"]), flush=True)
    save()


if __name__ == "__main__":
    main()
