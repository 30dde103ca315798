"""The ``split`` stage: whole specimens to training, validation and test (paper §2.1).

No slice of a specimen may sit in two splits; the assignment is searched so that the
splits' shares of slices come close to ``split.fractions`` with every genus in each.

Examples
--------
>>> cfg = SplitStageConfig.from_params(
...     {"seed": 1, "data": {"raw_dir": "raw"},
...      "split": {"fractions": [0.4, 0.13, 0.47], "max_exhaustive": 10, "restarts": 2}})
>>> cfg.fractions, cfg.out_dir
((0.4, 0.13, 0.47), 'data/split')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from foramlib.pipeline._config import StageConfig, params_field

__all__ = ["SplitStageConfig", "SplitStageResult", "run"]


def _fractions(value: Any) -> tuple[float, ...]:
    try:
        fractions = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3:
        raise ValueError(
            f"split.fractions = {value!r} is invalid: expected three shares (train, val, test)"
        )
    return fractions


@dataclass(frozen=True)
class SplitStageConfig(StageConfig):
    """What the ``split`` stage reads and writes.

    Parameters
    ----------
    seed : int
        Tie-breaking and the fallback search's restarts.
    raw_dir : str
        ``data.raw_dir``: the folder the curated manifest's files are in.
    fractions : tuple of float
        Target shares of slices in train, validation and test.
    max_exhaustive, restarts : int
        Exhaustive search up to this many joint assignments; coordinate-descent
        restarts beyond that.
    curated, slices, out_dir, tables_dir : str
        The curated manifest and the slice store in; the split (``specimens.csv``,
        ``index.csv``, ``split.json``) and Tables 2–3 out.
    """

    stage = "split"
    seed: int = params_field("seed", default=0)
    raw_dir: str = params_field("data.raw_dir", default="data/virtual")
    fractions: tuple[float, ...] = params_field(
        "split.fractions", default=(0.40, 0.13, 0.47), normalize=_fractions
    )
    max_exhaustive: int = params_field("split.max_exhaustive", default=200_000)
    restarts: int = params_field("split.restarts", default=20)
    curated: str = "data/curated/manifest.csv"
    slices: str = "data/slices"
    out_dir: str = "data/split"
    tables_dir: str = "results/tables"


@dataclass(frozen=True)
class SplitStageResult:
    """The stage's outputs, for display."""

    summary: str  # one line on the search
    assignment: pd.DataFrame  # one row per specimen with its split
    index: pd.DataFrame  # the slice index with each slice's split
    table2: pd.DataFrame
    table3: pd.DataFrame


def run(config: SplitStageConfig) -> SplitStageResult:
    """Search the specimen split and write it (folder replaced atomically) with Tables
    2 and 3 of this run and of the paper."""
    from foramlib.dataset import curation, split
    from foramlib.dataset.slicing import load_reserve
    from foramlib.evaluation import paper
    from foramlib.io.atomic import atomic_dir, write_csv

    manifest = curation.read_curated(config.curated, config.raw_dir)
    slices = pd.read_csv(Path(config.slices) / "index.csv", dtype={"specimen_id": str})
    specimens = split.specimen_table(slices, manifest)
    result = split.search_split(
        specimens,
        list(config.fractions),
        seed=config.seed,
        max_exhaustive=config.max_exhaustive,
        restarts=config.restarts,
    )
    summary = (
        f"{result.method} search over {result.n_candidates:,} joint assignments in "
        f"{result.seconds:.1f} s; objective {result.objective:.3f}"
    )
    assignment = result.assignment
    index = split.split_slices(slices, assignment)
    n_ordinary = len(index)
    index = split.add_training_reserve(index, load_reserve(config.slices))
    record = dict(
        method=result.method,
        objective=result.objective,
        n_candidates=result.n_candidates,
        seed=result.seed,
        fractions=list(result.fractions),
    )
    if len(index) > n_ordinary:  # only then: a split without a reserve stays as it was
        record["train_reserve_slices"] = len(index) - n_ordinary
        summary += f"; {len(index) - n_ordinary} reserve sections added to training"
    with atomic_dir(config.out_dir) as tmp:
        assignment.to_csv(Path(tmp) / "specimens.csv", index=False)
        index.to_csv(Path(tmp) / "index.csv", index=False)
        (Path(tmp) / "split.json").write_text(json.dumps(record, indent=2))
    table2, table3 = split.table2(assignment), split.table3(assignment)
    for name, table in [
        ("table2", table2),
        ("table3", table3),
        ("table2_paper", paper.table2()),
        ("table3_paper", paper.table3()),
    ]:
        write_csv(table, Path(config.tables_dir) / f"{name}.csv")
    return SplitStageResult(
        summary=summary, assignment=assignment, index=index, table2=table2, table3=table3
    )
