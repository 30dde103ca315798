"""Slice-to-volume matching: where does a 2D section sit inside 3D specimen volumes?

An index holds, for every specimen volume, candidate section planes (normals spread
evenly over the hemisphere × parallel offsets across the specimen), each cut, run
through the shared preprocessing (:func:`foramlib.dataset.preprocess.preprocess_slice`, on the
section's own threshold, as a query is) and summarised by descriptors that do not
change when the section is turned or mirrored in its plane:

* log-scaled Hu moments of the silhouette,
* radial profiles of the silhouette and of the image about the silhouette's centroid,
* magnitudes of the Fourier transform along the angle of a polar resampling (radius
  measured in units of the silhouette's radius of gyration, so scale drops out too).

The descriptor vector is standardised with the index's own mean and spread, projected
on its leading principal components and L2-normalised, so the coarse search is one
matrix-vector product. The index keeps only these compact descriptors, a bit-packed
low-resolution silhouette, the silhouette's geometry (centroid, radius of gyration,
principal axis, in voxels) and the plane of each candidate (under 300 bytes each): the
query is compared with the specimen volumes themselves.

Matching a query runs in six stages:

1. **coarse**: cosine similarity of descriptors over the (filtered) index, then Dice
   of low-resolution silhouettes put in a canonical frame (centroid, principal axes,
   radius of gyration) under the four axis ambiguities (identity, 180°, two mirrors);
   ``coarse = 0.5 * cosine + 0.5 * dice`` picks ``coarse_k`` candidates;
2. **screen**: each candidate's geometry gives a full pose of the query in the volume
   (plane, in-plane turn from the principal axes, shift from the centroids, scale from
   the radii), one per axis ambiguity; the volume is sampled at the query's pixels for
   every pose at once (:mod:`foramlib.matching.registration`) and scored by
   ``combined = 0.7 * texture + 0.3 * ncc``, where ``texture`` is the correlation of
   the high-passed images (chamber walls and septa: what tells two poses of one
   outline apart, while the outline alone leaves intensity NCC and Dice near 1 for
   many poses);
3. **align**: the best ``screen_k`` distinct poses get a short registration at the
   coarse, band-passed level of the query, whose score changes slowly with the pose;
4. **refine**: the best ``refine_k`` are registered over the whole pyramid: a pattern
   search over the plane's two tilts, its offset, the in-plane turn, shift and scale,
   so the plane of a match is continuous, not limited to the index's grid;
5. **neighbours**: the sections parallel to the best few refined poses, a few voxels
   either side, are cut and measured like index candidates and the best of their
   start poses are registered too, and so is each of those poses turned by half a
   turn in its plane. Sections of a shell a few voxels apart can look alike (lens and
   spindle shapes, regularly repeated chamberlets), a near-symmetric section fits
   both ways round, and registration alone stays where it started;
6. **axis turns**: the best ``axis_turn_poses`` refined poses are turned about each
   principal axis of their specimen, through its centroid, in steps of 30°; the best
   ``axis_turn_starts`` turned poses of each are registered too. A shell that is
   nearly a solid of revolution (a cone, a spindle, a lens) shows nearly the same
   section all the way round its axis, and only its chambers tell the true turn.

When the best match is weak (``combined`` under ``retry_score``), the query may have
been misread rather than be absent: the search runs again on other *readings* of it
(``READINGS``: its outline segmented after more smoothing, for a faint fossil in a
noisy matrix; its brightest class removed, for a mounting stem or a dense inclusion
cut across) and the reading whose best match scores highest is kept. A query still
weak on every reading is searched once more, on its best reading and on the smoothed
outline, with ``wide_search`` times the candidates at the coarse, screen and refine
stages and ``wide_around`` times the poses whose neighbours and turns are tried: a
faint or broken outline misleads the silhouette descriptors and the start poses,
which then rank the true pose's neighbourhood too low for the usual numbers (such
queries take two to three times as long). A query whose bright stem hid the fossil
from the segmentation (:func:`foramlib.dataset.preprocess.bright_class_hides_fossil`) is
searched without its brightest class whatever its first score: the stem alone can
match well.

Every number of the search named above (weights, registration effort, neighbours,
turns, retries) is a field of :class:`SearchTuning`, with the reason for its default;
``match(..., tuning=SearchTuning(...))`` searches differently without rebuilding the
index. The descriptor's own constants are part of the index format.

A plane and its flipped normal give the same section, mirrored: a match reports the
normal, offset and in-plane angle for which ``extract_slice(volume, Plane(normal,
offset, angle_deg))`` reproduces the query's orientation.

Examples
--------
>>> a = np.zeros((32, 32)); a[8:24, 10:20] = 1.0
>>> b = np.rot90(a)
>>> d1, d2 = (describe(x > 0) for x in (a, b))
>>> bool(np.allclose(d1.hu, d2.hu, atol=1e-6))
True
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.measure import moments_central, moments_hu, moments_normalized
from skimage.metrics import structural_similarity

from foramlib.dataset.preprocess import (
    DENSE_FACTOR,
    PREPROCESS_VERSION,
    PreprocessConfig,
    PreprocessError,
    bright_class_hides_fossil,
    preprocess_slice,
    remove_bright_class,
    segment_silhouette,
    shrink_to_fit,
    to_gray_float,
)
from foramlib.dataset.slicing import Plane, SliceError, fibonacci_hemisphere, plane_axes
from foramlib.dataset.slicing import prepare_volume as prepare_slicing_volume
from foramlib.io.atomic import atomic_path
from foramlib.matching.registration import (
    SectionPose,
    batch_scores,
    make_template,
    pose_scores,
    register_many,
    sample_grid,
    sample_section,
)

__all__ = [
    "MatchError",
    "IndexConfig",
    "PreparedVolume",
    "Features",
    "MatchIndex",
    "Match",
    "Reading",
    "READINGS",
    "SearchTuning",
    "TUNING",
    "prepare_volume",
    "describe",
    "build_index",
    "index_from_parts",
    "index_volume",
    "match",
    "plane_error",
]

# 2: compact descriptors, no stored images; 3: + silhouette geometry; 4: each section
# segmented on its own threshold, as a query is; 5: volumes prepared with dense
# inclusions measured against the walls (preprocess.dense_inclusion_mask)
INDEX_FORMAT = 5

# The descriptor's layout. These are part of the index format: an index built with
# other values cannot be searched, so changing one means bumping INDEX_FORMAT. How
# hard the search works on an index is SearchTuning's business, below.
N_RADII = 24  # polar resampling: radii from 0.1 to RHO_MAX radii of gyration ...
RHO_MAX = 2.6  # ... far enough to reach the last whorl of an elongate shell
N_ANGLES = 64  # angular samples: about 6° apart, finer than a chamber
N_HARMONICS = 8  # outline harmonics kept: the lobes of chambers, not pixel noise
DESCRIPTOR_DIMS = 64  # principal components kept: the index stays small as it grows
# block weights after each block is standardised: texture (the walls and chambers, what
# tells genera of similar outline apart) counts more than the outline blocks
_BLOCK_WEIGHTS = (("hu", 1.0), ("radial", 1.0), ("fourier", 1.0), ("texture", 1.5))
DESCRIBE_TEXTURE_SIGMA = 1.0  # high-pass of the texture block (pixels at the index size)
_WIDENED = ("coarse_k", "screen_k", "refine_k")  # the settings a wide search multiplies


@dataclass(frozen=True)
class SearchTuning:
    """How hard :func:`match` searches an index, each value with the reason for it.

    The defaults were set on held-out oblique sections of the virtual collection
    (``benchmarks/matching.py``; the book's *3D matching* chapter gives the runs that
    chose them). Pass another ``SearchTuning`` to :func:`match` to trade time for
    recall without touching the index. The ``calibrate_match`` stage's limit was set
    on ``combined`` scores of the default weights: with other weights its verdict no
    longer applies.

    Attributes
    ----------
    texture_weight, ncc_weight : float
        Weights of the ``combined`` score that ranks the matches (non-negative, sum 1).
        ``texture`` (correlation of the high-passed images: chamber walls, septa,
        pores) is what tells two poses of one shell apart; plain NCC (and silhouette
        Dice) are near 1 for both, so texture counts most.
    coarse_descriptor_weight : float
        Weight of the descriptor cosine in the coarse ranking of the index's
        sections, the rest going to the Dice of the canonical silhouettes: the
        descriptor sees texture, the silhouette the outline, neither alone suffices.
    registration_levels : tuple of (int, float)
        The registration pyramid, coarse to fine: (grid side, high-pass sigma in grid
        pixels). The coarse level's similarity changes slowly with the pose, a wide
        basin that lets a rough start converge.
    texture_sigma : float
        High-pass sigma on the ``fine_size`` grid (the matched image): keeps walls
        and septa, drops the shading across the shell.
    short_evals : int
        Poses scored by the short registration of each screened start: enough to sort
        the starts, cheap enough for ``screen_k`` of them.
    full_evals : int
        Poses scored by the full registration of each refined start.
    neighbour_offsets : tuple of float
        Sections parallel to the best poses, this many voxels either side, tried as
        new starts: a shell's sections a few voxels apart look alike (lens- and
        spindle-shaped shells, regular chamberlets), and registration does not cross
        from one to the next.
    neighbour_poses : int
        Best registered poses whose neighbours are tried.
    neighbour_starts : int
        Best screened neighbour starts of each, registered (``neighbour_evals``).
    neighbour_evals : int
        Poses scored by the registration of a neighbour or turned start (it starts
        close to a good pose, so fewer than ``full_evals``).
    axis_turn_poses : int
        Best refined poses turned about their specimen's principal axes: many shells
        are nearly solids of revolution, whose sections turned about the axis look
        alike and trap the registration.
    axis_turn_step : float
        Degrees between those turns (30°: a turn a chamber or two apart).
    axis_turn_starts : int
        Best screened turned starts of each, registered (``neighbour_evals``).
    retry_score : float
        A best ``combined`` score under this sends the query through its other
        readings (``READINGS``); genuine registered matches of the virtual collection
        mostly score above it, so most queries pay nothing.
    wide_search : int
        A query still weak on every reading is searched once more on its best reading
        (and ``WIDE_READINGS``) with this many times ``coarse_k``, ``screen_k`` and
        ``refine_k``: a faint or broken outline misleads the coarse stage and the
        screen, which then rank the true pose's neighbourhood too low. 1: never.
    wide_around : int
        ... and this many times the poses whose neighbours and turns are tried.
    registration_threads : int
        Registrations run side by side (the interpolation frees the GIL): two use both
        cores of a small machine.
    registration_chunk : int
        Poses each thread registers in lock step; the time budget is checked between
        chunks, so a smaller chunk stops closer to the budget.
    query_max_side : int
        A query with a longer side is shrunk to it (area averaging, aspect kept)
        before anything else: the search compares the fossil on grids of at most
        ``fine_size`` (128) pixels, so 1024 leaves a fossil that spans an eighth of the
        image a full grid, while a 4096-pixel scan image costs what a 1024-pixel one
        does (segmentation and filters scale with the pixels, every reading pays them).

    Examples
    --------
    >>> SearchTuning().weights
    {'texture': 0.7, 'ncc': 0.3}
    >>> SearchTuning(wide_search=1).wide_search  # never widen a weak search
    1
    >>> SearchTuning(texture_weight=0.9)
    Traceback (most recent call last):
    ...
    ValueError: SearchTuning: texture_weight + ncc_weight = 1.2 is invalid: expected 1
    """

    texture_weight: float = 0.7
    ncc_weight: float = 0.3
    coarse_descriptor_weight: float = 0.5
    registration_levels: tuple[tuple[int, float], ...] = ((32, 2.0), (64, 1.5))
    texture_sigma: float = 3.0
    short_evals: int = 80
    full_evals: int = 400
    neighbour_offsets: tuple[float, ...] = (-18.0, -13.5, -9.0, -4.5, 4.5, 9.0, 13.5, 18.0)
    neighbour_poses: int = 4
    neighbour_starts: int = 2
    neighbour_evals: int = 200
    axis_turn_poses: int = 4
    axis_turn_step: float = 30.0
    axis_turn_starts: int = 6
    retry_score: float = 0.85
    wide_search: int = 3
    wide_around: int = 2
    registration_threads: int = 2
    registration_chunk: int = 8
    query_max_side: int = 1024

    def __post_init__(self) -> None:
        for name in _TUNING_COUNTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(
                    f"SearchTuning: {name} = {v!r} is invalid: expected an integer >= 1"
                )
        for name in ("texture_weight", "ncc_weight", "coarse_descriptor_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ValueError(
                    f"SearchTuning: {name} = {getattr(self, name)!r} is invalid: "
                    "expected a number in [0, 1]"
                )
        total = self.texture_weight + self.ncc_weight
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"SearchTuning: texture_weight + ncc_weight = {total:g} is invalid: expected 1"
            )
        if self.query_max_side < 16:
            raise ValueError(
                f"SearchTuning: query_max_side = {self.query_max_side!r} is invalid: "
                "expected an integer >= 16"
            )
        levels = self.registration_levels
        if not levels or any(
            len(level) != 2 or int(level[0]) < 8 or not level[1] > 0 for level in levels
        ):
            raise ValueError(
                f"SearchTuning: registration_levels = {levels!r} is invalid: expected "
                "(grid side >= 8, sigma > 0) pairs, coarse to fine"
            )
        if not self.texture_sigma > 0 or not 0 < self.axis_turn_step < 360:
            raise ValueError(
                f"SearchTuning: texture_sigma = {self.texture_sigma!r} and axis_turn_step = "
                f"{self.axis_turn_step!r}: expected sigma > 0 and a step in (0, 360) degrees"
            )

    @property
    def weights(self) -> dict[str, float]:
        """The ``combined`` score's weights, by score name."""
        return {"texture": self.texture_weight, "ncc": self.ncc_weight}


