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

The descriptor vector is standardised with the index's own mean and spread and
L2-normalised, so the coarse search is one matrix-vector product.

Matching a query runs in two stages:

1. **coarse**: cosine similarity of descriptors over the (filtered) index, then Dice
   of low-resolution silhouettes put in a canonical frame (centroid, principal axes,
   radius of gyration) under the four axis ambiguities (identity, 180°, two mirrors);
   ``coarse = 0.5 * cosine + 0.5 * dice`` picks ``coarse_k`` candidates;
2. **fine**: the in-plane angle (and whether the section is seen from the other side,
   a mirror) is recovered directly by circular cross-correlation of polar resamplings,
   the query is warped onto the candidate, and
   ``combined = 0.35 * dice + 0.25 * ncc + 0.25 * ssim + 0.15 * descriptor``.

With the specimen volumes at hand, the best candidates are refined by re-cutting the
volume on a small grid of tilts and offsets around them and re-scoring.

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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
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

INDEX_FORMAT = 1
N_RADII = 24  # polar resampling: radii from 0.1 to RHO_MAX radii of gyration
N_ANGLES = 64
RHO_MAX = 2.6
N_HARMONICS = 8
COARSE_WEIGHTS = {"descriptor": 0.5, "dice": 0.5}
FINE_WEIGHTS = {"dice": 0.35, "ncc": 0.25, "ssim": 0.25, "descriptor": 0.15}
_BLOCK_WEIGHTS = (("hu", 1.0), ("radial", 1.0), ("fourier", 1.0))


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
    """

    n_orientations: int = 300
    n_offsets: int = 9
    descriptor_size: int = 32
    preprocess: PreprocessConfig = PreprocessConfig(size=64)
    smooth_sigma: float = 0.8
    dense_factor: float | None = 1.8

    def __post_init__(self) -> None:
        for name, low in (("n_orientations", 1), ("n_offsets", 1), ("descriptor_size", 8)):
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
    low-resolution silhouette in the canonical frame; ``hu``, ``radial`` and ``fourier``
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
    )


# ----------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------
_ARRAYS = (
    "specimen",
    "species",
    "normals",
    "offsets",
    "images",
    "raw_descriptors",
    "canonical",
    "polar",
    "centroids",
    "radii",
)


@dataclass
class MatchIndex:
    """Candidate sections of a set of volumes with their descriptors.

    Arrays have one row per candidate: ``specimen``/``species`` (str), ``normals``
    (n, 3), ``offsets`` (n,), ``images`` (n, size, size) uint8, ``raw_descriptors``
    (n, d), ``canonical`` (n, descriptor_size²) bool, ``polar`` (n, N_RADII,
    N_ANGLES), ``centroids`` (n, 2), ``radii`` (n,). ``descriptors`` are the raw ones
    standardised with ``desc_mean``/``desc_std`` and L2-normalised.
    """

    config: IndexConfig
    specimen: np.ndarray
    species: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    images: np.ndarray
    raw_descriptors: np.ndarray
    canonical: np.ndarray
    polar: np.ndarray
    centroids: np.ndarray
    radii: np.ndarray
    desc_mean: np.ndarray = field(init=False)
    desc_std: np.ndarray = field(init=False)
    descriptors: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if len(self.specimen) == 0:
            raise MatchError("an index needs at least one candidate section")
        raw = self.raw_descriptors.astype(np.float64)
        self.desc_mean = raw.mean(axis=0)
        self.desc_std = raw.std(axis=0) + 1e-6
        self.descriptors = self.standardise(raw)

    def __len__(self) -> int:
        return len(self.specimen)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """Standardise raw descriptor rows with the index's statistics, L2-normalised."""
        z = (np.atleast_2d(raw) - self.desc_mean) / self.desc_std
        z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
        return z.astype(np.float32)

    def save(self, path) -> Path:
        """Write one ``.npz`` atomically, with the preprocessing version and config."""
        meta = dict(
            format=INDEX_FORMAT, preprocess_version=PREPROCESS_VERSION, config=self.config.as_dict()
        )
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        arrays["specimen"] = arrays["specimen"].astype(str)
        arrays["species"] = arrays["species"].astype(str)
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
            If the file is not an index, was built with another preprocessing version,
            or (when `config` is given) with another configuration.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {name: z[name] for name in _ARRAYS}
        except (OSError, KeyError, ValueError) as exc:
            raise MatchError(f"{path}: not a match index ({exc})") from None
        if meta.get("preprocess_version") != PREPROCESS_VERSION:
            raise MatchError(
                f"{path}: index built with preprocessing version "
                f"{meta.get('preprocess_version')!r}; rebuild it (current version is "
                f"{PREPROCESS_VERSION})"
            )
        built = IndexConfig.from_dict(meta["config"])
        if config is not None and built != config:
            raise MatchError(f"{path}: index built with {built}, not {config}; rebuild it")
        return cls(built, **arrays)


