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
* :func:`runner_up`: the best match among the *other* specimens, once the best one is
  known; the *specimen margin* is how much better the best specimen fits than any
  other;
* :class:`MatchCheck`: the limits with what they were set on, saved as JSON; its
  :meth:`~MatchCheck.verdict` words the answer.

Two limits, two claims. The score limit says whether the fit is genuine at all. A
section of a fossil absent from the collection often finds a look-alike section of
another specimen of its genus that scores above it, so the score cannot say whether
*this specimen* is the one: the margin limit can, where the calibration's own
specimens fit clearly better than their look-alikes. A reliable fit whose margin is
under the margin limit is reported as "may be a specimen not in the collection" (and
its genus still named). In ``benchmarks/match_check.py`` (virtual collection, 40 + 40
queries) the default limit flagged 10 of the 33 absent-specimen sections that the score
limit called reliable and none of the genuine ones; a stricter limit set from the
stored margins (:meth:`MatchCheck.with_margin_keep`) trades genuine ones for more.
Inputs that are not foraminifer sections at all are the section check's
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
from dataclasses import asdict, dataclass, replace
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
    "genus_note",
    "limit_keeping",
    "load_match_check",
    "not_a_section_verdict",
    "runner_up",
    "specimen_margin",
    "specimen_verdict",
]

DEFAULT_KEEP = 0.95
# 1: the score limit; 2: + the specimen margin's limit (a format-1 file still reads, with
# no margin limit: its verdicts say nothing about the specimen)
FORMAT = 2
READABLE_FORMATS = (1, 2)
# a stream of its own: calibration queries never repeat the benchmark's (seeds 0..k)
_STREAM = 0x3A7C


class MatchCheckError(ValueError):
    """A match check that cannot be fitted or read (names the file or the value)."""


@dataclass(frozen=True)
class MatchVerdict:
    """The answer for one query: ``reliable`` and a sentence saying why.

    ``specimen_sure`` is None when the specimen was not checked (no margin limit, no
    other specimen to compare with, or no reliable fit to begin with); otherwise
    whether the best specimen fits clearly better than every other one (``margin``
    at or above ``margin_threshold``). ``not_a_section`` holds the section check's
    reason when it overruled the score (:func:`not_a_section_verdict`).
    """

    reliable: bool
    score: float
    threshold: float
    message: str
    specimen_sure: bool | None = None
    margin: float | None = None
    margin_threshold: float | None = None
    not_a_section: str | None = None


