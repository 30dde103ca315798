"""Classifying a whole scan: many sections, one ranked answer with its spread.

A single section can be ambiguous (a grazing cut through a lamellar wall looks alike in
several genera); a scan is not. :func:`classify_scan` cuts a scan into sections at many
orientations with the SAME slicer and preprocessing as the slice stage
(:func:`foramlib.dataset.slicing.slice_array`, settings read back from
``data/slices/slicing.json``), classifies every section with the saved ensemble
(:class:`foramlib.inference.classify.Classifier`) and combines them exactly as the evaluate
stage's specimen vote does (:func:`foramlib.evaluation.metrics.specimen_votes`: the mean
probability). The answer carries, per genus, the mean probability, its spread over
sections and the share of sections whose own top-1 it is, and is flagged *uncertain* by
a rule calibrated on the VALIDATION specimens (:func:`calibrate_specimens`).

Examples
--------
>>> import numpy as np
>>> probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
>>> ranking = rank_genera(probs, ["A", "B", "C"])
>>> [(g.genus, round(g.probability, 3), round(g.vote_share, 3)) for g in ranking]
[('A', 0.467, 0.667), ('B', 0.433, 0.333), ('C', 0.1, 0.0)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.dataset.slicing import SliceError, SlicingConfig, slice_array, trained_slicing
from foramlib.inference.calibration import (
    DEFAULT_TARGET_PRECISION,
    Calibration,
    calibrate_threshold,
    load_validation,
)
from foramlib.inference.errors import ArtefactError, ClassifyError
from foramlib.inference.section_check import features_of
from foramlib.io.uploads import VolumeUpload

#: a scan is read at the coarsest resolution still this many voxels wide (an OME-Zarr
#: pyramid level, any other format binned as it is read): its sections are cropped to
#: the fossil and resized to the models' 96-384 px anyway, and a 2048^3 scan read whole
#: would not fit in memory
SCAN_READ_SIDE = 512

__all__ = [
    "SCAN_READ_SIDE",
    "ScanError",
    "DEFAULT_SECTIONS",
    "DEFAULT_SPECIMEN_SUPPORT",
    "GenusScore",
    "ScanAnswer",
    "slicing_defaults",
    "LoadedScan",
    "load_scan",
    "rank_genera",
    "calibrate_specimens",
    "flag_votes",
    "classify_scan",
    "format_answer",
]

DEFAULT_SECTIONS = 96
# validation holds about one specimen per genus and split: a threshold needs few of them
DEFAULT_SPECIMEN_SUPPORT = 5


class ScanError(ClassifyError):
    """A scan that cannot be classified (unreadable, blank, too few usable sections)."""


@dataclass(frozen=True)
class GenusScore:
    """One genus in a scan's ranked answer.

    Attributes
    ----------
    genus : str
    probability : float
        Mean probability over the scan's sections (the specimen vote).
    sd : float
        Standard deviation of the per-section probability (0 with one section).
    vote_share : float
        Share of the sections whose own top-1 is this genus.
    """

    genus: str
    probability: float
    sd: float
    vote_share: float


@dataclass
class ScanAnswer:
    """The classifier's answer for one whole scan.

    Attributes
    ----------
    name : str
        The scan (file name or given name).
    ranking : list of GenusScore
        Every genus, most probable first.
    uncertain : bool
        The winner's mean probability is under the specimen-level threshold (or no
        calibration reached its target).
    calibration : Calibration or None
        The specimen-level rule (calibrated on validation specimens).
    sections : DataFrame
        One row per classified section: plane (``normal_x/y/z``, ``offset_vox``,
        ``angle_deg``), ``fossil_fraction``, ``top1`` and ``confidence``.
    probabilities : ndarray, shape (n_sections, n_classes)
        Each section's ensemble probabilities, in class order.
    images : ndarray of uint8, shape (n_sections, S, S)
        The cleaned sections, as the models saw them (before resizing).
    metadata : dict
        Ensemble, slicing settings, candidates cut and dropped, timings.
    """

    name: str
    ranking: list[GenusScore]
    uncertain: bool
    calibration: Calibration | None
    sections: pd.DataFrame = field(repr=False)
    probabilities: np.ndarray = field(repr=False)
    images: np.ndarray = field(repr=False)
    metadata: dict = field(default_factory=dict)

    @property
    def genus(self) -> str:
        return self.ranking[0].genus

    @property
    def not_a_section(self) -> bool:
        """Most sections fail the section check (:mod:`foramlib.inference.section_check`): the
        scan does not look like a foraminifer. A genuine scan loses about ``1 - keep``
        of its sections (3 % at the default), so a majority failing is no accident."""
        check = self.metadata.get("section_check")
        return bool(check) and check["passed"] < 0.5 * check["sections"]

    @property
    def maybe_unknown_genus(self) -> bool:
        """The median section is farther from every training slice than sections of new
        specimens of the known genera usually are (:mod:`foramlib.inference.genus_check`):
        the specimen may belong to a genus outside the class list."""
        check = self.metadata.get("genus_check")
        return bool(check) and not check["known"] and not self.not_a_section

    @property
    def confidence(self) -> float:
        return self.ranking[0].probability

    def as_dict(self, top: int | None = None) -> dict:
        """JSON-ready summary (no images or per-section arrays)."""
        rows = self.ranking if top is None else self.ranking[:top]
        return dict(
            scan=self.name,
            genus=self.genus,
            confidence=round(self.confidence, 6),
            uncertain=self.uncertain,
            maybe_unknown_genus=self.maybe_unknown_genus,
            ranking=[
                dict(
                    genus=g.genus,
                    probability=round(g.probability, 6),
                    sd=round(g.sd, 6),
                    vote_share=round(g.vote_share, 6),
                )
                for g in rows
            ],
            calibration=None if self.calibration is None else self.calibration.as_dict(),
            metadata=self.metadata,
        )


# --------------------------------------------------------------------------- settings


def slicing_defaults(workspace) -> tuple[SlicingConfig, str]:
    """The slicer settings the models' training sections were cut with, and their source
    (:func:`foramlib.dataset.slicing.trained_slicing`, the one reader).

    >>> import tempfile
    >>> slicing_defaults(tempfile.mkdtemp())[1]
    'built-in defaults'
    """
    return trained_slicing(workspace)


@dataclass(frozen=True, eq=False)
class LoadedScan:
    """A scan :func:`load_scan` has read and checked, to be classified without reading
    it again (``foram classify`` reads the scan before it loads any model, so a bad
    file fails at once)."""

    data: np.ndarray
    name: str
    notes: dict = field(default_factory=dict)


def load_scan(scan, *, voxel_size_um: float | None = None) -> tuple[np.ndarray, str, dict]:
    """A scan as an isotropic float32 volume, its name and what was assumed.

    Parameters
    ----------
    scan : path-like, ndarray, VolumeUpload or LoadedScan
        A ``.nii``/``.nii.gz`` file, a multi-page TIFF stack, a folder of reconstructed
        slices (TIFF, PNG, BMP; see :func:`foramlib.io.volumes.read_volume`), a 3-D array
        in ``(x, y, z)`` order, a dashboard upload, or a scan loaded already.
    voxel_size_um : float, optional
        Voxel size (µm). Only its anisotropy matters here: every section is cropped to
        the fossil and resized, so absolute scale is lost by design. TIFF stacks and
        folders of slices without it (and without a SkyScan log that states it) are
        taken as isotropic (said in the returned notes).

    Raises
    ------
    ScanError
        Unreadable or not a 3-D volume (the message names the scan).
    """
    from foramlib.io.volumes import (
        VolumeError,
        check_volume_array,
        read_volume,
        resample_isotropic,
        voxel_size_stated,
    )

    if isinstance(scan, LoadedScan):
        return scan.data, scan.name, dict(scan.notes)
    notes: dict = {}
    if isinstance(scan, VolumeUpload):
        data, name = scan.data, scan.name
        if scan.binned > 1:  # read binned (uploads.UPLOAD_VOLUME_SIDE), spacings to match
            notes["binned"] = scan.binned
        # a header without a unit still gives the axes' ratios (one unit for all three)
        spacing = scan.spacing_um or scan.relative_spacing
        if spacing is None:
            notes["assumed_isotropic"] = True  # a TIFF stack carries no voxel size
        elif max(spacing) > 1.01 * min(spacing):
            try:
                data, _ = resample_isotropic(data, spacing)
            except ValueError as exc:
                raise ScanError(f"{name}: {exc}") from None
            key = "resampled_from_um" if scan.spacing_um else "resampled_from_unitless"
            notes[key] = [float(s) for s in spacing]
    elif isinstance(scan, np.ndarray):
        name = "array"
        data = scan
    else:
        path = Path(scan)
        name = path.name or str(path)
        # sources that may carry no voxel size (a stack, a folder, a plain Zarr array)
        is_tiff = path.is_dir() or path.name.lower().endswith((".tif", ".tiff"))
        size = voxel_size_um
        try:
            stated = size is not None or voxel_size_stated(path)
            if not stated and is_tiff:
                size = 1.0
                notes["assumed_isotropic"] = True
            vol = read_volume(path, voxel_size_um=size, max_side=SCAN_READ_SIDE)
        except VolumeError as exc:
            raise ScanError(str(exc)) from None
        data = vol.data  # read_volume resampled anisotropic voxels already
        if vol.level:
            notes["read_level"] = vol.level
        if vol.binned > 1:
            notes["binned"] = vol.binned
    if np.ndim(data) != 3:
        raise ScanError(f"{name}: a scan must be a 3-D volume, got shape {np.shape(data)}")
    try:
        data = check_volume_array(np.asarray(data, dtype=np.float32), name)
    except ValueError as exc:
        raise ScanError(str(exc)) from None
    return np.ascontiguousarray(data, dtype=np.float32), name, notes


# --------------------------------------------------------------------------- combining


def rank_genera(probabilities, names: Sequence[str]) -> list[GenusScore]:
    """Combine per-section probabilities into a ranked answer (the specimen vote).

    The rank is by mean probability, as :func:`foramlib.evaluation.metrics.specimen_votes` votes
    in the evaluate stage; ties keep class order.

    Parameters
    ----------
    probabilities : array, shape (n_sections, n_classes)
    names : sequence of str, length n_classes

    Raises
    ------
    ScanError
        No section, a shape that does not match `names`, or non-finite values.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    names = list(names)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] != len(names):
        raise ScanError(
            f"probabilities must have shape (n_sections >= 1, {len(names)}), got {p.shape}"
        )
    if not np.isfinite(p).all():
        raise ScanError("probabilities hold NaN or infinite values")
    mean = p.mean(axis=0)
    sd = p.std(axis=0, ddof=1) if len(p) > 1 else np.zeros(len(names))
    votes = np.bincount(p.argmax(axis=1), minlength=len(names)) / len(p)
    order = np.argsort(-mean, kind="stable")
    return [GenusScore(names[i], float(mean[i]), float(sd[i]), float(votes[i])) for i in order]


