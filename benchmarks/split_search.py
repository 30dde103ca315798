"""Time the balanced specimen split on a collection the size of the paper's (goal: <= 60 s).

Builds a specimen table with the paper's Table 2 model counts per genus (every model its
own specimen, one scan each) and seeded per-specimen slice counts that add up to about
each genus's "Total Slices", runs ``search_split`` with its defaults and writes
benchmarks/results/split_search.json naming the machine. Usage:
    python benchmarks/split_search.py [--seed 0] [--data-seed 2024]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402

from foramlib.dataset import split  # noqa: E402
from foramlib.evaluation import paper  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402

GOAL_SECONDS = 60.0


def paper_sized_specimens(seed: int) -> pd.DataFrame:
    """One row per 3D model of paper Table 2; slices per genus sum to about its total."""
    rng = np.random.default_rng(seed)
    rows = []
    for species, (models, _, _, _, total) in paper.TABLE2.items():
        weights = rng.gamma(shape=4.0, size=models)
        slices = np.maximum(np.rint(total * weights / weights.sum()), 1).astype(int)
        for i, n in enumerate(slices, start=1):
            rows.append((f"{species[:4].upper()}{i:02d}", species, 1, int(n)))
    return pd.DataFrame(rows, columns=["specimen_id", "species", "n_volumes", "n_slices"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="search_split seed")
    parser.add_argument("--data-seed", type=int, default=2024, help="slice-count seed")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "split_search.json")
    )
    args = parser.parse_args()
    specimens = paper_sized_specimens(args.data_seed)
    t0 = time.perf_counter()
    result = split.search_split(specimens, seed=args.seed)
    seconds = time.perf_counter() - t0
    t3 = split.table3(result.assignment)
    report = dict(
        benchmark="search_split",
        n_specimens=len(specimens),
        n_genera=int(specimens["species"].nunique()),
        n_slices=int(specimens["n_slices"].sum()),
        fractions=list(result.fractions),
        max_exhaustive=inspect.signature(split.search_split).parameters["max_exhaustive"].default,
        seed=args.seed,
        data_seed=args.data_seed,
        seconds=round(seconds, 2),
        method=result.method,
        n_candidates=result.n_candidates,
        objective=round(result.objective, 4),
        cv_percent={row["Split"]: row["CV (%)"] for _, row in t3.iterrows()},
        total_images={row["Split"]: int(row["Total Images"]) for _, row in t3.iterrows()},
        paper_cv_percent={k: v[1] for k, v in paper.TABLE3.items()},
        goal_seconds=GOAL_SECONDS,
        meets_goal=seconds <= GOAL_SECONDS,
        machine=machine(),
        date=time.strftime("%Y-%m-%d"),
    )
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
