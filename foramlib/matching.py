"""Slice-to-volume matching: where does a 2D section sit inside 3D specimen volumes?

An index holds, for every specimen volume, candidate section planes (normals spread
evenly over the hemisphere × parallel offsets across the specimen), each cut, run
through the shared preprocessing (:func:`foramlib.preprocess.preprocess_slice`) and
summarised by descriptors that do not change when the section is turned or mirrored
in its plane:

* log-scaled Hu moments of the silhouette,
* radial profiles of the silhouette and of the image about the silhouette's centroid,
* magnitudes of the Fourier transform along the angle of a polar resampling (radius
  measured in units of the silhouette's radius of gyration, so scale drops out too).

The descriptor vector is standardised with the index's own mean and spread, projected
on its leading principal components and L2-normalised, so the coarse search is one
matrix-vector product. The index keeps only these compact descriptors, a bit-packed
low-resolution silhouette and the plane of each candidate (about 200 bytes each):
candidate images are re-cut from the specimen volumes when a query needs them.

Matching a query runs in three stages:

1. **coarse**: cosine similarity of descriptors over the (filtered) index, then Dice
   of low-resolution silhouettes put in a canonical frame (centroid, principal axes,
   radius of gyration) under the four axis ambiguities (identity, 180°, two mirrors);
   ``coarse = 0.5 * cosine + 0.5 * dice`` picks ``coarse_k`` candidates;
2. **fine**: the candidates are re-cut from their volumes; the in-plane angle (and
   whether the section is seen from the other side, a mirror) is recovered directly by
   circular cross-correlation of polar resamplings (refined below one angle step by a
   parabola through the peak), both are put in one frame at ``fine_size`` pixels, and
   ``combined = 0.15 * dice + 0.15 * ncc + 0.4 * texture + 0.15 * ssim + 0.15 *
   descriptor``, where ``texture`` is the NCC of the high-passed sections (chamber
   walls and septa: what tells two poses of one outline apart, while the outline alone
   leaves Dice and NCC near 1 for many poses);
3. **refine**: the best ``expand_k`` candidates are widened by their tilt/offset
   neighbours (the texture score's basin is narrower than the grid), then the best
   distinct poses are improved by a pattern search over the
   plane's two tilts and its offset, re-cutting the volume at every step (the plane
   of a match is continuous, not limited to the index's grid).

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.measure import moments_central, moments_hu, moments_normalized
from skimage.metrics import structural_similarity

from foramlib.atomic import atomic_path
from foramlib.preprocess import (
    PREPROCESS_VERSION,
    PreprocessConfig,
    PreprocessError,
    preprocess_slice,
)
from foramlib.slicing import Plane, SliceError, extract_slices, fibonacci_hemisphere
from foramlib.slicing import prepare_volume as prepare_slicing_volume

__all__ = [
    "MatchError",
    "IndexConfig",
    "PreparedVolume",
    "Features",
    "MatchIndex",
    "Match",
    "prepare_volume",
    "describe",
    "build_index",
    "match",
]

INDEX_FORMAT = 2  # 2: compact descriptors, no stored images
N_RADII = 24  # polar resampling: radii from 0.1 to RHO_MAX radii of gyration
N_ANGLES = 64
RHO_MAX = 2.6
N_HARMONICS = 8
COARSE_WEIGHTS = {"descriptor": 0.5, "dice": 0.5}
# `texture` (NCC of the high-passed sections: chamber walls, septa, pores) is what tells
# two poses of one shell apart; silhouette Dice and plain NCC are near 1 for both
FINE_WEIGHTS = {"dice": 0.15, "ncc": 0.15, "texture": 0.4, "ssim": 0.15, "descriptor": 0.15}
# the refinement climbs this cheaper score (no SSIM, no descriptor)
SEARCH_WEIGHTS = {"dice": 0.2, "ncc": 0.2, "texture": 0.6}
TEXTURE_SIGMA = 3.0  # high-pass: the section minus its Gaussian blur (pixels at fine_size)
DESCRIPTOR_DIMS = 64  # principal components kept in the index
_BLOCK_WEIGHTS = (("hu", 1.0), ("radial", 1.0), ("fourier", 1.0), ("texture", 1.5))
DESCRIBE_TEXTURE_SIGMA = 1.0  # high-pass of the texture block (pixels at the index size)


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
        stored candidate images.
    smooth_sigma, dense_factor : float
        Volume preparation, as in :func:`foramlib.slicing.slice_volume`.
    fine_size : int
        Side of the sections compared in the fine and refinement stages (re-cut from
        the volumes, so it costs no index space; internal walls need the resolution).
    """

    n_orientations: int = 300
    n_offsets: int = 9
    descriptor_size: int = 32
    preprocess: PreprocessConfig = PreprocessConfig(size=64)
    smooth_sigma: float = 0.8
    dense_factor: float | None = 1.8
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