def calibrate_specimens(
    spec,
    models_dir,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_support: int = DEFAULT_SPECIMEN_SUPPORT,
) -> Calibration:
    """The specimen-level uncertainty threshold, from the VALIDATION specimens.

    Each validation specimen's slices (members' ``predictions_val.csv``, combined by
    ``spec``) are voted as in :func:`foramlib.evaluation.metrics.specimen_votes`; the winner's mean
    probability and whether it is right feed
    :func:`foramlib.inference.calibration.calibrate_threshold`.

    Raises
    ------
    ArtefactError
        Missing validation predictions, or predictions without ``specimen_id``.
    """
    from foramlib.evaluation.metrics import PredictionError, Predictions, specimen_votes

    val = load_validation(spec, models_dir)
    first = val[spec.members[0]]
    try:
        probs = spec.apply(val)
        if "specimen_id" not in first.frame.columns:
            raise PredictionError("no 'specimen_id' column")
        combined = Predictions.from_arrays(
            "scan", probs, first.y_true, first.names,
            specimen_ids=first.frame["specimen_id"].astype(str).tolist(),
        )  # fmt: skip
        votes = specimen_votes(combined)
    except ValueError as exc:  # EnsembleError, PredictionError
        raise ArtefactError(f"cannot vote the validation specimens: {exc}") from None
    return calibrate_threshold(
        votes["confidence"],
        votes["true"] == votes["predicted"],
        target_precision=target_precision,
        min_support=min_support,
    )