_TUNING_COUNTS = (
    "query_max_side",
    "short_evals",
    "full_evals",
    "neighbour_poses",
    "neighbour_starts",
    "neighbour_evals",
    "axis_turn_poses",
    "axis_turn_starts",
    "wide_search",
    "wide_around",
    "registration_threads",
    "registration_chunk",
)
#: the tuning :func:`match` uses unless given another
TUNING = SearchTuning()


@dataclass(frozen=True)
class Reading:
    """One way to read a query image before matching it.

    Attributes
    ----------
    name : str
        Reported with each match (``Match.reading``).
    sigma : float
        Smoothing of the query's segmentation
        (:func:`foramlib.dataset.preprocess.segment_silhouette`); its intensities are kept.
    bright_removed : bool
        Replace the query's brightest class by background first
        (:func:`foramlib.dataset.preprocess.remove_bright_class`).
    """

    name: str
    sigma: float = 1.0
    bright_removed: bool = False


READINGS = (
    Reading("as given"),
    Reading("smoothed outline", sigma=2.7),
    Reading("brightest class removed", bright_removed=True),
)
# searched wide too when a query stays weak: smoothing rescues most faint outlines
WIDE_READINGS = (READINGS[1],)


class MatchError(ValueError):
    """An index or query that cannot be matched (wrong version, empty, bad input)."""