def _cut_volume(prepared: PreparedVolume, planes, config: IndexConfig, name: str):
    """Cut and preprocess `planes`; return kept plane indices and their images."""
    pp = config.preprocess
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


def build_index(volumes: Sequence, config: IndexConfig = IndexConfig()) -> MatchIndex:
    """Index the candidate sections of ``(specimen_id, species, volume)`` triples.

    Raises
    ------
    MatchError
        If a volume is unusable or no volume yields a candidate.
    """
    cols = {name: [] for name in _ARRAYS}
    for item in volumes:
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
            cols["images"].append(img)
            cols["raw_descriptors"].append(f.vector())
            cols["canonical"].append(f.canonical.ravel())
            cols["polar"].append(f.polar)
            cols["centroids"].append(f.centroid)
            cols["radii"].append(f.radius)
    if not cols["specimen"]:
        raise MatchError("no volume yielded a usable candidate section")
    dtypes = dict(normals=np.float32, offsets=np.float32, raw_descriptors=np.float32)
    dtypes.update(polar=np.float32, centroids=np.float32, radii=np.float32, canonical=bool)
    arrays = {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in cols.items()}
    return MatchIndex(config, **arrays)


# ----------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------
@dataclass
class Match:
    """One answer: where the query sits, how well it fits, and the matched section.

    ``scores`` holds ``dice``, ``ncc``, ``ssim``, ``descriptor`` and ``combined``.
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
    image: np.ndarray
    features: Features
    descriptor: np.ndarray
    canon: np.ndarray  # (4, d²) canonical silhouettes under the axis ambiguities
    polar_fft: np.ndarray  # (2, N_RADII, N_ANGLES) FFT of polar image, direct and flipped
    aligned_size: int


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
    return _Query(
        img,
        f,
        index.standardise(f.vector())[0],
        canon,
        np.fft.fft(polars - polars.mean(axis=2, keepdims=True), axis=2),
        cfg.preprocess.size,
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
    short = rows[np.argsort(-cos)[: max(4 * coarse_k, 200)]]
    cos_s = index.descriptors[short] @ q.descriptor
    can = index.canonical[short].astype(np.float32)
    inter = can @ q.canon.T  # (m, 4)
    dice = (2 * inter / (can.sum(1)[:, None] + q.canon.sum(1)[None, :] + 1e-9)).max(axis=1)
    score = COARSE_WEIGHTS["descriptor"] * cos_s + COARSE_WEIGHTS["dice"] * dice
    order = np.argsort(-score)[:coarse_k]
    return short[order], cos_s[order]


def _best_rotation(q: _Query, cand_polar: np.ndarray):
    """Best circular shift and flip of the query's polar image against candidates.

    Returns (flip (bool array), shift in angle steps) such that the query (flipped
    top-to-bottom when `flip`) at polar angle φ matches the candidate at φ + shift·Δ.
    """
    c = cand_polar - cand_polar.mean(axis=2, keepdims=True)
    cf = np.fft.fft(c, axis=2)  # (m, R, A)
    # corr[s] = sum_j q[j] c[j+s]  ->  ifft(conj(Q) * C)
    corr = np.fft.ifft(np.conj(q.polar_fft)[None] * cf[:, None], axis=3).real.sum(axis=2)
    best = corr.reshape(len(c), -1).argmax(axis=1)  # over (flip, shift)
    return best // N_ANGLES == 1, best % N_ANGLES


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _pair_scores(q: _Query, cand_img, centroid, radius, flip, shift):
    """Warp query and candidate onto one canonical frame and score them."""
    size = q.aligned_size
    theta = 2 * np.pi * shift / N_ANGLES
    qf = q.features
    cq = qf.centroid if not flip else (q.image.shape[0] - 1 - qf.centroid[0], qf.centroid[1])
    qimg = q.image[::-1] if flip else q.image
    # query at φ ~ candidate at φ + θ: turn the candidate back by θ
    a = to_canonical(qimg, cq, qf.radius, 0.0, False, size)
    b = to_canonical(cand_img, centroid, radius, -theta, False, size)
    sa, sb = a > 0.5, b > 0.5
    dice = 2 * float((sa & sb).sum()) / (float(sa.sum() + sb.sum()) + 1e-9)
    na, nb = a / (a.max() or 1.0), b / (b.max() or 1.0)
    ssim = float(structural_similarity(na, nb, data_range=1.0, win_size=7))
    return dict(dice=dice, ncc=_ncc(na, nb), ssim=ssim)


def _combined(s: dict) -> float:
    return float(sum(w * s[k] for k, w in FINE_WEIGHTS.items()))


def _pose(normal, offset, flip, shift):
    """Plane (normal, offset, angle) reproducing the query, see the module docstring."""
    a = float(360.0 * shift / N_ANGLES)
    if flip:
        return tuple(-float(v) for v in normal), -float(offset), (-a) % 360.0
    return tuple(float(v) for v in normal), float(offset), a % 360.0


def _fine(index: MatchIndex, q: _Query, rows, cos) -> list[Match]:
    flips, shifts = _best_rotation(q, index.polar[rows])
    out = []
    for r, c, fl, sh in zip(rows, cos, flips, shifts, strict=True):
        s = _pair_scores(q, index.images[r], index.centroids[r], index.radii[r], fl, sh)
        s["descriptor"] = float(c)
        s["combined"] = _combined(s)
        normal, offset, angle = _pose(index.normals[r], index.offsets[r], fl, sh)
        out.append(
            Match(
                str(index.specimen[r]),
                str(index.species[r]),
                normal,
                offset,
                angle,
                s,
                index.images[r],
            )
        )
    return sorted(out, key=lambda m: -m.scores["combined"])


def _neighbour_planes(m: Match, tilt_deg: float, step_vox: float) -> list[Plane]:
    """Planes around a match's (hemisphere) normal: 3×3 tilts × 3 offsets, angle 0."""
    n = np.asarray(m.normal)
    off = m.offset
    if n[2] < 0:  # back to the index's hemisphere, as candidates are stored
        n, off = -n, -off
    ref = np.eye(3)[int(np.argmin(np.abs(n)))]
    a1 = np.cross(n, ref)
    a1 /= np.linalg.norm(a1)
    a2 = np.cross(n, a1)
    planes = []
    for t1 in (-tilt_deg, 0.0, tilt_deg):
        for t2 in (-tilt_deg, 0.0, tilt_deg):
            rot = Rotation.from_rotvec(np.deg2rad(t1) * a1 + np.deg2rad(t2) * a2)
            nn = rot.apply(n)
            for d in (-step_vox, 0.0, step_vox):
                planes.append(Plane(tuple(nn), float(off + d), 0.0))
    return planes