def flag_votes(votes: pd.DataFrame, calibration: Calibration) -> tuple[pd.DataFrame, dict]:
    """Apply the specimen-level rule to specimen votes, and say how it did.

    Parameters
    ----------
    votes : DataFrame
        :func:`foramlib.evaluation.metrics.specimen_votes` output (``true``, ``predicted``,
        ``confidence``), e.g. of the test specimens.
    calibration : Calibration
        From :func:`calibrate_specimens` (validation specimens).

    Returns
    -------
    flagged : DataFrame
        `votes` with a boolean ``uncertain`` column.
    summary : dict
        ``threshold``, ``reached``, ``specimens``, ``uncertain`` (count), ``accepted``
        (count) and ``accepted_accuracy`` (share of accepted votes that are right; None
        when none is accepted).

    Examples
    --------
    >>> import pandas as pd
    >>> from foramlib.inference.calibration import Calibration
    >>> v = pd.DataFrame({"true": ["A", "B", "A"], "predicted": ["A", "A", "A"],
    ...                   "confidence": [0.9, 0.4, 0.7]})
    >>> cal = Calibration(0.6, 0.8, 1.0, 0.5, 4, True, "rule")
    >>> flagged, summary = flag_votes(v, cal)
    >>> flagged["uncertain"].tolist(), summary["accepted"], summary["accepted_accuracy"]
    ([False, True, False], 2, 1.0)
    """
    missing = {"true", "predicted", "confidence"} - set(votes.columns)
    if missing:
        raise ScanError(f"specimen votes lack column(s) {sorted(missing)}")
    uncertain = [calibration.uncertain(float(c)) for c in votes["confidence"]]
    flagged = votes.assign(uncertain=uncertain)
    accepted = flagged[~flagged["uncertain"]]
    right = (accepted["true"] == accepted["predicted"]).mean() if len(accepted) else None
    return flagged, dict(
        threshold=round(float(calibration.threshold), 6),
        reached=bool(calibration.reached),
        specimens=int(len(flagged)),
        uncertain=int(flagged["uncertain"].sum()),
        accepted=int(len(accepted)),
        accepted_accuracy=None if right is None else round(float(right), 4),
    )


