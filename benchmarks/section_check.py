"""The section check of a finished run: genuine sections kept, everything else let through.

Measures the workspace's own check (``results/section_check.npz``, written by the
``evaluate`` stage: fitted on the training slices, its limit set on the validation
slices) on

* the **test** slices (genuine sections of unseen specimens; goal: >= 95 % kept), and
  per genus;
* inputs that are **not foraminifer sections**, over several probe seeds (goal: <= 5 %
  let through): noise, crops of the pictures bundled with scikit-image, sections of
  unrelated virtual volumes (:func:`foramlib.inference.section_check.probe_sets`);
* sections of **foraminifera of other genera**: virtual generic shells (the pretraining
  corpus' recipes, no genus of the collection), cut by the collection's slicer. These
  ARE foraminifer sections; the row shows that the check does not stand in for "not one
  of these genera", and how often the workspace's genus check
  (``results/genus_check.npz``, :mod:`foramlib.inference.genus_check`) and the
  classifier's uncertainty flag catch them, per section and per scan (the genus check
  also on the test slices and specimens, for what it keeps);
* the time of one check.

Every share comes with its 95 % Clopper-Pearson interval.

    python benchmarks/section_check.py            # after `dvc repro` (or `make demo`)
    python benchmarks/section_check.py --seeds 1 --shell-taxa 4   # quick

Writes ``benchmarks/results/section_check.json`` naming the machine. The collection is
VIRTUAL: the numbers test the method, not real fossils.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib.dataset import slicing  # noqa: E402
from foramlib.evaluation import baseline  # noqa: E402
from foramlib.inference import classify, genus_check, scan, section_check  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.learn import loader as data


def share(k: int, n: int) -> dict:
    """k of n as a share with its 95 % Clopper-Pearson interval."""
    if n == 0:
        return {"k": 0, "n": 0, "share": None, "ci95": None}
    ci = binomtest(int(k), int(n)).proportion_ci(0.95)
    return {"k": int(k), "n": int(n), "share": round(float(k / n), 4),
            "ci95": [round(ci.low, 4), round(ci.high, 4)]}  # fmt: skip


def other_genera(workspace: Path, n_taxa: int, specimens: int, per_specimen: int, n_jobs: int):
    """Sections of generic shells (no genus of the collection), cut like the collection,
    and the shell each comes from."""
    from foramlib.learn.pretraining import CorpusConfig, build_corpus, load_corpus

    cut, _ = slicing.trained_slicing(workspace)
    config = CorpusConfig(
        n_taxa=n_taxa, specimens_per_taxon=specimens, slices_per_specimen=per_specimen,
        seed=4242,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        build_corpus(Path(tmp) / "shells", config, cut, n_jobs=n_jobs, progress=None)
        index, arrays = load_corpus(Path(tmp) / "shells")
        images = [arrays[a][r] for a, r in zip(index["array"], index["row"], strict=True)]
        return np.stack(images), index["specimen_id"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--seeds", type=int, default=5, help="probe seeds (1, 2, ...)")
    parser.add_argument("--shell-taxa", type=int, default=12)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "section_check.json")
    )
    args = parser.parse_args()
    ws = Path(args.workspace)
    clf = classify.Classifier.from_workspace(ws)
    check = clf.section_check
    if check is None:
        raise SystemExit(f"no usable section check: {clf.sources['section_check']}")
    base = clf.preprocess
    out = {
        "what": "section check of the workspace (results/section_check.npz): inputs kept",
        "machine": machine(),
        "date": today(),
        "check": {"keep": check.keep, "threshold": round(check.threshold, 3), **check.info},
        "goals": {"genuine_kept": ">= 0.95", "other_inputs_accepted": "<= 0.05"},
    }

    def save() -> None:
        write_text(args.out, json.dumps(out, indent=2) + "\n")

    # --- genuine: the test split (never used to fit or set the check)
    index, arrays = slicing.load_slices(
        ws / "data" / "slices", data.load_split_index(ws / "data" / "split" / "index.csv")
    )
    test, rows = baseline.split_images(index, arrays, "test")
    t0 = time.perf_counter()
    features = section_check.features_of(test)
    seconds = time.perf_counter() - t0
    kept = check.accepts(features)
    out["test"] = share(kept.sum(), len(kept))
    out["test_per_genus"] = {
        g: share(kept[m].sum(), m.sum())
        for g in sorted(rows["species"].unique())
        for m in [(rows["species"] == g).to_numpy()]
    }
    out["ms_per_check"] = round(1000 * seconds / len(test), 2)
    print("test kept", out["test"], flush=True)
    save()

    # --- not foraminifer sections, over several probe seeds
    totals: dict[str, dict[str, int]] = {}
    for seed in range(1, args.seeds + 1):
        for family, images in section_check.probe_sets(seed).items():
            c = section_check.screen(check, images, base)
            t = totals.setdefault(family, {"n": 0, "accepted": 0, "colour": 0, "unreadable": 0})
            for key in t:
                t[key] += c[key]
    out["not_sections"] = {
        f: {**share(t["accepted"], t["n"]), "colour_refused": t["colour"],
            "unreadable": t["unreadable"]}
        for f, t in totals.items()
    }  # fmt: skip
    for family, row in out["not_sections"].items():
        print(family, row, flush=True)
    save()

    # --- foraminifera of other genera: sections, so they should pass. What guards
    # against them is the genus check and the uncertainty rules, each measured on the
    # genuine test sections and specimens too (what it costs them)
    genus = clf.genus_check
    if genus is None:
        print(f"no usable genus check: {clf.sources['genus_check']}", flush=True)
    try:
        specimen_rule = scan.calibrate_specimens(clf.spec, ws / "models")
    except classify.ArtefactError:
        specimen_rule = None

    def guarded(images, specimens) -> dict:
        """Per section and per scan: kept by the genus check, answered confidently (the
        calibrated uncertainty rules), and both."""
        probs = clf.predict_many(images)
        confident = np.array([clf.calibration is not None and not clf.calibration.uncertain(p)
                              for p in probs.max(axis=1)])  # fmt: skip
        votes = pd.DataFrame(probs).groupby(np.asarray(specimens)).mean().max(axis=1)
        sure = np.array([specimen_rule is not None and not specimen_rule.uncertain(p)
                         for p in votes])  # fmt: skip
        row = {
            "confident_sections": share(confident.sum(), len(confident)),
            "confident_scans": share(sure.sum(), len(sure)),
        }
        if genus is not None:
            novelty = genus.novelty(clf.features(images))
            known = novelty <= genus.threshold
            scans = (genus_check.scan_novelty(novelty, specimens) <= genus.threshold).to_numpy()
            row.update(
                genus_check_sections=share(known.sum(), len(known)),
                genus_check_scans=share(scans.sum(), len(scans)),
                confident_and_genus_check_sections=share((known & confident).sum(), len(known)),
                confident_and_genus_check_scans=share((scans & sure).sum(), len(scans)),
            )
        return row

    if genus is not None:
        out["genus_check"] = {"k": genus.k, "keep": genus.keep, "member": genus.member,
                              "threshold": round(genus.threshold, 4)}  # fmt: skip
    out["guards_test"] = guarded(test, rows["specimen_id"].to_numpy())
    print("test", out["guards_test"], flush=True)
    save()
    if args.shell_taxa >= 2:
        shells, shell_ids = other_genera(ws, args.shell_taxa, 2, 16, args.n_jobs)
        passed = check.accepts(section_check.features_of(shells))
        out["other_genera"] = {
            "passed_section_check": share(passed.sum(), len(passed)),
            **guarded(shells, shell_ids),
            "note": "generic virtual shells, no genus of the collection: foraminifer-like "
            "sections, expected to pass the section check; a guard should keep them from "
            "a confident answer",
        }
        print("other genera", out["other_genera"], flush=True)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