def _refine(index, q, best: Match, prepared: PreparedVolume, tilt_deg, step_vox):
    """Re-cut the volume around `best` and return the best-scoring neighbour."""
    planes = _neighbour_planes(best, tilt_deg, step_vox)
    kept, images = _cut_volume(prepared, planes, index.config, best.specimen_id)
    if not kept:
        return best
    feats = [describe(img, index.config.descriptor_size) for img in images]
    raw = np.stack([f.vector() for f in feats])
    cos = index.standardise(raw) @ q.descriptor
    flips, shifts = _best_rotation(q, np.stack([f.polar for f in feats]))
    top = best
    for i, k in enumerate(kept):
        f = feats[i]
        s = _pair_scores(q, images[i], f.centroid, f.radius, flips[i], shifts[i])
        s["descriptor"] = float(cos[i])
        s["combined"] = _combined(s)
        if s["combined"] > top.scores["combined"]:
            normal, offset, angle = _pose(planes[k].normal, planes[k].offset, flips[i], shifts[i])
            top = Match(best.specimen_id, best.species, normal, offset, angle, s, images[i])
    return top


def match(
    index: MatchIndex,
    image,
    *,
    top_k: int = 5,
    specimens=None,
    species=None,
    coarse_k: int = 50,
    refine: bool = True,
    volumes: Mapping | None = None,
    time_budget_s: float | None = None,
    refine_k: int = 3,
    tilt_deg: float = 4.0,
    step_vox: float = 2.0,
    progress=None,
) -> list[Match]:
    """Where `image` sits in the indexed volumes; best first.

    Parameters
    ----------
    index : MatchIndex
    image : array-like
        A 2-D section, any size and pixel type (gray, RGB, uint16, float).
    top_k : int
        Number of matches returned.
    specimens, species : str or sequence of str, optional
        Restrict the search to these specimen ids / species.
    coarse_k : int
        Candidates passed from the coarse to the fine stage.
    refine : bool
        Refine the best `refine_k` matches in their volumes (needs `volumes`).
    volumes : mapping, optional
        specimen_id → PreparedVolume (see :func:`prepare_volume`) or raw 3-D array.
    time_budget_s : float, optional
        Skip refinement once this many seconds have passed.
    refine_k, tilt_deg, step_vox : int, float, float
        Matches refined, and the tilt (degrees) and offset (voxels) steps of the 3×3×3
        refinement grid.
    progress : callable, optional
        Called as ``progress(fraction, message)`` as the search advances (for a
        progress bar); `fraction` goes from 0 to 1.

    Returns
    -------
    list of Match

    Raises
    ------
    MatchError, PreprocessError
        For unusable queries (non-numeric, blank, tiny, no foreground) or filters.
    """
    t0 = time.perf_counter()
    for name, v in (("top_k", top_k), ("coarse_k", coarse_k)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise MatchError(f"{name} must be an integer >= 1, got {v!r}")
    report = progress or (lambda fraction, message: None)
    rows = _select(index, specimens, species)
    report(0.0, "preprocessing the query")
    q = _prepare_query(index, image)
    report(0.1, f"coarse search over {len(rows)} candidate sections")
    cand, cos = _coarse(index, q, rows, max(coarse_k, top_k))
    report(0.3, f"fine alignment of {len(cand)} candidates")
    found = _fine(index, q, cand, cos)
    if refine and volumes:
        prepared = {}
        for i, m in enumerate(found[:refine_k]):
            report(0.5 + 0.5 * i / refine_k, f"refining match {i + 1} in {m.specimen_id}")
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
            vol = volumes.get(m.specimen_id)
            if vol is None:
                continue
            if not isinstance(vol, PreparedVolume):
                if m.specimen_id not in prepared:
                    prepared[m.specimen_id] = prepare_volume(vol, index.config, m.specimen_id)
                vol = prepared[m.specimen_id]
            found[i] = _refine(index, q, m, vol, tilt_deg, step_vox)
        found.sort(key=lambda m: -m.scores["combined"])
    report(1.0, "done")
    return found[:top_k]