def not_a_section_verdict(verdict: MatchVerdict, refusal: str) -> MatchVerdict:
    """`verdict` for a query the section check refused: never reliable, whatever it scored.

    The match limit is set on sections of the collection's own specimens; a photo, noise
    or a section of another material can still fit some section's outline and texture
    well enough to pass it (3 of 15 sections of unrelated volumes did in
    ``benchmarks/match_check.py``), and only the section check tells them apart.

    Parameters
    ----------
    verdict : MatchVerdict
        The score's verdict (:meth:`MatchCheck.verdict`).
    refusal : str
        Why the image does not look like a foraminifer section
        (:func:`foramlib.inference.classify.section_refusal`).

    Examples
    --------
    >>> check = MatchCheck(0.6, 0.95, (0.7, 0.8))
    >>> v = not_a_section_verdict(check.verdict(0.9), "this is a colour picture")
    >>> v.reliable, v.not_a_section
    (False, 'this is a colour picture')
    >>> v.message
    'no reliable match: the section check refused the image (this is a colour picture), so even its best score, 0.90, places nothing'
    """  # noqa: E501
    return MatchVerdict(
        False,
        verdict.score,
        verdict.threshold,
        f"no reliable match: the section check refused the image ({refusal}), so even its "
        f"best score, {verdict.score:.2f}, places nothing",
        not_a_section=refusal,
    )


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
    margin_threshold : float or None
        A reliable best match whose specimen leads every other specimen's best match
        by less than this (``combined``) "may be a specimen not in the collection";
        None: not calibrated (a format-1 file).
    margins : tuple of float
        The calibration queries' specimen margins (sorted), where another specimen
        could be searched.
    """

    threshold: float
    keep: float
    scores: tuple[float, ...]
    recovered: tuple[bool, ...] = ()
    seed: int = 0
    refused: int = 0
    margin_threshold: float | None = None
    margins: tuple[float, ...] = ()

    @property
    def n_queries(self) -> int:
        return len(self.scores)

    def verdict(
        self, score: float, margin: float | None = None, runner_up: str | None = None
    ) -> MatchVerdict:
        """The verdict on a best match scoring `score` (its ``combined``).

        With `margin` (:func:`specimen_margin`: the best score minus the best score of
        any other specimen, `runner_up`) and a margin limit, a reliable verdict also
        says whether the specimen itself is clear.
        """
        score = float(score)
        basis = (
            f"the limit {self.threshold:.2f} kept {self.kept_share():.0%} of "
            f"{self.n_queries} held-out sections of indexed specimens"
        )
        if score >= self.threshold:
            message = f"best score {score:.2f}; {basis}"
            if margin is None or self.margin_threshold is None:
                return MatchVerdict(True, score, self.threshold, message)
            margin = float(margin)
            other = f"the next specimen ({runner_up})" if runner_up else "the next specimen"
            kept = (
                f"the margin limit {self.margin_threshold:.2f} kept "
                f"{self.margin_kept_share():.0%} of {len(self.margins)} held-out sections"
            )
            sure = margin >= self.margin_threshold
            if sure:
                message += f"; it fits {margin:.2f} better than {other} ({kept})"
            else:
                message += (
                    f"; but {other} fits nearly as well ({margin:+.2f}, under {kept}): the "
                    "section may come from a specimen that is not in the collection, a "
                    "look-alike of these"
                )
            return MatchVerdict(
                True, score, self.threshold, message, sure, margin, self.margin_threshold
            )
        return MatchVerdict(
            False,
            score,
            self.threshold,
            f"no reliable match: the best score {score:.2f} is under {basis}; the "
            "fossil may not be in the collection, or the section may be too damaged, "
            "noisy or unlike a micro-CT section to place",
        )

    def with_margin_keep(self, keep: float) -> MatchCheck:
        """The same check with its margin limit set to keep `keep` of the calibration's
        margins instead: a lab that would rather hear "maybe a specimen not in the
        collection" more often (a lower `keep`) chooses without calibrating again.

        >>> check = MatchCheck(0.5, 0.95, (0.9,), margin_threshold=0.1, margins=(0.1, 0.2, 0.3))
        >>> check.with_margin_keep(0.6).margin_threshold
        0.2
        """
        if not (isinstance(keep, int | float) and 0 < keep <= 1):
            raise MatchCheckError(f"margin keep must be a share in (0, 1], got {keep!r}")
        if not self.margins:
            raise MatchCheckError("this match check has no specimen margins to set a limit on")
        return replace(self, margin_threshold=limit_keeping(self.margins, keep))

    def kept_share(self) -> float:
        """Share of the calibration queries the limit calls reliable."""
        return float(np.mean(np.asarray(self.scores) >= self.threshold))

    def margin_kept_share(self) -> float | None:
        """Share of the calibration queries whose specimen margin clears its limit."""
        if self.margin_threshold is None or not self.margins:
            return None
        return float(np.mean(np.asarray(self.margins) >= self.margin_threshold))

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
    margins: Sequence[float] = (),
) -> MatchCheck:
    """The limit that keeps `keep` of the genuine queries' best `scores`.

    The limit is the highest score with at least `keep` of `scores` at or above it;
    given the queries' specimen `margins`, the margin limit is set the same way on
    them.

    Raises
    ------
    MatchCheckError
        For `keep` outside (0, 1], no scores, a score or margin that is not finite, or
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
    threshold = limit_keeping(arr, keep)
    order = np.argsort(arr, kind="stable")
    rec = tuple(bool(recovered[i]) for i in order) if recovered else ()
    check = MatchCheck(threshold, float(keep), tuple(float(arr[i]) for i in order), rec, seed)
    gaps = np.asarray(margins, dtype=float)
    if gaps.size == 0:
        return check
    if not np.all(np.isfinite(gaps)):
        raise MatchCheckError(f"specimen margins must be finite numbers, got {gaps.tolist()}")
    return replace(check, margin_threshold=limit_keeping(gaps, keep), margins=tuple(np.sort(gaps)))


def limit_keeping(values, keep: float) -> float:
    """The highest value with at least `keep` of `values` at or above it.

    >>> limit_keeping([0.5, 0.7, 0.9, 0.8], 0.75)
    0.7
    """
    best_first = np.sort(np.asarray(values, dtype=float))[::-1]
    # the k-th best, k the fewest queries that make `keep` of them
    k = max(1, math.ceil(keep * best_first.size - 1e-9))
    return float(best_first[k - 1])


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
        if raw.get("format") not in READABLE_FORMATS:
            raise MatchCheckError(
                f"{path}: match check format {raw.get('format')!r}, expected one of "
                f"{list(READABLE_FORMATS)}; rerun the calibrate_match stage"
            )
        margin_limit = raw.get("margin_threshold")
        check = MatchCheck(
            threshold=float(raw["threshold"]),
            keep=float(raw["keep"]),
            scores=tuple(float(s) for s in raw["scores"]),
            recovered=tuple(bool(r) for r in raw.get("recovered", ())),
            seed=int(raw.get("seed", 0)),
            refused=int(raw.get("refused", 0)),
            margin_threshold=None if margin_limit is None else float(margin_limit),
            margins=tuple(float(m) for m in raw.get("margins", ())),
        )
    except MatchCheckError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise MatchCheckError(f"{path}: not a match check ({err})") from None
    if not (math.isfinite(check.threshold) and check.scores):
        raise MatchCheckError(f"{path}: the match check has no finite limit or no scores")
    if check.margin_threshold is not None and not (
        math.isfinite(check.margin_threshold) and check.margins
    ):
        raise MatchCheckError(f"{path}: the specimen margin's limit is not finite or has no data")
    return check