@dataclass(frozen=True)
class IndexConfig:
    """How candidate sections of each volume are cut and described.

    Parameters
    ----------
    n_orientations : int
        Plane normals, spread evenly over the hemisphere (Fibonacci lattice).
    n_offsets : int
        Parallel planes per normal, stratified over the specimen's extent.
    descriptor_size : int
        Side of the low-resolution canonical silhouette used in the coarse stage.
    preprocess : PreprocessConfig
        Applied to every candidate and every query; its ``size`` is the side of the
        images the descriptors are computed on.
    smooth_sigma, dense_factor : float
        Volume preparation, as in :func:`foramlib.dataset.slicing.slice_volume`.
    fine_size : int
        Side of the matched section returned with each match (sampled from the
        volume in the query's frame) and of the grid its Dice and SSIM are taken on.
    """

    n_orientations: int = 300
    n_offsets: int = 9
    descriptor_size: int = 32
    preprocess: PreprocessConfig = PreprocessConfig(size=64)
    smooth_sigma: float = 0.8
    dense_factor: float | None = DENSE_FACTOR
    fine_size: int = 128

    def __post_init__(self) -> None:
        for name, low in (
            ("n_orientations", 1),
            ("n_offsets", 1),
            ("descriptor_size", 8),
            ("fine_size", 16),
        ):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.preprocess, PreprocessConfig):
            raise ValueError(f"preprocess must be a PreprocessConfig, got {self.preprocess!r}")
        if not (np.isfinite(self.smooth_sigma) and self.smooth_sigma >= 0):
            raise ValueError(f"smooth_sigma must be >= 0, got {self.smooth_sigma!r}")

    def as_dict(self) -> dict:
        """Plain dict (preprocessing included, with its version) for the index file."""
        out = asdict(self)
        out["preprocess"] = self.preprocess.as_dict()
        return out

    @classmethod
    def from_params(cls, params: Mapping) -> IndexConfig:
        """The ``index`` stage's configuration from a validated ``params.yaml``.

        ``match`` gives the lattice and the sizes, ``slice`` the volume preparation
        (the same denoising and dense-inclusion removal as the slice dataset), so
        ``foram index`` builds the index ``dvc repro index`` builds.

        Examples
        --------
        >>> params = {"match": {"n_orientations": 20, "n_offsets": 3, "size": 32,
        ...                     "descriptor_size": 16},
        ...           "slice": {"smooth_sigma": 0.5, "dense_factor": None}}
        >>> c = IndexConfig.from_params(params)
        >>> (c.n_orientations, c.preprocess.size, c.dense_factor)
        (20, 32, None)
        """
        try:
            m, s = params["match"], params["slice"]
            return cls(
                n_orientations=m["n_orientations"],
                n_offsets=m["n_offsets"],
                descriptor_size=m["descriptor_size"],
                preprocess=PreprocessConfig(size=m["size"]),
                smooth_sigma=s["smooth_sigma"],
                dense_factor=s["dense_factor"],
            )
        except KeyError as err:
            raise ValueError(f"params lack {err.args[0]!r} (match and slice sections)") from None

    @classmethod
    def from_dict(cls, d: Mapping) -> IndexConfig:
        """Inverse of :meth:`as_dict` (the preprocessing version key is dropped)."""
        pp = {k: v for k, v in dict(d["preprocess"]).items() if k != "version"}
        rest = {k: v for k, v in d.items() if k != "preprocess"}
        return cls(preprocess=PreprocessConfig(**pp), **rest)


# ----------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedVolume:
    """A volume ready for cutting: smoothed, dense inclusions removed, normalised.

    ``points`` is a sample of foreground voxel coordinates; ``window`` the section side
    that covers the specimen whatever the plane.
    """

    data: np.ndarray
    background: float
    threshold: float
    points: np.ndarray
    window: int

    @property
    def centre(self) -> np.ndarray:
        return (np.asarray(self.data.shape, np.float64) - 1.0) / 2.0

    @property
    def nbytes(self) -> int:
        """Memory held by its arrays (what a cache of prepared volumes weighs)."""
        return int(self.data.nbytes + self.points.nbytes)

    @cached_property
    def principal_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """The foreground's centroid (3,) and principal axes (3, 3), one per row."""
        centroid = self.points.mean(axis=0)
        _, vectors = np.linalg.eigh(np.cov((self.points - centroid).T))
        return centroid, vectors.T


def prepare_volume(volume, config: IndexConfig = IndexConfig(), name: str = "volume"):
    """Prepare a raw volume as :func:`foramlib.dataset.slicing.slice_volume` does.

    Raises
    ------
    MatchError
        If the volume is not 3-D or nothing in it stands out from the background.
    """
    data = np.asarray(volume)
    if data.ndim != 3 or data.dtype.kind not in "uif" or min(data.shape) < 8:
        raise MatchError(
            f"{name}: expected a numeric 3-D volume at least 8 voxels along each axis, got "
            f"{data.dtype} {data.shape}"
        )
    try:
        data, background, threshold, fg = prepare_slicing_volume(
            data, smooth_sigma=config.smooth_sigma, dense_factor=config.dense_factor, name=name
        )
    except SliceError as exc:
        raise MatchError(str(exc)) from None
    rng = np.random.default_rng(0)
    fg = fg[rng.choice(len(fg), size=min(len(fg), 20_000), replace=False)].astype(np.float64)
    centre = (np.asarray(data.shape, np.float64) - 1.0) / 2.0
    radius = float(np.max(np.linalg.norm(fg - centre, axis=1))) + 3.0
    return PreparedVolume(data, background, threshold, fg, int(np.ceil(2 * radius)))


def candidate_planes(prepared: PreparedVolume, n_orientations: int, n_offsets: int):
    """Planes (angle 0): Fibonacci normals × offsets at stratum midpoints of the extent.

    Offsets split the 2nd-98th percentile range of the foreground's projection on
    the normal into `n_offsets` equal strata and take their centres.
    """
    rel = prepared.points - prepared.centre
    planes = []
    for n in fibonacci_hemisphere(n_orientations):
        lo, hi = np.percentile(rel @ n, [2.0, 98.0])
        for off in lo + (hi - lo) * (np.arange(n_offsets) + 0.5) / n_offsets:
            planes.append(Plane(tuple(n), float(off), 0.0))
    return planes


# ----------------------------------------------------------------------------------------
# Descriptors
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Features:
    """What the matcher knows about one preprocessed section.

    ``centroid`` (row, col) and ``radius`` (radius of gyration, pixels) of the
    silhouette; ``orientation`` of its principal axis (radians); ``canonical`` the
    low-resolution silhouette in the canonical frame; ``hu``, ``radial``, ``fourier`` and
    ``texture`` (radial profile and angular Fourier magnitudes of the high-passed image)
    the raw rotation-invariant descriptor blocks.
    """

    centroid: tuple[float, float]
    radius: float
    orientation: float
    canonical: np.ndarray
    hu: np.ndarray
    radial: np.ndarray
    fourier: np.ndarray
    texture: np.ndarray

    def vector(self) -> np.ndarray:
        """Raw descriptor vector (each block L2-normalised and weighted)."""
        return np.concatenate(
            [_unit(getattr(self, name)) * np.sqrt(w) for name, w in _BLOCK_WEIGHTS]
        ).astype(np.float32)


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def silhouette(image: np.ndarray) -> np.ndarray:
    """Silhouette of a preprocessed uint8 section: non-zero pixels, holes filled."""
    mask = np.asarray(image) > 0
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=1) | mask)