def prepare_volume(volume, config: IndexConfig = IndexConfig(), name: str = "volume"):
    """Prepare a raw volume as :func:`foramlib.slicing.slice_volume` does.

    Raises
    ------
    MatchError
        If the volume is not 3-D or nothing in it stands out from the background.
    """
    data = np.asarray(volume)
    if data.ndim != 3 or data.dtype.kind not in "uif" or min(data.shape) < 8:
        raise MatchError(f"{name}: expected a numeric 3-D volume, got {data.dtype} {data.shape}")
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
    silhouette; ``orientation`` of its principal axis (radians); ``polar`` the
    (N_RADII, N_ANGLES) resampling of the intensity-normalised image; ``canonical`` the
    low-resolution silhouette in the canonical frame; ``hu``, ``radial``, ``fourier`` and
    ``texture`` (radial profile and angular Fourier magnitudes of the high-passed image)
    the raw rotation-invariant descriptor blocks.
    """

    centroid: tuple[float, float]
    radius: float
    orientation: float
    polar: np.ndarray
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
    rr, cc = np.nonzero(sil)
    centroid = (float(rr.mean()), float(cc.mean()))
    dr, dc = rr - centroid[0], cc - centroid[1]
    radius = float(np.sqrt(np.mean(dr**2 + dc**2))) + 1e-6
    orientation = 0.5 * float(np.arctan2(2 * np.mean(dr * dc), np.mean(dc**2) - np.mean(dr**2)))
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
        p_img.astype(np.float32),
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
    canonical silhouettes. ``desc_mean``/``desc_std``/``desc_basis`` map a raw
    descriptor (:meth:`Features.vector`) into the index's space. Build one with
    :func:`build_index`; images are re-cut from the volumes when matching.
    """

    config: IndexConfig
    specimen: np.ndarray
    species: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    descriptors: np.ndarray
    canonical: np.ndarray
    desc_mean: np.ndarray
    desc_std: np.ndarray
    desc_basis: np.ndarray
    _prepared: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        n = len(self.specimen)
        if n == 0:
            raise MatchError("an index needs at least one candidate section")
        for name in ("species", "normals", "offsets", "descriptors", "canonical"):
            if len(getattr(self, name)) != n:
                raise MatchError(
                    f"index array {name!r} has {len(getattr(self, name))} rows, not {n}"
                )
        self.descriptors = np.asarray(self.descriptors, np.float32)

    @classmethod
    def from_raw(cls, config, specimen, species, normals, offsets, raw, canonical) -> MatchIndex:
        """Index from raw descriptor rows and boolean canonical silhouettes."""
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
                "volumes={specimen_id: array} (see foramlib.indexing.load_collection)"
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
                if "desc_basis" in z:
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


def _cut_volume(prepared: PreparedVolume, planes, config: IndexConfig, name: str, size=None):
    """Cut and preprocess `planes`; return kept plane indices and their images.

    Images are `size` pixels a side (default: the index's preprocessing size).
    """
    pp = config.preprocess if size is None else replace(config.preprocess, size=size)
    kept, images = [], []
    for start in range(0, len(planes), 64):
        batch = planes[start : start + 64]
        secs = extract_slices(prepared.data, batch, prepared.window, cval=prepared.background)
        for i, sec in enumerate(secs):
            try:
                img, info = preprocess_slice(
                    sec,
                    pp,
                    threshold=prepared.threshold,
                    background=prepared.background,
                    normalized=True,
                    name=name,
                )
            except PreprocessError:
                continue
            if info.fraction >= pp.min_fraction:
                kept.append(start + i)
                images.append(img)
    return kept, images


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
    cols = {k: [] for k in ("specimen", "species", "normals", "offsets", "raw", "canonical")}
    for done, item in enumerate(volumes, start=1):
        try:
            spec, species, volume = item
        except (TypeError, ValueError):
            raise MatchError(
                f"volumes must be (specimen_id, species, volume) triples, got {item!r:.80}"
            ) from None
        prepared = prepare_volume(volume, config, name=str(spec))
        planes = candidate_planes(prepared, config.n_orientations, config.n_offsets)
        kept, images = _cut_volume(prepared, planes, config, str(spec))
        for k, img in zip(kept, images, strict=True):
            f = describe(img, config.descriptor_size)
            cols["specimen"].append(str(spec))
            cols["species"].append(str(species))
            cols["normals"].append(planes[k].normal)
            cols["offsets"].append(planes[k].offset)
            cols["raw"].append(f.vector())
            cols["canonical"].append(f.canonical.ravel())
        if progress is not None:
            progress(done, str(spec))
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
    )


