"""The ``calibrate_match`` stage: the limit under which a 3D match is "no reliable match".

Held-out sections of indexed specimens (random oblique planes, rescaled, noisy, cropped;
a seed stream of their own) are matched against the index; the limit is set on their
best scores (:mod:`foramlib.matching.reliability`) and written where ``foram match`` and
the dashboard read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from foramlib.pipeline._config import StageConfig, params_field

__all__ = ["CalibrateMatchStageConfig", "CalibrateMatchStageResult", "run"]


def _share(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"match_check.keep must be a share in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CalibrateMatchStageConfig(StageConfig):
    """What the ``calibrate_match`` stage reads and writes.

    Parameters
    ----------
    seed : int
        Seeds the calibration queries (a stream apart from the benchmark's).
    queries : int
        ``match_check.queries``: held-out sections matched.
    keep : float
        ``match_check.keep``: share of them the limit calls reliable.
    index_dir, out : str
        The index folder in; the check (JSON) out.

    Examples
    --------
    >>> params = {"seed": 1, "match_check": {"queries": 40, "keep": 0.95}}
    >>> CalibrateMatchStageConfig.from_params(params).queries
    40
    >>> CalibrateMatchStageConfig(keep=1.5)
    Traceback (most recent call last):
    ...
    ValueError: match_check.keep must be a share in (0, 1], got 1.5
    """

    stage = "calibrate_match"
    seed: int = params_field("seed", default=0)
    queries: int = params_field("match_check.queries", default=100)
    keep: float = params_field("match_check.keep", default=0.95, normalize=_share)
    index_dir: str = "data/index"
    out: str = "results/match_check.json"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1:
            raise ValueError(f"match_check.queries must be an integer >= 1, got {self.queries!r}")
        _share(self.keep)


@dataclass(frozen=True)
class CalibrateMatchStageResult:
    """The stage's outputs, for display."""

    check: object  # foramlib.matching.reliability.MatchCheck
    queries: pd.DataFrame  # one row per calibration query
    seconds: float
    path: Path


def run(
    config: CalibrateMatchStageConfig, progress: Callable[[float, str], None] | None = None
) -> CalibrateMatchStageResult:
    """Match the calibration queries, fit the limit and write it (atomically)."""
    from foramlib.matching import index as indexing
    from foramlib.matching import reliability

    collection = indexing.load_collection(config.index_dir)
    collection.preload()
    t0 = time.perf_counter()
    check, rows = reliability.calibrate(
        collection, config.queries, seed=config.seed, keep=config.keep, progress=progress
    )
    seconds = time.perf_counter() - t0
    path = check.save(config.out)
    frame = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="query"))
    return CalibrateMatchStageResult(check, frame, seconds, path)
