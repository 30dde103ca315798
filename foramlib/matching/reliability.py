"""Is a match reliable? A limit on the matcher's score, calibrated on held-out queries.

:func:`foramlib.matching.search.match` always returns its closest sections, whatever it
is shown: a section of a fossil that is not in the collection, or one the search
misread, still gets a "best" specimen and pose. This module gives the separate answer
*"no reliable match"*:

* :func:`draw_query`: a held-out query with a known answer: a section of an indexed
  specimen along a random oblique plane (not one of the index's candidate planes),
  turned in its plane, rescaled by up to ±10 %, with noise and a partial crop, as a
  user's export of a scan would be;
* :func:`calibrate`: draws such queries with their own seed stream (never the
  benchmark's), matches them and sets the limit at the ``1 - keep`` quantile of their
  best ``combined`` scores, so about `keep` of genuine sections of indexed specimens
  are called reliable;
* :class:`MatchCheck`: the limit with what it was set on, saved as JSON; its
  :meth:`~MatchCheck.verdict` words the answer.

What the limit does not do: a section of a fossil absent from the collection often
finds a look-alike section of another specimen of its genus that scores above the
limit (measured in ``benchmarks/match_check.py``); the check tells weak matches from
strong ones, not whether the specimen itself is in the collection. Inputs that are not
foraminifer sections at all are the section check's
(:mod:`foramlib.inference.section_check`).

Examples
--------
>>> check = fit_match_check([0.9, 0.85, 0.95, 0.6, 0.92], keep=0.8)
>>> check.threshold
0.85
>>> check.verdict(0.7).reliable, check.verdict(0.9).reliable
(False, True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from foramlib.dataset.slicing import Plane, extract_slice
from foramlib.io.atomic import write_text

__all__ = [
    "DEFAULT_KEEP",
    "MatchCheck",
    "MatchCheckError",
    "MatchVerdict",
    "calibrate",
    "draw_query",
    "fit_match_check",
    "load_match_check",
]

DEFAULT_KEEP = 0.95
FORMAT = 1
# a stream of its own: calibration queries never repeat the benchmark's (seeds 0..k)
_STREAM = 0x3A7C


class MatchCheckError(ValueError):
    """A match check that cannot be fitted or read (names the file or the value)."""


@dataclass(frozen=True)
class MatchVerdict:
    """The answer for one query: ``reliable`` and a sentence saying why."""

    reliable: bool
    score: float
    threshold: float
    message: str


@dataclass(frozen=True)
class MatchCheck:
    """A limit on the best match's ``combined`` score, and what it was set on.

    Attributes
    ----------
    threshold : float
        Best matches scoring below it are "no reliable match".
    keep : float
        Share of the calibration queries at or above the limit (the target).
    scores : tuple of float
        The calibration queries' best scores (sorted).
    recovered : tuple of bool
        Whether each calibration query's best match was its true specimen and pose
        (normal within 10°, offset within 3 voxels), in the order of `scores`.
    seed : int
        The seed the queries were drawn with.
    refused : int
        Calibration queries the matcher could not read (no fossil found in the
        section): not among `scores`.
    """

    threshold: float
    keep: float
    scores: tuple[float, ...]
    recovered: tuple[bool, ...] = ()
    seed: int = 0
    refused: int = 0

    @property
    def n_queries(self) -> int:
        return len(self.scores)

    def verdict(self, score: float) -> MatchVerdict:
        """The verdict on a best match scoring `score` (its ``combined``)."""
        score = float(score)
        basis = (
            f"the limit {self.threshold:.2f} kept {self.kept_share():.0%} of "
            f"{self.n_queries} held-out sections of indexed specimens"
        )
        if score >= self.threshold:
            return MatchVerdict(True, score, self.threshold, f"best score {score:.2f}; {basis}")
        return MatchVerdict(
            False,
            score,
            self.threshold,
            f"no reliable match: the best score {score:.2f} is under {basis}; the "
            "fossil may not be in the collection, or the section may be too damaged, "
            "noisy or unlike a micro-CT section to place",
        )

    def kept_share(self) -> float:
        """Share of the calibration queries the limit calls reliable."""
        return float(np.mean(np.asarray(self.scores) >= self.threshold))

    def precision(self) -> float | None:
        """Share of the calibration queries called reliable whose pose was right."""
        if not self.recovered:
            return None
        ok = np.asarray(self.recovered, bool)[np.asarray(self.scores) >= self.threshold]
        return float(ok.mean()) if ok.size else None

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path) -> Path:
        """Write the check as JSON (atomically)."""
        return write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def fit_match_check(
    scores: Sequence[float],
    keep: float = DEFAULT_KEEP,
    *,
    recovered: Sequence[bool] = (),
    seed: int = 0,
) -> MatchCheck:
    """The limit that keeps `keep` of the genuine queries' best `scores`.

    The limit is the highest score with at least `keep` of `scores` at or above it.

    Raises
    ------
    MatchCheckError
        For `keep` outside (0, 1], no scores, a score that is not finite, or
        `recovered` of another length.

    Examples
    --------
    >>> fit_match_check([0.5, 0.7, 0.9, 0.8], keep=0.75).threshold
    0.7
    >>> fit_match_check([], keep=0.9)
    Traceback (most recent call last):
    ...
    foramlib.matching.reliability.MatchCheckError: no calibration scores to set a match limit on
    """
    if not (isinstance(keep, int | float) and 0 < keep <= 1):
        raise MatchCheckError(f"keep must be a share in (0, 1], got {keep!r}")
    arr = np.asarray(scores, dtype=float)
    if arr.size == 0:
        raise MatchCheckError("no calibration scores to set a match limit on")
    if not np.all(np.isfinite(arr)):
        raise MatchCheckError(f"calibration scores must be finite numbers, got {arr.tolist()}")
    if recovered and len(recovered) != arr.size:
        raise MatchCheckError(
            f"recovered has {len(recovered)} entries for {arr.size} scores; give one per query"
        )
    order = np.argsort(arr, kind="stable")[::-1]  # best first
    # the k-th best, k the fewest queries that make `keep` of them
    k = max(1, math.ceil(keep * arr.size - 1e-9))
    threshold = float(arr[order[k - 1]])
    rec = tuple(bool(recovered[i]) for i in order[::-1]) if recovered else ()
    return MatchCheck(threshold, float(keep), tuple(float(arr[i]) for i in order[::-1]), rec, seed)


def load_match_check(path) -> MatchCheck | None:
    """Read a check written by :meth:`MatchCheck.save`; None if `path` does not exist.

    Raises
    ------
    MatchCheckError
        If the file is not a match check of this format (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise MatchCheckError(
                f"{path}: match check format {raw.get('format')!r}, expected {FORMAT}; "
                "rerun the calibrate_match stage"
            )
        check = MatchCheck(
            threshold=float(raw["threshold"]),
            keep=float(raw["keep"]),
            scores=tuple(float(s) for s in raw["scores"]),
            recovered=tuple(bool(r) for r in raw.get("recovered", ())),
            seed=int(raw.get("seed", 0)),
            refused=int(raw.get("refused", 0)),
        )
    except MatchCheckError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise MatchCheckError(f"{path}: not a match check ({err})") from None
    if not (math.isfinite(check.threshold) and check.scores):
        raise MatchCheckError(f"{path}: the match check has no finite limit or no scores")
    return check


def draw_query(rng: np.random.Generator, volume: np.ndarray, prepared):
    """A held-out query of `volume` with its true plane.

    Parameters
    ----------
    rng : numpy.random.Generator
    volume : ndarray
        The specimen's raw volume.
    prepared : foramlib.matching.search.PreparedVolume
        Its prepared copy (gives the fossil's voxels and the field of view).

    Returns
    -------
    truth : Plane
        The plane cut (offset from the fossil's centre, in voxels).
    image : ndarray
        The section: float32, rescaled by 0.9–1.1, noise σ 0.05, up to ~8 % cropped a side.
    placement : tuple
        (crop top, crop left, voxels per pixel) of the image in the section's frame.
    """
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    proj = (prepared.points - prepared.centre) @ n
    lo, hi = np.percentile(proj, [20, 80])
    plane = Plane(tuple(n), float(rng.uniform(lo, hi)), float(rng.uniform(0, 360)))
    sec = extract_slice(volume, plane, size=prepared.window)
    sec = sec + rng.normal(0, 0.05, sec.shape).astype(np.float32)
    side = int(round(sec.shape[0] * rng.uniform(0.9, 1.1)))
    sec = cv2.resize(sec, (side, side), interpolation=cv2.INTER_LINEAR)
    c = rng.integers(0, max(2, side // 12), size=4)  # partial crop, up to ~8 % a side
    placement = (int(c[0]), int(c[2]), prepared.window / side)
    return plane, sec[c[0] : side - c[1], c[2] : side - c[3]], placement


def pose_recovered(match, specimen_id: str, truth: Plane, max_deg=10.0, max_vox=3.0) -> bool:
    """The match names `specimen_id` and its plane is within the given errors of `truth`."""
    from foramlib.matching.search import plane_error

    angle, offset = plane_error(match.normal, truth.normal, match.offset, truth.offset)
    return bool(match.specimen_id == specimen_id and angle <= max_deg and offset <= max_vox)


def calibrate(
    collection,
    n_queries: int,
    *,
    seed: int = 0,
    keep: float = DEFAULT_KEEP,
    progress: Callable[[float, str], None] | None = None,
    **match_kwargs,
) -> tuple[MatchCheck, list[dict]]:
    """Match `n_queries` held-out sections of indexed specimens; fit the limit.

    Parameters
    ----------
    collection : foramlib.matching.index.Collection
    n_queries : int
        Queries drawn (specimens at random, with repeats).
    seed : int
        Seeds the draw (on a stream of its own).
    keep : float
        Share of the queries the limit keeps.
    progress : callable, optional
        ``progress(fraction, message)``.
    **match_kwargs
        Passed to :func:`foramlib.matching.search.match` (search settings).

    Returns
    -------
    MatchCheck, list of dict
        The check, and one row per query (specimen, best match, score, recovered; a
        query the matcher refused, e.g. a section too small to show the fossil, has no
        match and its reason under ``refused``, and is left out of the fit).

    Raises
    ------
    MatchCheckError
        If `n_queries` is not a positive integer, or the matcher refused every query.
    """
    from dataclasses import replace

    from foramlib.dataset.preprocess import PreprocessError
    from foramlib.matching.search import MatchError, match

    if not isinstance(n_queries, int | np.integer) or n_queries < 1:
        raise MatchCheckError(f"n_queries must be an integer >= 1, got {n_queries!r}")
    report = progress or (lambda fraction, message: None)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM]))
    specimens = list(collection.specimens["specimen_id"])
    rows = []
    for i in range(int(n_queries)):
        spec = specimens[int(rng.integers(len(specimens)))]
        truth, image, _ = draw_query(rng, collection.volume(spec), collection.prepared(spec))
        volumes = collection.volumes
        try:
            best = match(collection.index, image, volumes=volumes, top_k=1, **match_kwargs)[0]
        except (MatchError, PreprocessError) as err:
            rows.append(dict(specimen_id=spec, matched=None, score=None, recovered=False,
                             refused=str(err)))  # fmt: skip
            report((i + 1) / n_queries, f"query {i + 1}/{n_queries}: {spec} refused ({err})")
            continue
        rows.append(
            dict(
                specimen_id=spec,
                matched=best.specimen_id,
                score=round(float(best.scores["combined"]), 6),
                recovered=pose_recovered(best, spec, truth),
                refused=None,
            )
        )
        report((i + 1) / n_queries, f"query {i + 1}/{n_queries}: {spec} -> {best.specimen_id}")
    answered = [r for r in rows if r["refused"] is None]
    if not answered:
        raise MatchCheckError(
            f"the matcher refused all {n_queries} calibration queries "
            f"(first: {rows[0]['refused']}); is the index built from these volumes?"
        )
    check = fit_match_check(
        [r["score"] for r in answered],
        keep,
        recovered=[r["recovered"] for r in answered],
        seed=seed,
    )
    return replace(check, refused=len(rows) - len(answered)), rows