# ----------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------
@dataclass
class Match:
    """One answer: where the query sits, how well it fits, and the matched section.

    ``scores`` holds ``dice`` (silhouettes), ``ncc`` (intensities), ``texture`` (NCC of
    the high-passed sections: internal walls), ``ssim``, ``descriptor`` (cosine in the
    index's descriptor space) and their weighted sum ``combined`` (``FINE_WEIGHTS``).
    """

    specimen_id: str
    species: str
    normal: tuple[float, float, float]
    offset: float
    angle_deg: float
    scores: dict
    image: np.ndarray = field(repr=False)


@dataclass
class _Query:
    image: np.ndarray  # preprocessed at the index's size
    descriptor: np.ndarray
    canon: np.ndarray  # (4, d²) canonical silhouettes under the axis ambiguities
    polar_fft: np.ndarray  # (2, N_RADII, N_ANGLES) FFT of polar image, direct and flipped
    aligned_size: int
    aligned: tuple  # canonical (image, silhouette, high-pass) at fine_size, direct and flipped


@dataclass
class _Candidate:
    """A scored plane of one specimen (angle 0; the in-plane turn is in `shift`)."""

    specimen_id: str
    species: str
    normal: np.ndarray
    offset: float
    image: np.ndarray
    flip: bool
    shift: float
    scores: dict

    @property
    def search(self) -> float:  # the score the refinement climbs
        return float(sum(w * self.scores[k] for k, w in SEARCH_WEIGHTS.items()))

    def to_match(self) -> Match:
        normal, offset, angle = _pose(self.normal, self.offset, self.flip, self.shift)
        return Match(
            self.specimen_id, self.species, normal, offset, angle, dict(self.scores), self.image
        )


def _highpass(img: np.ndarray) -> np.ndarray:
    return img - cv2.GaussianBlur(img, (0, 0), TEXTURE_SIGMA)


def _aligned_query(img: np.ndarray, size: int) -> tuple:
    """The query in its canonical frame (not turned), direct and mirrored."""
    f = describe(img)
    out = []
    for flip in (False, True):
        cq = f.centroid if not flip else (img.shape[0] - 1 - f.centroid[0], f.centroid[1])
        a = to_canonical(img[::-1] if flip else img, cq, f.radius, 0.0, False, size)
        sil = a > 0.5  # any fossil pixel (background is 0), as for the candidates
        a = a / (a.max() or 1.0)
        out.append((a, sil, _highpass(a)))
    return tuple(out)