def runner_up(index, image, best, *, volumes, specimens=None, species=None, **match_kwargs):
    """The best match of `image` among the specimens other than `best`'s.

    Parameters
    ----------
    index : foramlib.matching.search.MatchIndex
    image : array-like
        The query, as given to :func:`~foramlib.matching.search.match`.
    best : foramlib.matching.search.Match
        Its best match.
    volumes : mapping
        As for :func:`~foramlib.matching.search.match`.
    specimens, species : sequence of str, optional
        The restriction the first search ran under (None: every specimen).
    **match_kwargs
        The first search's settings (``refine``, ``time_budget_s``, ...).

    Returns
    -------
    Match or None
        None when no other specimen is in reach, or the search finds nothing.
    """
    from foramlib.matching.search import match

    table = dict(zip(index.specimen.tolist(), index.species.tolist(), strict=True))
    allowed = set(table) if specimens is None else set(specimens)
    if species is not None:
        allowed &= {s for s, g in table.items() if g in set(species)}
    others = sorted(allowed - {best.specimen_id})
    if not others:
        return None
    found = match(index, image, volumes=volumes, top_k=1, specimens=others, **match_kwargs)
    return found[0] if found else None


def specimen_verdict(check, index, image, best, *, volumes, specimens=None, species=None,
                     **match_kwargs):  # fmt: skip
    """`check`'s verdict on `best`, with the specimen margin where it applies.

    Only a reliable `best` under a check with a margin limit is compared with the other
    specimens in reach (:func:`runner_up`, same arguments); otherwise, or when none can
    be searched, the verdict on the score alone is returned, with None.

    Returns
    -------
    MatchVerdict, Match or None
        The verdict, and the best match among the other specimens.
    """
    from foramlib.dataset.preprocess import PreprocessError
    from foramlib.matching.search import MatchError

    score = best.scores["combined"]
    verdict = check.verdict(score)
    if not verdict.reliable or check.margin_threshold is None:
        return verdict, None
    try:
        other = runner_up(index, image, best, volumes=volumes, specimens=specimens,
                          species=species, **match_kwargs)  # fmt: skip
    except (MatchError, PreprocessError):
        return verdict, None  # nothing else to compare with: no word on the specimen
    if other is None:
        return verdict, None
    return check.verdict(score, specimen_margin(best, other), other.specimen_id), other


def genus_note(best_genus: str, other_genus: str) -> str:
    """What the two best specimens' genera say when the specimen itself is unclear.

    >>> genus_note("Alveolina", "Alveolina")
    'both are Alveolina: the genus is likelier right than the specimen'
    >>> genus_note("Alveolina", "Fallotia")
    'they are of two genera (Alveolina and Fallotia): neither the specimen nor the genus is sure'
    """
    if best_genus == other_genus:
        return f"both are {best_genus}: the genus is likelier right than the specimen"
    return (
        f"they are of two genera ({best_genus} and {other_genus}): neither the specimen nor "
        "the genus is sure"
    )


def specimen_margin(best, other) -> float | None:
    """How much better `best` fits than the best of another specimen (``combined``).

    >>> from types import SimpleNamespace as M
    >>> specimen_margin(M(scores={"combined": 0.9}), M(scores={"combined": 0.8}))
    0.1
    >>> specimen_margin(M(scores={"combined": 0.9}), None) is None
    True
    """
    if other is None:
        return None
    return round(float(best.scores["combined"]) - float(other.scores["combined"]), 6)


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
        The check, and one row per query (specimen, best match, score, recovered, the
        best other specimen and the specimen margin; a query the matcher refused, e.g.
        a section too small to show the fossil, has no match and its reason under
        ``refused``, and is left out of the fit).

    Raises
    ------
    MatchCheckError
        If `n_queries` is not a positive integer, or the matcher refused every query.
    """
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
                             runner_up=None, margin=None, refused=str(err)))  # fmt: skip
            report((i + 1) / n_queries, f"query {i + 1}/{n_queries}: {spec} refused ({err})")
            continue
        try:
            other = runner_up(collection.index, image, best, volumes=volumes, **match_kwargs)
        except (MatchError, PreprocessError):
            other = None
        rows.append(
            dict(
                specimen_id=spec,
                matched=best.specimen_id,
                score=round(float(best.scores["combined"]), 6),
                recovered=pose_recovered(best, spec, truth),
                runner_up=None if other is None else other.specimen_id,
                margin=specimen_margin(best, other),
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
        margins=[r["margin"] for r in answered if r["margin"] is not None],
    )
    return replace(check, refused=len(rows) - len(answered)), rows