def _polar(img: np.ndarray, centroid, radius: float) -> np.ndarray:
    rho = np.linspace(0.1, RHO_MAX, N_RADII) * radius
    phi = 2 * np.pi * np.arange(N_ANGLES) / N_ANGLES
    xs = (centroid[1] + rho[:, None] * np.cos(phi)[None, :]).astype(np.float32)
    ys = (centroid[0] + rho[:, None] * np.sin(phi)[None, :]).astype(np.float32)
    return cv2.remap(
        img.astype(np.float32), xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def _canonical_transform(centroid, radius, angle_rad, flip, out_size) -> np.ndarray:
    """2×3 affine mapping an image onto the canonical frame of side `out_size`.

    The canonical frame has the centroid in the middle, the radius of gyration at
    ``out_size / (2 * RHO_MAX)`` pixels, turned by `angle_rad` and mirrored
    top-to-bottom when `flip`.
    """
    s = out_size / (2.0 * RHO_MAX * radius)
    c, si = np.cos(angle_rad), np.sin(angle_rad)
    rot = np.array([[c, -si], [si, c]]) * s  # acts on (x, y)
    if flip:
        rot = np.diag([1.0, -1.0]) @ rot
    mid = (out_size - 1) / 2.0
    src = np.array([centroid[1], centroid[0]])
    return np.hstack([rot, (np.array([mid, mid]) - rot @ src)[:, None]])


def to_canonical(img, centroid, radius, angle_rad=0.0, flip=False, out_size=64) -> np.ndarray:
    """Warp `img` into the canonical frame (see :func:`_canonical_transform`)."""
    m = _canonical_transform(centroid, radius, angle_rad, flip, out_size)
    return cv2.warpAffine(
        np.asarray(img, np.float32), m, (out_size, out_size), flags=cv2.INTER_LINEAR
    )


def _moments(sil: np.ndarray) -> tuple[tuple[float, float], float, float]:
    """Centroid (row, col), radius of gyration and principal-axis angle of a mask."""
    rr, cc = np.nonzero(sil)
    centroid = (float(rr.mean()), float(cc.mean()))
    dr, dc = rr - centroid[0], cc - centroid[1]
    radius = float(np.sqrt(np.mean(dr**2 + dc**2))) + 1e-6
    orientation = 0.5 * float(np.arctan2(2 * np.mean(dr * dc), np.mean(dc**2) - np.mean(dr**2)))
    return centroid, radius, orientation


def describe(image, descriptor_size: int = 32) -> Features:
    """Rotation- and mirror-invariant features of a preprocessed section.

    Parameters
    ----------
    image : 2-D array
        A preprocessed section (uint8, background 0) or a boolean silhouette.
    descriptor_size : int
        Side of the canonical low-resolution silhouette.

    Raises
    ------
    MatchError
        If the image has no silhouette.
    """
    img = np.asarray(image, np.float32)
    sil = silhouette(img)
    area = float(sil.sum())
    if area < 4:
        raise MatchError(f"section has no silhouette to describe ({area:g} pixels)")
    centroid, radius, orientation = _moments(sil)
    inside = img[sil]
    scale = float(inside.mean()) if inside.mean() > 0 else 1.0
    p_img = _polar(img / scale, centroid, radius)
    p_sil = _polar(sil.astype(np.float32), centroid, radius)
    mu = moments_central(sil.astype(np.float64))
    hu = np.log10(np.abs(moments_hu(moments_normalized(mu, 3))) + 1e-12)
    radial = np.concatenate([p_sil.mean(axis=1), p_img.mean(axis=1)])
    spec = [
        np.abs(np.fft.rfft(p, axis=1))[:, 1 : N_HARMONICS + 1] / N_ANGLES for p in (p_sil, p_img)
    ]
    # internal structure (walls, septa), which tells poses of one outline apart
    hp = img / scale - cv2.GaussianBlur(img / scale, (0, 0), DESCRIBE_TEXTURE_SIGMA)
    p_tex = _polar(hp, centroid, radius)
    tex = np.concatenate(
        [
            np.abs(p_tex).mean(axis=1),
            (np.abs(np.fft.rfft(p_tex, axis=1))[:, 1 : N_HARMONICS + 1] / N_ANGLES).ravel(),
        ]
    )
    canonical = to_canonical(sil, centroid, radius, -orientation, False, descriptor_size) > 0.5
    return Features(
        centroid,
        radius,
        orientation,
        canonical,
        hu.astype(np.float32),
        radial.astype(np.float32),
        np.concatenate([s.ravel() for s in spec]).astype(np.float32),
        tex.astype(np.float32),
    )


# ----------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------
_ARRAYS = (
    "specimen",
    "species",
    "normals",
    "offsets",
    "descriptors",
    "canonical",
    "geometry",
    "desc_mean",
    "desc_std",
    "desc_basis",
)
_PREPARED_CACHE = 24  # prepared volumes kept per index (about 8 MB each at 128³)


@dataclass(eq=False)
class MatchIndex:
    """Candidate section planes of a set of volumes with compact descriptors.

    One row per candidate: ``specimen``/``species`` (str), ``normals`` (n, 3) and
    ``offsets`` (n,) of the plane, ``descriptors`` (n, k) standardised, projected and
    L2-normalised descriptors, ``canonical`` (n, descriptor_size² / 8) the bit-packed
    canonical silhouettes, ``geometry`` (n, 4) the silhouette's centroid (offsets along
    the plane's axes from its centre point, voxels), radius of gyration (voxels) and
    principal-axis angle (radians), from which a query's start pose is set.
    ``desc_mean``/``desc_std``/``desc_basis`` map a raw descriptor
    (:meth:`Features.vector`) into the index's space. Build one with
    :func:`build_index`; matching samples the volumes themselves.
    """

    config: IndexConfig
    specimen: np.ndarray
    species: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    descriptors: np.ndarray
    canonical: np.ndarray
    geometry: np.ndarray
    desc_mean: np.ndarray
    desc_std: np.ndarray
    desc_basis: np.ndarray
    _prepared: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        n = len(self.specimen)
        if n == 0:
            raise MatchError("an index needs at least one candidate section")
        for name in ("species", "normals", "offsets", "descriptors", "canonical", "geometry"):
            if len(getattr(self, name)) != n:
                raise MatchError(
                    f"index array {name!r} has {len(getattr(self, name))} rows, not {n}"
                )
        self.descriptors = np.asarray(self.descriptors, np.float32)

    @classmethod
    def from_raw(
        cls, config, specimen, species, normals, offsets, raw, canonical, geometry
    ) -> MatchIndex:
        """Index from raw descriptor rows, boolean canonical silhouettes and geometry."""
        raw = np.asarray(raw, np.float32)
        mean = raw.mean(axis=0, dtype=np.float64)
        std = raw.std(axis=0, dtype=np.float64) + 1e-6
        k = min(DESCRIPTOR_DIMS, raw.shape[1], max(1, raw.shape[0] - 1))
        # principal directions of the standardised descriptors (SVD of a sample is
        # enough: the covariance of a few thousand rows is well estimated)
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(raw), size=min(len(raw), 20_000), replace=False))
        sample = (raw[pick] - mean) / std
        basis = np.linalg.svd(sample - sample.mean(axis=0), full_matrices=False)[2][:k].T
        out = cls(
            config,
            np.asarray(specimen).astype(str),
            np.asarray(species).astype(str),
            np.asarray(normals, np.float32),
            np.asarray(offsets, np.float32),
            np.zeros((len(raw), k), np.float32),
            np.packbits(np.asarray(canonical, bool).reshape(len(raw), -1), axis=1),
            np.asarray(geometry, np.float16),
            mean.astype(np.float32),
            std.astype(np.float32),
            basis.astype(np.float32),
        )
        # stored as float16: round here so a loaded index scores exactly like this one
        out.descriptors = out.standardise(raw).astype(np.float16).astype(np.float32)
        return out

    def __len__(self) -> int:
        return len(self.specimen)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """Map raw descriptor rows into the index's space (standardise, project, L2)."""
        raw = np.atleast_2d(raw)
        out = np.empty((len(raw), self.desc_basis.shape[1]), np.float32)
        for start in range(0, len(raw), 8192):  # in blocks: bounded memory on big builds
            z = (np.asarray(raw[start : start + 8192], np.float64) - self.desc_mean) / self.desc_std
            z = z @ self.desc_basis
            z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
            out[start : start + len(z)] = z
        return out

    def canonical_masks(self, rows: np.ndarray) -> np.ndarray:
        """Unpacked canonical silhouettes of `rows`, float32 (len(rows), size²)."""
        size = self.config.descriptor_size
        bits = np.unpackbits(self.canonical[rows], axis=1, count=size * size)
        return bits.astype(np.float32)

    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        return int(sum(getattr(self, name).nbytes for name in _ARRAYS))

    def prepared(self, specimen_id: str, volumes: Mapping) -> PreparedVolume:
        """The prepared volume of `specimen_id` from `volumes`, cached per index.

        Raises
        ------
        MatchError
            If `volumes` has no entry for the specimen.
        """
        vol = volumes.get(specimen_id) if volumes is not None else None
        if vol is None:
            raise MatchError(
                f"matching needs the volume of specimen {specimen_id!r}: pass "
                "volumes={specimen_id: array} (see foramlib.matching.index.load_collection)"
            )
        if isinstance(vol, PreparedVolume):
            return vol
        key = (specimen_id, id(vol))
        if key in self._prepared:
            self._prepared.move_to_end(key)
            return self._prepared[key][1]
        prepared = prepare_volume(vol, self.config, specimen_id)
        # keep a reference to the raw array so its id() cannot be reused while cached
        self._prepared[key] = (vol, prepared)
        while len(self._prepared) > _PREPARED_CACHE:
            self._prepared.popitem(last=False)
        return prepared

    def save(self, path) -> Path:
        """Write one ``.npz`` atomically, with the preprocessing version and config."""
        meta = dict(
            format=INDEX_FORMAT,
            preprocess_version=PREPROCESS_VERSION,
            descriptor_length=int(len(self.desc_mean)),
            config=self.config.as_dict(),
        )
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        # names as codes into a table: a few bytes a candidate instead of a string each
        for name in ("specimen", "species"):
            table, codes = np.unique(arrays.pop(name).astype(str), return_inverse=True)
            arrays[f"{name}_names"], arrays[f"{name}_codes"] = table, codes.astype(np.int32)
        arrays["descriptors"] = arrays["descriptors"].astype(np.float16)
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        return path

    @classmethod
    def load(cls, path, config: IndexConfig | None = None) -> MatchIndex:
        """Read an index written by :meth:`save`.

        Raises
        ------
        MatchError
            If the file is not an index, was built with another preprocessing version
            or index format, or (when `config` is given) with another configuration.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = None
                if all(name in z for name in _ARRAYS[2:]):
                    arrays = {name: z[name] for name in _ARRAYS[2:]}
                    for name in ("specimen", "species"):
                        arrays[name] = z[f"{name}_names"][z[f"{name}_codes"]]
        except (OSError, KeyError, ValueError) as exc:
            raise MatchError(f"{path}: not a match index ({exc})") from None
        if meta.get("preprocess_version") != PREPROCESS_VERSION:
            raise MatchError(
                f"{path}: index built with preprocessing version "
                f"{meta.get('preprocess_version')!r}; rebuild it (current version is "
                f"{PREPROCESS_VERSION})"
            )
        if meta.get("format") != INDEX_FORMAT or arrays is None:
            raise MatchError(
                f"{path}: index format {meta.get('format')!r}, this version reads format "
                f"{INDEX_FORMAT}; rebuild it"
            )
        if len(arrays["desc_mean"]) != descriptor_length():
            raise MatchError(
                f"{path}: index descriptors have {len(arrays['desc_mean'])} values, this "
                f"version computes {descriptor_length()}; rebuild it"
            )
        built = IndexConfig.from_dict(meta["config"])
        if config is not None and built != config:
            raise MatchError(f"{path}: index built with {built}, not {config}; rebuild it")
        return cls(built, **arrays)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def descriptor_length() -> int:
    """Length of :meth:`Features.vector` in this version (a check on loaded indexes)."""
    return 7 + 2 * N_RADII + 2 * N_RADII * N_HARMONICS + N_RADII * (1 + N_HARMONICS)


def _sections(prepared: PreparedVolume, planes) -> np.ndarray:
    """``extract_slices(prepared.data, planes, prepared.window)``, with the faster
    sampler of the registration."""
    t = np.arange(prepared.window) - (prepared.window - 1) / 2.0  # as extract_slices'
    dy, dx = np.meshgrid(t, t, indexing="ij")
    normals = np.array([p.normal for p in planes], np.float64)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    offsets = np.array([p.offset for p in planes], np.float64)
    axes = np.stack(
        [np.stack(plane_axes(n, p.angle)) for n, p in zip(normals, planes, strict=True)]
    )
    return sample_grid(
        prepared.data,
        prepared.background,
        prepared.centre + offsets[:, None] * normals,
        axes,
        np.ones(len(planes)),
        np.stack([dx.ravel(), dy.ravel()]),
    ).reshape(len(planes), prepared.window, prepared.window)


def _cut_volume(prepared: PreparedVolume, planes, config: IndexConfig, name: str):
    """Cut and preprocess `planes`; return kept plane indices, their images and boxes.

    Each section is preprocessed as a query is, on its own background and threshold
    (not the volume's): a thin wall that the volume's threshold loses in one
    section is kept by the query's own, and the coarse stage compares silhouettes and
    the start poses take their scale from them, so both sides must be read alike.
    Boxes are the preprocessing's crop boxes (r0, r1, c0, c1) in section pixels
    (voxels).
    """
    pp = config.preprocess
    kept, images, boxes = [], [], []
    for start in range(0, len(planes), 64):
        batch = planes[start : start + 64]
        secs = _sections(prepared, batch)
        for i, sec in enumerate(secs):
            try:
                img, info = preprocess_slice(sec, pp, name=name)
            except PreprocessError:
                continue
            if info.fraction >= pp.min_fraction:
                kept.append(start + i)
                images.append(img)
                boxes.append(info.box)
    return kept, images, boxes


def build_index(volumes: Sequence, config: IndexConfig = IndexConfig(), progress=None):
    """Index the candidate sections of ``(specimen_id, species, volume)`` triples.

    Parameters
    ----------
    volumes : iterable of (str, str, 3-D array)
    config : IndexConfig
    progress : callable, optional
        Called as ``progress(done, specimen_id)`` after each volume.

    Returns
    -------
    MatchIndex

    Raises
    ------
    MatchError
        If a volume is unusable or no volume yields a candidate.
    """
    parts = []
    for done, item in enumerate(volumes, start=1):
        try:
            spec, species, volume = item
        except (TypeError, ValueError):
            raise MatchError(
                f"volumes must be (specimen_id, species, volume) triples, got {item!r:.80}"
            ) from None
        parts.append(index_volume(spec, species, volume, config))
        if progress is not None:
            progress(done, str(spec))
    return index_from_parts(parts, config)


_PART_KEYS = ("specimen", "species", "normals", "offsets", "raw", "canonical", "geometry")


def index_volume(specimen_id, species, volume: np.ndarray, config: IndexConfig) -> dict:
    """The candidate sections of one volume, described for the index.

    The per-volume half of :func:`build_index`, so that volumes can be indexed in
    separate processes (or on a Dask cluster) and joined by :func:`index_from_parts`.

    Returns
    -------
    dict
        Lists ``specimen``, ``species``, ``normals``, ``offsets``, ``raw``,
        ``canonical`` and ``geometry``, one entry per kept section.
    """
    cols = {k: [] for k in _PART_KEYS}
    prepared = prepare_volume(volume, config, name=str(specimen_id))
    planes = candidate_planes(prepared, config.n_orientations, config.n_offsets)
    kept, images, boxes = _cut_volume(prepared, planes, config, str(specimen_id))
    for k, img, box in zip(kept, images, boxes, strict=True):
        f = describe(img, config.descriptor_size)
        cols["geometry"].append(
            _geometry(
                f.centroid,
                f.radius,
                f.orientation,
                box,
                config.preprocess.size,
                prepared.window,
            )
        )
        cols["specimen"].append(str(specimen_id))
        cols["species"].append(str(species))
        cols["normals"].append(planes[k].normal)
        cols["offsets"].append(planes[k].offset)
        cols["raw"].append(f.vector())
        cols["canonical"].append(f.canonical.ravel())
    return cols


def index_from_parts(parts: Sequence[dict], config: IndexConfig):
    """Join :func:`index_volume` results, in order, into one :class:`MatchIndex`."""
    cols = {k: [v for part in parts for v in part[k]] for k in _PART_KEYS}
    if not cols["specimen"]:
        raise MatchError("no volume yielded a usable candidate section")
    return MatchIndex.from_raw(
        config,
        cols["specimen"],
        cols["species"],
        cols["normals"],
        cols["offsets"],
        np.stack(cols["raw"]),
        np.stack(cols["canonical"]),
        np.stack(cols["geometry"]),
    )


def _geometry(centroid, radius: float, orientation: float, box, size: int, window: int):
    """Silhouette centroid (u, v offsets from the plane's centre point, voxels), radius
    of gyration (voxels) and principal-axis angle of an indexed section, from those of
    its preprocessed image (`size` pixels) cut from crop `box` of the section."""
    k = (box[1] - box[0]) / size  # voxels per image pixel
    mid = (window - 1) / 2.0
    row = box[0] + (centroid[0] + 0.5) * k - 0.5
    col = box[2] + (centroid[1] + 0.5) * k - 0.5
    return (col - mid, row - mid, radius * k, orientation)


# ----------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------
@dataclass
class Match:
    """One answer: where the query sits, how well it fits, and the matched section.

    ``scores`` holds ``texture`` (correlation of the high-passed images: chamber walls
    and septa) and ``ncc`` (correlation of the intensities), which the registration
    maximises, their weighted sum ``combined`` (``SearchTuning.weights``, what ranks the
    matches), and for information ``dice`` (silhouettes), ``ssim`` and
    ``descriptor`` (cosine in the index's descriptor space). ``image`` is the matched
    section, preprocessed, in the query's frame (same turn, shift and scale).
    ``reading`` names the reading of the query that was matched (see ``READINGS``).
    """

    specimen_id: str
    species: str
    normal: tuple[float, float, float]
    offset: float
    angle_deg: float
    scores: dict
    image: np.ndarray = field(repr=False)
    reading: str = READINGS[0].name


@dataclass
class _Query:
    descriptor: np.ndarray
    canon: np.ndarray  # (4, d²) canonical silhouettes under the axis ambiguities
    centroid: np.ndarray  # (row, col) of the silhouette in crop pixels
    radius: float  # radius of gyration, crop pixels
    orientation: float  # principal axis, radians
    templates: list  # registration pyramid (coarse to fine), then the fine_size grid
    silhouette: np.ndarray  # (fine_size, fine_size) on the last template's grid
    crop: np.ndarray  # query intensities on that grid, NaN outside the image
    box: tuple  # the crop's (row0, row1, col0, col1) in the image
    tuning: SearchTuning  # how hard it is searched (the pyramid above follows it)


@dataclass
class _Pose:
    """A pose of the query in one specimen and its registration score."""

    specimen_id: str
    species: str
    pose: SectionPose
    score: float
    centre: np.ndarray

    @cached_property
    def plane(self) -> Plane:
        return self.pose.plane(self.centre)


def _prepare_query(
    index: MatchIndex, image, reading: Reading = READINGS[0], tuning: SearchTuning = TUNING
) -> _Query:
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind not in "uifb":
        raise MatchError(f"query must be a numeric image array, got dtype {arr.dtype}")
    cfg = index.config
    if reading.bright_removed:
        arr = remove_bright_class(to_gray_float(arr, "query"))
        if arr is None:
            raise MatchError("query: no bright class to remove")
    img, info = preprocess_slice(arr, cfg.preprocess, name="query", sigma=reading.sigma)
    if info.fraction < cfg.preprocess.min_fraction / 4:
        raise MatchError(
            f"query: the fossil covers only {info.fraction:.3%} of the image; nothing to match"
        )
    f = describe(img, cfg.descriptor_size)
    c = f.canonical
    canon = np.stack([c, c[::-1, ::-1], c[::-1], c[:, ::-1]]).reshape(4, -1).astype(np.float32)
    # the query's own intensities over its crop box (not masked: the volume is not
    # either), NaN where the box runs past the image
    gray = to_gray_float(arr, "query")
    r0, r1, c0, c1 = info.box
    side = r1 - r0
    crop = np.full((side, side), np.nan, np.float32)
    a0, b0 = max(r0, 0), max(c0, 0)
    a1, b1 = min(r1, gray.shape[0]), min(c1, gray.shape[1])
    crop[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = gray[a0:a1, b0:b1]
    k = side / cfg.preprocess.size  # crop pixels per index pixel
    centroid = (np.asarray(f.centroid) + 0.5) * k - 0.5
    sil = silhouette(img).astype(np.float32)
    sil = cv2.resize(sil, (side, side), interpolation=cv2.INTER_LINEAR) > 0.5
    levels = [*tuning.registration_levels, (cfg.fine_size, tuning.texture_sigma)]
    try:
        templates = [make_template(crop, sil, centroid, g, sigma) for g, sigma in levels]
    except ValueError as exc:
        raise MatchError(f"query: {exc}") from None
    fine = templates[-1]
    fine_crop = cv2.resize(crop, (cfg.fine_size,) * 2, interpolation=cv2.INTER_AREA)
    return _Query(
        index.standardise(f.vector())[0],
        canon,
        centroid,
        f.radius * k,
        f.orientation,
        templates,
        fine.inside.reshape(fine.shape),
        np.where(fine.valid.reshape(fine.shape), fine_crop, np.nan),
        info.box,
        tuning,
    )


def _select(index: MatchIndex, specimens, species) -> np.ndarray:
    keep = np.ones(len(index), bool)
    for name, values, col in (
        ("specimens", specimens, index.specimen),
        ("species", species, index.species),
    ):
        if values is None:
            continue
        values = [values] if isinstance(values, str) else list(values)
        unknown = sorted(set(values) - set(col.tolist()))
        if unknown:
            raise MatchError(f"{name} not in the index: {unknown}")
        keep &= np.isin(col, values)
    return np.flatnonzero(keep)


def _coarse(index: MatchIndex, q: _Query, rows: np.ndarray, coarse_k: int):
    """Top `coarse_k` rows by descriptor cosine and canonical-silhouette Dice
    (``SearchTuning.coarse_descriptor_weight``)."""
    cos = index.descriptors[rows] @ q.descriptor
    short = rows[np.argsort(-cos)[: max(8 * coarse_k, 400)]]
    cos_s = index.descriptors[short] @ q.descriptor
    can = index.canonical_masks(short)
    inter = can @ q.canon.T  # (m, 4)
    dice = (2 * inter / (can.sum(1)[:, None] + q.canon.sum(1)[None, :] + 1e-9)).max(axis=1)
    w = q.tuning.coarse_descriptor_weight
    score = w * cos_s + (1.0 - w) * dice
    order = np.argsort(-score)[:coarse_k]
    return short[order]


def _rot2(a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


# the canonical frame's axis ambiguities, acting on (x, y): as in _Query.canon
_AMBIGUITIES = (np.eye(2), -np.eye(2), np.diag([1.0, -1.0]), np.diag([-1.0, 1.0]))


def _start_poses(q: _Query, normals, offsets, geometry, centre):
    """Poses putting the query on candidate sections, one per canonical-frame ambiguity.

    Centroids coincide, radii of gyration set the scale and principal axes the turn:
    query offsets ``d`` (crop pixels) map to candidate section offsets
    ``k · R(θc) · T · R(-θq) · d`` (voxels), with ``T`` an axis ambiguity.

    Parameters
    ----------
    normals, offsets, geometry : arrays (m, 3), (m,), (m, 4)
        The candidates' planes (angle 0) and silhouette geometry (see ``_geometry``).

    Returns
    -------
    origin (4m, 3), axes (4m, 2, 3), scale (4m,)
        Row-major over (candidate, ambiguity).
    """
    geo = np.asarray(geometry, np.float64)
    n = np.asarray(normals, np.float64)
    n = n / np.linalg.norm(n, axis=1, keepdims=True)
    # plane_axes(n, 0) for every row at once
    ref = np.eye(3)[np.argmin(np.abs(n), axis=1)]
    u0 = ref - n * np.sum(ref * n, axis=1, keepdims=True)
    u0 /= np.linalg.norm(u0, axis=1, keepdims=True)
    v0 = np.cross(n, u0)
    offsets = np.asarray(offsets, np.float64)[:, None]
    origin = np.asarray(centre) + offsets * n + geo[:, :1] * u0 + geo[:, 1:2] * v0
    scale = geo[:, 2] / q.radius
    cos, sin = np.cos(geo[:, 3]), np.sin(geo[:, 3])
    rot_c = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)  # (m, 2, 2)
    m = np.einsum("rij,ajk->raik", rot_c, np.stack(_AMBIGUITIES) @ _rot2(-q.orientation))
    # U = m00 u0 + m10 v0, V = m01 u0 + m11 v0
    axes = np.einsum("raki,rkc->raic", m, np.stack([u0, v0], 1))
    k = len(_AMBIGUITIES)
    return np.repeat(origin, k, axis=0), axes.reshape(-1, 2, 3), np.repeat(scale, k)


def plane_error(
    normal, other_normal, offset: float = 0.0, other_offset: float = 0.0
) -> tuple[float, float]:
    """How far one section plane is from another: (angle in degrees, offset in voxels).

    A plane and its flipped twin (``-normal``, ``-offset``) are the same section, so the
    angle is between the unsigned normals (0–90°) and the offsets are compared on the
    same side. Normals are unit vectors.

    Examples
    --------
    >>> plane_error((0, 0, 1), (0, 0, -1), 3.0, -2.0)
    (0.0, 1.0)
    >>> round(plane_error((1, 0, 0), (0, 1, 0))[0], 1)
    90.0
    """
    cos = float(np.dot(np.asarray(normal, float), np.asarray(other_normal, float)))
    sign = 1.0 if cos >= 0 else -1.0
    angle = float(np.degrees(np.arccos(min(1.0, abs(cos)))))
    return angle, float(abs(sign * float(offset) - float(other_offset)))


def _same_pose(a: _Pose, b: _Pose, max_deg: float = 6.0, max_vox: float = 2.0) -> bool:
    if a.specimen_id != b.specimen_id:
        return False
    pa, pb = a.plane, b.plane
    angle, offset = plane_error(pa.normal, pb.normal, pa.offset, pb.offset)
    return bool(angle <= max_deg and offset <= max_vox)


def _distinct(poses: list[_Pose], limit: int | None = None) -> list[_Pose]:
    """Best first, dropping poses within a few degrees and voxels of a better one."""
    out: list[_Pose] = []
    for p in sorted(poses, key=lambda p: -p.score):
        if not any(_same_pose(p, o) for o in out):
            out.append(p)
            if limit is not None and len(out) >= limit:
                break
    return out


def _scored_poses(q: _Query, pv, spec, species, origin, axes, scale) -> list[_Pose]:
    """Poses given as arrays (see ``_start_poses``), scored at the coarsest level."""
    tex, ncc = batch_scores(pv.data, pv.background, origin, axes, scale, q.templates[0])
    score = q.tuning.texture_weight * tex + q.tuning.ncc_weight * ncc
    return [
        _Pose(spec, species, SectionPose(origin[i], axes[i], float(scale[i])), s, pv.centre)
        for i, s in enumerate(score.tolist())
    ]


def _screened_starts(q: _Query, pv, spec, species, normals, offsets, geometry) -> list[_Pose]:
    """The start poses on candidate sections of one specimen, scored at the coarsest
    level."""
    origin, axes, scale = _start_poses(q, normals, offsets, geometry, pv.centre)
    return _scored_poses(q, pv, spec, species, origin, axes, scale)


def _section_geometry(pv: PreparedVolume, normal, offsets, config: IndexConfig):
    """Silhouette geometry (as the index's) of sections parallel to a plane.

    Returns the offsets whose section holds enough of the fossil, and their geometry
    (k, 4).
    """
    planes = [Plane(tuple(normal), float(o), 0.0) for o in offsets]
    kept, images, boxes = _cut_volume(pv, planes, config, "section")
    geometry = [
        _geometry(*_moments(silhouette(img)), box, config.preprocess.size, pv.window)
        for img, box in zip(images, boxes, strict=True)
    ]
    return np.asarray(offsets, np.float64)[kept], np.array(geometry).reshape(-1, 4)


def _neighbours(index, q: _Query, poses, volumes, spent) -> list[_Pose]:
    """Register start poses on the sections parallel to `poses`, a few voxels away.

    For each pose, the parallel sections at ``neighbour_offsets`` are measured and
    screened like index candidates; the best few distinct starts are registered in
    full, and so is the pose itself turned by 180° in its plane (a near-symmetric
    section registers to a local optimum that way round, and the earlier stages keep
    one turn per plane).
    """
    starts = []
    for p in poses:
        starts.append(replace(p, pose=SectionPose(p.pose.origin, -p.pose.axes, p.pose.scale)))
        pv = index.prepared(p.specimen_id, volumes)
        plane = p.plane
        offsets, geometry = _section_geometry(
            pv, plane.normal, plane.offset + np.asarray(q.tuning.neighbour_offsets), index.config
        )
        if not len(offsets):
            continue
        normals = np.repeat(np.asarray(plane.normal)[None], len(offsets), axis=0)
        screened = _screened_starts(q, pv, p.specimen_id, p.species, normals, offsets, geometry)
        starts += _distinct(screened, q.tuning.neighbour_starts)
    return _registered_starts(index, q, starts, volumes, spent)


def _registered_starts(index, q: _Query, starts: list[_Pose], volumes, spent) -> list[_Pose]:
    """`starts` registered over the pyramid (``neighbour_evals``); those the time budget
    left unregistered are dropped (their scores are on the coarse level: not
    comparable)."""
    unregistered = list(starts)
    _register_all(
        index, q, starts, volumes, slice(0, len(q.tuning.registration_levels)),
        q.tuning.neighbour_evals, spent, lambda f: None,
    )  # fmt: skip
    return [p for p, s in zip(starts, unregistered, strict=True) if p is not s]


def _axis_turns(index, q: _Query, poses, volumes, spent) -> list[_Pose]:
    """Register `poses` turned about the principal axes of their specimen.

    Many shells are nearly solids of revolution (cones, spindles, lenses): a section turned
    about the axis of revolution, through the shell's centroid, cuts nearly the same
    outline and chambers, so it is a local optimum the registration does not leave,
    and only the chambers' irregularities tell the true turn. Each pose is turned by
    every multiple of ``axis_turn_step`` about each of the three principal axes (the
    axis of revolution of a squat cone is not the one with the odd moment of
    inertia), the turned poses are scored on the coarse level and the best
    ``axis_turn_starts`` distinct ones registered.
    """
    step = q.tuning.axis_turn_step
    angles = np.deg2rad(np.arange(step, 360.0, step))
    starts = []
    for p in poses:
        pv = index.prepared(p.specimen_id, volumes)
        centroid, principal = pv.principal_axes
        rot = Rotation.from_rotvec((principal[:, None, :] * angles[:, None]).reshape(-1, 3))
        turn = rot.as_matrix()  # (k, 3, 3)
        origin = centroid + np.einsum("kij,j->ki", turn, p.pose.origin - centroid)
        axes = np.einsum("kij,aj->kai", turn, p.pose.axes)
        scale = np.full(len(turn), p.pose.scale)
        turned = _scored_poses(q, pv, p.specimen_id, p.species, origin, axes, scale)
        starts += _distinct(turned, q.tuning.axis_turn_starts)
    return _registered_starts(index, q, starts, volumes, spent)


def _screen(index, q: _Query, rows, volumes) -> list[_Pose]:
    """Score every ambiguity of every coarse candidate at the coarsest level."""
    specs = list(dict.fromkeys(index.specimen[rows].tolist()))
    prepared = {spec: index.prepared(spec, volumes) for spec in specs}  # main thread: cache

    def one(spec: str) -> list[_Pose]:
        mine = rows[index.specimen[rows] == spec]
        pv = prepared[spec]
        species = str(index.species[mine[0]])
        return _screened_starts(
            q, pv, spec, species, index.normals[mine], index.offsets[mine], index.geometry[mine]
        )

    with ThreadPoolExecutor(max_workers=q.tuning.registration_threads) as pool:
        return [p for poses in pool.map(one, specs) for p in poses]


def _register_all(index, q: _Query, poses, volumes, levels: slice, max_evals: int, spent, report):
    """Register `poses` (in place) on the `levels` of the query's pyramid.

    Poses are registered in lock step (:func:`register_many`), ``registration_chunk``
    at a time in each of ``registration_threads`` threads (the sampling releases the
    GIL, so two threads use both cores of a small machine). Poses not started before
    `spent()` is true keep their screened pose.
    """
    prepared = [index.prepared(p.specimen_id, volumes) for p in poses]  # main thread: cache

    def chunk(rows: list[int]) -> list[tuple[int, _Pose]]:
        done = register_many(
            [prepared[i].data for i in rows],
            [prepared[i].background for i in rows],
            [poses[i].pose for i in rows],
            q.templates[levels],
            texture_weight=q.tuning.texture_weight,
            max_evals=max_evals,
        )
        return [
            (i, replace(poses[i], pose=pose, score=score))
            for i, (pose, score, _) in zip(rows, done, strict=True)
        ]

    threads = q.tuning.registration_threads
    take = q.tuning.registration_chunk * threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = list(range(len(poses)))
        while pending and not spent():
            batch, pending = pending[:take], pending[take:]
            # the round's poses dealt evenly to the threads
            parts = [batch[k::threads] for k in range(threads)]
            for done in pool.map(chunk, [part for part in parts if part]):
                for i, p in done:
                    poses[i] = p
            report(1.0 - len(pending) / len(poses))


def _to_match(index: MatchIndex, q: _Query, p: _Pose, volumes) -> Match:
    """Full scores and the matched section of a registered pose."""
    pv = index.prepared(p.specimen_id, volumes)
    tex, ncc = pose_scores(pv.data, pv.background, [p.pose], q.templates[-2])
    fine = q.templates[-1]
    section = sample_section(pv.data, pv.background, p.pose, fine)
    cfg = index.config
    pp = replace(cfg.preprocess, size=cfg.fine_size)
    # preprocessed as the index's sections and the query are (on its own threshold), so
    # the descriptor compares with the query as the index's do
    try:
        image = preprocess_slice(section, pp, name="matched section")[0]
        small = describe(_resize(image, cfg.preprocess.size)).vector()
        cos = float(index.standardise(small)[0] @ q.descriptor)
    except (PreprocessError, MatchError):
        image, cos = np.zeros((pp.size, pp.size), np.uint8), 0.0
    sil = segment_silhouette(to_gray_float(section, "matched section"), pp.sensitivity)
    qs = q.silhouette
    a = np.where(qs, np.nan_to_num(q.crop), 0.0)
    b = np.where(sil, section, 0.0)
    scores = dict(
        texture=float(tex[0]),
        ncc=float(ncc[0]),
        dice=2 * float((qs & sil).sum()) / (float(qs.sum() + sil.sum()) + 1e-9),
        ssim=float(
            structural_similarity(
                a / (a.max() or 1.0), b / (b.max() or 1.0), data_range=1.0, win_size=7
            )
        ),
        descriptor=cos,
    )
    scores["combined"] = float(sum(w * scores[k] for k, w in q.tuning.weights.items()))
    plane = p.plane
    return Match(p.specimen_id, p.species, plane.normal, plane.offset, plane.angle, scores, image)


def _search(
    index,
    q: _Query,
    rows,
    volumes,
    spent,
    report,
    *,
    top_k,
    coarse_k,
    screen_k,
    refine_k,
    refine,
    around_factor: int = 1,
) -> list[_Pose]:
    """The six stages for one reading of the query: poses, best first.

    `around_factor` multiplies the refined poses whose neighbours (``neighbour_poses``)
    and axis turns (``axis_turn_poses``) are tried.
    """
    tuning = q.tuning
    pyramid = slice(0, len(tuning.registration_levels))
    report(0.0, f"coarse search over {len(rows)} candidate sections")
    cand = _coarse(index, q, rows, coarse_k)
    report(0.1, f"screening {len(_AMBIGUITIES) * len(cand)} start poses")
    # refined poses can converge onto one another: keep spares so top_k remain
    found = _distinct(_screen(index, q, cand, volumes), max(screen_k, refine_k + top_k))
    if not refine:
        return found
    _register_all(
        index, q, found, volumes, slice(0, 1), tuning.short_evals, spent,
        lambda f: report(0.2 + 0.3 * f, "aligning the best start poses"),
    )  # fmt: skip
    found = _distinct(found)
    best = found[:refine_k]
    _register_all(
        index, q, best, volumes, pyramid, tuning.full_evals, spent,
        lambda f: report(0.5 + 0.35 * f, f"refining the best {len(best)} poses"),
    )  # fmt: skip
    refined = _distinct(best)
    report(0.85, "trying the sections next to the best poses")
    nearby = _neighbours(
        index, q, refined[: tuning.neighbour_poses * around_factor], volumes, spent
    )
    report(0.93, "turning the best poses about the shell's axes")
    turned = _axis_turns(
        index, q, refined[: tuning.axis_turn_poses * around_factor], volumes, spent
    )
    return _distinct(refined + nearby + turned) + found[refine_k:]


def match(
    index: MatchIndex,
    image,
    *,
    volumes: Mapping | None = None,
    top_k: int = 5,
    specimens=None,
    species=None,
    coarse_k: int = 1200,
    screen_k: int = 40,
    refine_k: int = 8,
    refine: bool = True,
    time_budget_s: float | None = None,
    progress=None,
    tuning: SearchTuning = TUNING,
) -> list[Match]:
    """Where `image` sits in the indexed volumes; best first.

    Parameters
    ----------
    index : MatchIndex
    image : array-like
        A 2-D section, any size and pixel type (gray, RGB, uint16, float).
    volumes : mapping
        specimen_id → raw 3-D array or :class:`PreparedVolume` (see
        :func:`prepare_volume`), for every specimen the search may reach: the query
        is compared with the volumes themselves. Prepared copies of raw arrays are
        cached on the index (the last few specimens).
    top_k : int
        Number of matches returned (distinct poses).
    specimens, species : str or sequence of str, optional
        Restrict the search to these specimen ids / species.
    coarse_k : int
        Index candidates whose start poses are screened against the volumes.
    screen_k : int
        Best distinct screened poses given a short registration at the coarse level.
    refine_k : int
        Best of those registered at every level (the full pose search).
    refine : bool
        Run the registrations, and after a weak answer (best ``combined`` under
        ``tuning.retry_score``) the whole search again on the query's other ``READINGS``
        (and on the reading without the brightest class, whatever the answer, where
        a bright stem hid the fossil), and if still weak a wider search
        (``tuning.wide_search`` times `coarse_k`, `screen_k` and `refine_k`,
        ``tuning.wide_around`` times the poses whose neighbours and turns are tried)
        on the best reading and the smoothed
        outline; without, the screened start poses of the image as given are
        returned (fast, but only as precise as the index's grid).
    time_budget_s : float, optional
        Stop registering, and trying other readings, once this many seconds have
        passed (0: as ``refine=False``).
    progress : callable, optional
        Called as ``progress(fraction, message)`` as the search advances (for a
        progress bar); `fraction` goes from 0 to 1.
    tuning : SearchTuning, optional
        How hard to search (registration effort, neighbours, turns, retries), each
        default with its reason; :data:`TUNING` unless given.

    Returns
    -------
    list of Match

    Raises
    ------
    MatchError, PreprocessError
        For unusable queries (non-numeric, blank, tiny, no foreground), filters, or
        missing volumes.
    """
    t0 = time.perf_counter()
    for name, v in (
        ("top_k", top_k),
        ("coarse_k", coarse_k),
        ("screen_k", screen_k),
        ("refine_k", refine_k),
    ):
        if not isinstance(v, int | np.integer) or v < 1:
            raise MatchError(f"{name} must be an integer >= 1, got {v!r}")
    report = progress or (lambda fraction, message: None)
    rows = _select(index, specimens, species)
    report(0.0, "preprocessing the query")
    if not isinstance(tuning, SearchTuning):
        raise MatchError(f"tuning must be a SearchTuning, got {type(tuning).__name__}")
    image = np.asarray(image)
    if image.dtype.kind in "uifb":  # anything else is refused by _prepare_query
        image = shrink_to_fit(image, tuning.query_max_side)[0]
    q = _prepare_query(index, image, tuning=tuning)
    if volumes is None:
        raise MatchError(
            "matching needs the specimen volumes (volumes={specimen_id: array}): the "
            "query is compared with them; see foramlib.matching.index.load_collection"
        )
    settings = dict(coarse_k=max(coarse_k, top_k), screen_k=screen_k, refine_k=refine_k)
    settings.update(top_k=top_k, refine=refine)

    def spent() -> bool:
        return time_budget_s is not None and time.perf_counter() - t0 > time_budget_s

    found = _search(
        index, q, rows, volumes, spent, lambda f, m: report(0.1 + 0.8 * f, m), **settings
    )
    reading = READINGS[0]
    first = best = found[0].score if found else -1.0
    # a weak first answer: every other reading is searched, the best one kept; a bright
    # stem that hid the fossil from the segmentation: the reading without it, however
    # well the stem alone was matched
    weak, hidden = first < tuning.retry_score, False
    if refine and not weak:
        gray = to_gray_float(image, "query")
        hidden = bright_class_hides_fossil(gray, index.config.preprocess.sensitivity)
    others = [r for r in READINGS[1:] if refine and (weak or (hidden and r.bright_removed))]

    def search_again(other: Reading, at: float, message: str, **how) -> None:
        """Search the query read as `other`, with `how`; keep it where it scores higher."""
        nonlocal q, found, reading, best
        report(at, message)
        try:
            q2 = q if other == reading else _prepare_query(index, image, other, tuning)
        except (MatchError, PreprocessError):
            return  # nothing to read this way
        again = _search(index, q2, rows, volumes, spent, lambda f, m: None, **how)
        # a search the budget cut short scores some poses unregistered: not comparable
        if again and again[0].score > best and not spent():
            q, found, reading, best = q2, again, other, again[0].score

    for other in others:
        if spent():
            break
        why = f"weak match ({first:.2f})" if weak else "a bright stem may hide the fossil"
        message = f"{why}: searching again, query read as {other.name!r}"
        search_again(other, 0.9, message, **settings)
    if refine and best < tuning.retry_score and tuning.wide_search > 1 and not spent():
        # still weak on every reading: the best one (and WIDE_READINGS) once more, with a
        # wider net (see SearchTuning.wide_search)
        wide = dict(settings, **{k: settings[k] * tuning.wide_search for k in _WIDENED})
        wide.update(around_factor=tuning.wide_around)
        for other in dict.fromkeys([reading, *WIDE_READINGS]):
            if spent():
                break
            message = f"weak match ({best:.2f}): a wider search, query read as {other.name!r}"
            search_again(other, 0.93, message, **wide)
    report(0.95, "scoring the matches")
    out = sorted(
        (
            replace(_to_match(index, q, p, volumes), reading=reading.name)
            for p in found[: top_k + 2]
        ),
        key=lambda m: -m.scores["combined"],
    )
    report(1.0, "done")
    return out[:top_k]