def _prepare_query(index: MatchIndex, image) -> _Query:
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind not in "uifb":
        raise MatchError(f"query must be a numeric image array, got dtype {arr.dtype}")
    cfg = index.config
    img, info = preprocess_slice(arr, cfg.preprocess, name="query")
    if info.fraction < cfg.preprocess.min_fraction / 4:
        raise MatchError(
            f"query: the fossil covers only {info.fraction:.3%} of the image; nothing to match"
        )
    f = describe(img, cfg.descriptor_size)
    c = f.canonical
    canon = np.stack([c, c[::-1, ::-1], c[::-1], c[:, ::-1]]).reshape(4, -1).astype(np.float32)
    flipped = _polar(
        img[::-1].astype(np.float32), (img.shape[0] - 1 - f.centroid[0], f.centroid[1]), f.radius
    )
    scale = float(img[silhouette(img)].mean()) or 1.0
    polars = np.stack([f.polar, flipped / scale])
    fine = replace(cfg.preprocess, size=cfg.fine_size)
    fine_img = preprocess_slice(arr, fine, name="query")[0] if fine != cfg.preprocess else img
    return _Query(
        img,
        index.standardise(f.vector())[0],
        canon,
        np.fft.fft(polars - polars.mean(axis=2, keepdims=True), axis=2),
        cfg.fine_size,
        _aligned_query(fine_img, cfg.fine_size),
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
    """Top `coarse_k` rows by 0.5·descriptor cosine + 0.5·canonical-silhouette Dice."""
    cos = index.descriptors[rows] @ q.descriptor
    short = rows[np.argsort(-cos)[: max(8 * coarse_k, 400)]]
    cos_s = index.descriptors[short] @ q.descriptor
    can = index.canonical_masks(short)
    inter = can @ q.canon.T  # (m, 4)
    dice = (2 * inter / (can.sum(1)[:, None] + q.canon.sum(1)[None, :] + 1e-9)).max(axis=1)
    score = COARSE_WEIGHTS["descriptor"] * cos_s + COARSE_WEIGHTS["dice"] * dice
    order = np.argsort(-score)[:coarse_k]
    return short[order]


def _best_rotation(q: _Query, cand_polar: np.ndarray):
    """Best circular shift and flip of the query's polar image against candidates.

    Returns (flip (bool array), shift in angle steps, fractional) such that the query
    (flipped top-to-bottom when `flip`) at polar angle φ matches the candidate at
    φ + shift·Δ. The shift is refined below one step by a parabola through the peak.
    """
    c = cand_polar - cand_polar.mean(axis=2, keepdims=True)
    cf = np.fft.fft(c, axis=2)  # (m, R, A)
    # corr[s] = sum_j q[j] c[j+s]  ->  ifft(conj(Q) * C)
    corr = np.fft.ifft(np.conj(q.polar_fft)[None] * cf[:, None], axis=3).real.sum(axis=2)
    m = len(c)
    best = corr.reshape(m, -1).argmax(axis=1)  # over (flip, shift)
    flip, shift = best // N_ANGLES, best % N_ANGLES
    rows = corr[np.arange(m), flip]  # (m, A)
    y0 = rows[np.arange(m), (shift - 1) % N_ANGLES]
    y1 = rows[np.arange(m), shift]
    y2 = rows[np.arange(m), (shift + 1) % N_ANGLES]
    den = y0 - 2 * y1 + y2
    frac = np.where(np.abs(den) > 1e-12, 0.5 * (y0 - y2) / np.where(den == 0, 1, den), 0.0)
    return flip == 1, shift + np.clip(frac, -0.5, 0.5)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _pair_scores(q: _Query, cand_img, feats: Features, flip, shift, ssim: bool = True):
    """Warp the candidate onto the query's canonical frame and score the pair."""
    theta = 2 * np.pi * shift / N_ANGLES
    na, sa, ha = q.aligned[int(bool(flip))]
    # query at φ ~ candidate at φ + θ: turn the candidate back by θ
    b = to_canonical(cand_img, feats.centroid, feats.radius, -theta, False, q.aligned_size)
    sb = b > 0.5
    nb = b / (b.max() or 1.0)
    inside = sa | sb
    out = dict(
        dice=2 * float((sa & sb).sum()) / (float(sa.sum() + sb.sum()) + 1e-9),
        ncc=_ncc(na, nb),
        texture=_ncc(ha[inside], _highpass(nb)[inside]),
    )
    if ssim:
        out["ssim"] = float(structural_similarity(na, nb, data_range=1.0, win_size=7))
    return out


def _combined(s: dict) -> float:
    return float(sum(w * s[k] for k, w in FINE_WEIGHTS.items()))


def _pose(normal, offset, flip, shift):
    """Plane (normal, offset, angle) reproducing the query, see the module docstring."""
    a = float(360.0 * shift / N_ANGLES)
    if flip:
        return tuple(-float(v) for v in normal), -float(offset), (-a) % 360.0
    return tuple(float(v) for v in normal), float(offset), a % 360.0


def _evaluate(index, q, prepared, spec, species, planes, full: bool) -> list[_Candidate]:
    """Cut `planes` (angle 0) from one prepared volume and score each against `q`."""
    cfg = index.config
    kept, images = _cut_volume(prepared, planes, cfg, spec, size=cfg.fine_size)
    if not kept:
        return []
    feats = [describe(img, cfg.descriptor_size) for img in images]
    flips, shifts = _best_rotation(q, np.stack([f.polar for f in feats]))
    cos = None
    if full:  # the descriptor as the index computed it, at the index's size
        small = cfg.preprocess.size
        raw = [
            describe(_resize(img, small), cfg.descriptor_size).vector()
            if img.shape[0] != small
            else f.vector()
            for img, f in zip(images, feats, strict=True)
        ]
        cos = index.standardise(np.stack(raw)) @ q.descriptor
    out = []
    for i, k in enumerate(kept):
        s = _pair_scores(q, images[i], feats[i], flips[i], shifts[i], ssim=full)
        if full:
            s["descriptor"] = float(cos[i])
            s["combined"] = _combined(s)
        n = np.asarray(planes[k].normal, np.float64)
        out.append(
            _Candidate(spec, species, n, planes[k].offset, images[i], flips[i], shifts[i], s)
        )
    return out


def _rescore(index, q, cands: list[_Candidate], volumes) -> list[_Candidate]:
    """Full scores (SSIM and descriptor too) of candidates scored for the search only."""
    out = []
    for c in cands:
        plane = Plane(tuple(c.normal), float(c.offset), 0.0)
        prepared = index.prepared(c.specimen_id, volumes)
        out += _evaluate(index, q, prepared, c.specimen_id, c.species, [plane], True)
    return out


def _fine(index, q, rows, volumes, keep: int, expand_k: int, tilt_deg, step_vox):
    """Re-cut the coarse candidates, rank them by the search score, fully score `keep`.

    The texture score drops within a few degrees of the true plane, less than the
    index's spacing of normals, so the grid point nearest the truth may rank below
    wrong poses: the best `expand_k` distinct candidates are first widened by their
    six pattern-search neighbours, and the ranking is made over all of them.
    """
    out = []
    for spec in dict.fromkeys(index.specimen[rows].tolist()):
        mine = rows[index.specimen[rows] == spec]
        planes = [Plane(tuple(index.normals[r]), float(index.offsets[r]), 0.0) for r in mine]
        prepared = index.prepared(spec, volumes)
        out += _evaluate(index, q, prepared, spec, str(index.species[mine[0]]), planes, False)
    ranked = _distinct(sorted(out, key=lambda c: -c.search))
    wider = list(ranked)
    for c in ranked[:expand_k]:
        planes = _tilted(c.normal, c.offset, tilt_deg, step_vox)
        prepared = index.prepared(c.specimen_id, volumes)
        wider += _evaluate(index, q, prepared, c.specimen_id, c.species, planes, False)
    best = _distinct(sorted(wider, key=lambda c: -c.search))[:keep]
    return sorted(_rescore(index, q, best, volumes), key=lambda c: -c.scores["combined"])


def _tilted(n: np.ndarray, off: float, tilt_deg: float, step_vox: float) -> list[Plane]:
    """The six pattern-search neighbours of a plane: ±tilt about two axes, ±offset."""
    ref = np.eye(3)[int(np.argmin(np.abs(n)))]
    a1 = np.cross(n, ref)
    a1 /= np.linalg.norm(a1)
    a2 = np.cross(n, a1)
    out = []
    for axis in (a1, a2):
        for sign in (-1.0, 1.0):
            nn = Rotation.from_rotvec(np.deg2rad(sign * tilt_deg) * axis).apply(n)
            out.append(Plane(tuple(nn), float(off), 0.0))
    out += [Plane(tuple(n), float(off + d), 0.0) for d in (-step_vox, step_vox)]
    return out


def _refine(index, q, start: _Candidate, prepared, tilt_deg, step_vox, max_evals) -> _Candidate:
    """Pattern search over the plane's tilts and offset from `start`, then full scores.

    Moves to the best of the six neighbours while that improves the search score, and
    halves both steps when none does, until they are an eighth of the initial ones or
    `max_evals` sections have been cut.
    """
    best, evals = start, 0
    tilt, step = tilt_deg, step_vox
    while tilt >= tilt_deg / 8 and evals < max_evals:
        planes = _tilted(best.normal, best.offset, tilt, step)
        trial = _evaluate(index, q, prepared, best.specimen_id, best.species, planes, False)
        evals += len(planes)
        top = max(trial, key=lambda c: c.search, default=None)
        if top is not None and top.search > best.search + 1e-4:
            best = top
        else:
            tilt, step = tilt / 2, step / 2
    if best is start:
        return start
    plane = Plane(tuple(best.normal), float(best.offset), 0.0)
    again = _evaluate(index, q, prepared, best.specimen_id, best.species, [plane], True)
    return again[0] if again and again[0].scores["combined"] > start.scores["combined"] else start


def _same_pose(a: _Candidate, b: _Candidate, max_deg: float = 6.0, max_vox: float = 2.0):
    if a.specimen_id != b.specimen_id:
        return False
    cos = float(np.dot(a.normal, b.normal))
    sign = 1.0 if cos >= 0 else -1.0
    close = np.degrees(np.arccos(min(1.0, abs(cos)))) <= max_deg
    return bool(close and abs(sign * a.offset - b.offset) <= max_vox)


def _distinct(cands: list[_Candidate]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for c in cands:
        if not any(_same_pose(c, o) for o in out):
            out.append(c)
    return out


def match(
    index: MatchIndex,
    image,
    *,
    volumes: Mapping | None = None,
    top_k: int = 5,
    specimens=None,
    species=None,
    coarse_k: int = 80,
    refine: bool = True,
    time_budget_s: float | None = None,
    refine_k: int = 6,
    expand_k: int = 20,
    tilt_deg: float = 4.0,
    step_vox: float = 2.0,
    max_evals: int = 48,
    progress=None,
) -> list[Match]:
    """Where `image` sits in the indexed volumes; best first.

    Parameters
    ----------
    index : MatchIndex
    image : array-like
        A 2-D section, any size and pixel type (gray, RGB, uint16, float).
    volumes : mapping
        specimen_id → raw 3-D array or :class:`PreparedVolume` (see
        :func:`prepare_volume`), for every specimen the search may reach: candidate
        sections are re-cut from them. Prepared copies of raw arrays are cached on the
        index (the last few specimens).
    top_k : int
        Number of matches returned (distinct poses).
    specimens, species : str or sequence of str, optional
        Restrict the search to these specimen ids / species.
    coarse_k : int
        Candidates passed from the coarse to the fine stage.
    refine : bool
        Improve the best `refine_k` distinct poses by a local pattern search.
    time_budget_s : float, optional
        Stop refining once this many seconds have passed.
    refine_k, tilt_deg, step_vox, max_evals : int, float, float, int
        Poses refined, the initial tilt (degrees) and offset (voxels) steps of the
        search, and the sections it may cut per pose.
    expand_k : int
        Best fine candidates whose six tilt/offset neighbours are scored too before
        the poses to refine are chosen (0: none; faster, fewer poses recovered).
    progress : callable, optional
        Called as ``progress(fraction, message)`` as the search advances (for a
        progress bar); `fraction` goes from 0 to 1.

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
    for name, v in (("top_k", top_k), ("coarse_k", coarse_k), ("refine_k", refine_k)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise MatchError(f"{name} must be an integer >= 1, got {v!r}")
    if not isinstance(expand_k, int | np.integer) or expand_k < 0:
        raise MatchError(f"expand_k must be an integer >= 0, got {expand_k!r}")
    report = progress or (lambda fraction, message: None)
    rows = _select(index, specimens, species)
    report(0.0, "preprocessing the query")
    q = _prepare_query(index, image)
    if volumes is None:
        raise MatchError(
            "matching needs the specimen volumes (volumes={specimen_id: array}): candidate "
            "sections are re-cut from them; see foramlib.indexing.load_collection"
        )
    report(0.1, f"coarse search over {len(rows)} candidate sections")
    cand = _coarse(index, q, rows, max(coarse_k, top_k))
    report(0.3, f"fine alignment of {len(cand)} candidates")
    # refined poses can converge onto one another: keep spares so top_k remain
    found = _fine(index, q, cand, volumes, refine_k + top_k, expand_k, tilt_deg, step_vox)
    if refine:
        for i, c in enumerate(found[:refine_k]):
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
            report(0.4 + 0.6 * i / refine_k, f"refining pose {i + 1} in {c.specimen_id}")
            prepared = index.prepared(c.specimen_id, volumes)
            found[i] = _refine(index, q, c, prepared, tilt_deg, step_vox, max_evals)
        found = _distinct(sorted(found, key=lambda c: -c.scores["combined"]))
    report(1.0, "done")
    return [c.to_match() for c in found[:top_k]]