# --------------------------------------------------------------------------- classifying


def classify_scan(
    classifier,
    scan,
    *,
    n_sections: int = DEFAULT_SECTIONS,
    seed: int = 0,
    slicing: SlicingConfig | None = None,
    calibration: Calibration | None = None,
    voxel_size_um: float | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> ScanAnswer:
    """Cut a scan into sections, classify each, and combine them into one answer.

    Parameters
    ----------
    classifier : foramlib.inference.classify.Classifier
        The saved ensemble (``Classifier.from_workspace``).
    scan : path-like, ndarray or VolumeUpload
        See :func:`load_scan`.
    n_sections : int >= 1
        Candidate sections to cut (grazing ones, with too little fossil, are dropped as
        in the slice stage).
    seed : int
        Seed of the orientations (same seed, same sections).
    slicing : SlicingConfig, optional
        Pass ``slicing_defaults(workspace)[0]`` to cut as the slice store was cut (what
        ``foram classify`` and the dashboard do); default: the classifier's training
        preprocessing with :class:`~foramlib.dataset.slicing.SlicingConfig`'s other defaults.
    calibration : Calibration, optional
        Specimen-level rule (:func:`calibrate_specimens`); without one every answer is
        flagged uncertain, as an uncalibrated slice prediction is.
    voxel_size_um : float, optional
        See :func:`load_scan`.
    progress : callable(fraction, message), optional

    Raises
    ------
    ScanError
        Bad `n_sections`, an unreadable or blank scan, or no usable section.
    """
    if isinstance(n_sections, bool) or not isinstance(n_sections, int | np.integer):
        raise ScanError(f"n_sections must be an integer >= 1, got {n_sections!r}")
    if n_sections < 1:
        raise ScanError(f"n_sections must be an integer >= 1, got {n_sections!r}")
    say = progress or (lambda fraction, message: None)
    t0 = time.perf_counter()
    say(0.0, "reading the scan")
    data, name, notes = load_scan(scan, voxel_size_um=voxel_size_um)
    if slicing is None:
        slicing = SlicingConfig(preprocess=classifier.preprocess)
    say(0.2, f"cutting {n_sections} sections")
    try:
        images, rows, stats = slice_array(data, int(n_sections), slicing, int(seed), name=name)
    except SliceError as exc:
        raise ScanError(str(exc)) from None
    if len(images) == 0:
        raise ScanError(
            f"{name}: none of the {stats['candidates']} sections holds enough fossil "
            f"(min_fraction {slicing.preprocess.min_fraction}); is the fossil in the scan?"
        )
    t_cut = time.perf_counter() - t0
    say(0.6, f"classifying {len(images)} sections")
    probs = classifier.predict_many(images)
    ranking = rank_genera(probs, classifier.names)
    top = probs.argmax(axis=1)
    sections = rows.assign(
        top1=[classifier.names[i] for i in top], confidence=probs.max(axis=1).round(6)
    )
    check = getattr(classifier, "section_check", None)
    check_summary = None
    if check is not None:
        passed = check.accepts(features_of(images))
        sections["looks_like_section"] = passed
        check_summary = dict(passed=int(passed.sum()), sections=int(len(passed)), keep=check.keep)
    genus_check = getattr(classifier, "genus_check", None)
    genus_summary = None
    if genus_check is not None:
        novelty = genus_check.novelty(classifier.features(images))
        sections["novelty"] = novelty.round(4)
        genus_summary = genus_check.scan_verdict(novelty)
    uncertain = True if calibration is None else calibration.uncertain(ranking[0].probability)
    metadata = dict(
        ensemble=classifier.name,
        members=list(classifier.spec.members),
        n_sections=int(len(images)),
        candidates=int(stats["candidates"]),
        low_content=int(stats["low_content"]),
        seed=int(seed),
        shape=[int(s) for s in data.shape],
        slicing=dict(
            offsets_per_orientation=slicing.offsets_per_orientation,
            jitter_deg=slicing.jitter_deg,
            dense_factor=slicing.dense_factor,
            smooth_sigma=slicing.smooth_sigma,
            preprocess=slicing.preprocess.as_dict(),
        ),
        rule="mean probability over sections (the evaluate stage's specimen vote)",
        seconds=dict(cut=round(t_cut, 3), total=round(time.perf_counter() - t0, 3)),
        section_check=check_summary,
        genus_check=genus_summary,
        **notes,
    )
    say(1.0, "done")
    return ScanAnswer(
        name=name,
        ranking=ranking,
        uncertain=bool(uncertain),
        calibration=calibration,
        sections=sections,
        probabilities=probs,
        images=images,
        metadata=metadata,
    )


def format_answer(answer: ScanAnswer, top: int = 5) -> str:
    """The ranked answer as plain text (what ``foram classify`` prints).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> r = rank_genera(np.array([[0.8, 0.2], [0.6, 0.4]]), ["A", "B"])
    >>> a = ScanAnswer("s.nii.gz", r, False, None, pd.DataFrame(), np.zeros((2, 2)),
    ...                np.zeros((2, 4, 4), np.uint8), {"n_sections": 2})
    >>> print(format_answer(a))  # doctest: +NORMALIZE_WHITESPACE
    s.nii.gz: A (mean probability 0.700 over 2 sections)
    rank  genus  probability     sd  top-1 share
       1  A            0.700  0.141         100%
       2  B            0.300  0.141           0%
    """
    n = answer.metadata.get("n_sections", len(answer.probabilities))
    head = (
        f"{answer.name}: {answer.genus} "
        f"(mean probability {answer.confidence:.3f} over {n} sections)"
    )
    if answer.uncertain:
        cal = answer.calibration
        why = (
            "no specimen-level calibration"
            if cal is None
            else (
                f"the validation target ({cal.target_precision:.0%}) was not reached"
                if not cal.reached
                else f"under the threshold {cal.threshold:.3f} calibrated on validation specimens"
            )
        )
        head += f"\nUNCERTAIN: {why}"
    if answer.not_a_section:
        check = answer.metadata["section_check"]
        head += (
            f"\nNOT A FORAMINIFER? only {check['passed']} of {check['sections']} sections look "
            "like foraminifer sections; the genera below mean little"
        )
    elif answer.maybe_unknown_genus:
        check = answer.metadata["genus_check"]
        head += (
            f"\nNOT ONE OF THESE GENERA? {check['flagged']} of {check['sections']} sections are "
            "farther from every training slice than sections of new specimens of the known "
            f"genera usually are (median novelty {check['median_novelty']:.3f}, limit "
            f"{check['threshold']:.3f}); the specimen may belong to a genus the models were "
            "not trained on"
        )
    rows = [("rank", "genus", "probability", "sd", "top-1 share")]
    rows += [
        (str(i), g.genus, f"{g.probability:.3f}", f"{g.sd:.3f}", f"{g.vote_share:.0%}")
        for i, g in enumerate(answer.ranking[:top], start=1)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join([head, *(line.rstrip() for line in lines)])
