"""Reslicing: 2D sections of a volume along any plane, sampled directly.

A :class:`Plane` is a unit normal, a signed offset (voxels, from the volume's centre
along the normal) and an in-plane rotation. Sections are sampled by trilinear
interpolation at the plane's points (:func:`scipy.ndimage.map_coordinates`); the
volume is never rotated as a whole. Orientations are spread evenly over the
hemisphere (a Fibonacci lattice, randomly turned per volume), plus the three axis
directions jittered by a few degrees, which covers orientation space more evenly
than axis slices of whole-volume rotations.

The dataset builder (:func:`slice_volume`, :func:`build_slice_store`) cuts each
curated volume, drops low-content sections, segments and crops the fossil with
:mod:`foramlib.dataset.preprocess`, and stores uint8 arrays (one memory-mappable ``.npy`` per
volume) with a provenance index.

Examples
--------
>>> import numpy as np
>>> vol = np.zeros((32, 32, 32), np.float32); vol[8:24, 8:24, 12:20] = 1.0
>>> axial = Plane(normal=(0.0, 0.0, 1.0), offset=0.0, angle=0.0)
>>> sec = extract_slice(vol, axial, size=32)
>>> sec.shape, float(sec.max()), float(sec[16, 16])
((32, 32), 1.0, 1.0)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from foramlib.dataset.preprocess import (
    DENSE_FACTOR,
    PreprocessConfig,
    PreprocessError,
    background_level,
    foreground_threshold,
    preprocess_slice,
    remove_dense_inclusions,
)
from foramlib.io.atomic import atomic_dir
from foramlib.io.volumes import manifest_voxel_size, normalize_intensity, read_volume

__all__ = [
    "Plane",
    "SliceError",
    "SlicingConfig",
    "plane_axes",
    "fibonacci_hemisphere",
    "sample_planes",
    "extract_slice",
    "extract_slices",
    "slices_per_volume",
    "STORE_RECORD",
    "trained_slicing",
    "prepare_volume",
    "slice_volume",
    "build_slice_store",
    "load_slices",
]

# The training reserve (see build_slice_store): more sections of each volume, of which
# the split stage adds the training specimens' to the training split.
RESERVE_SUFFIX = ".reserve.npy"
RESERVE_INDEX = "reserve.csv"

INDEX_COLUMNS = (
    "slice_id",
    "file",
    "specimen_id",
    "species",
    "array",
    "row",
    "normal_x",
    "normal_y",
    "normal_z",
    "offset_vox",
    "angle_deg",
    "fossil_fraction",
    "voxel_size_um",
)


class SliceError(ValueError):
    """A volume or collection from which no usable slice dataset can be made."""


@dataclass(frozen=True)
class Plane:
    """A section plane in array coordinates.

    Parameters
    ----------
    normal : 3 floats
        Plane normal in the array's axis order; normalised on creation.
    offset : float
        Signed distance (voxels) of the plane from the volume centre along `normal`.
    angle : float
        In-plane rotation of the section, degrees.
    """

    normal: tuple[float, float, float]
    offset: float = 0.0
    angle: float = 0.0

    def __post_init__(self) -> None:
        n = np.asarray(self.normal, dtype=np.float64)
        if n.shape != (3,) or not np.isfinite(n).all() or np.linalg.norm(n) < 1e-9:
            raise ValueError(f"plane normal must be a non-zero 3-vector, got {self.normal!r}")
        if not (np.isfinite(self.offset) and np.isfinite(self.angle)):
            raise ValueError(
                f"plane offset/angle must be finite, got {self.offset!r}, {self.angle!r}"
            )
        object.__setattr__(self, "normal", tuple(float(v) for v in n / np.linalg.norm(n)))


def plane_axes(normal, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal in-plane axes (u, v) of a plane, turned by `angle` degrees.

    The reference direction is the array axis least aligned with the normal, so the
    frame is well defined for every normal.

    >>> u, v = plane_axes((0, 0, 1))
    >>> np.round(u, 6).tolist(), np.round(v, 6).tolist()
    ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    """
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    ref = np.eye(3)[int(np.argmin(np.abs(n)))]
    u = ref - n * (ref @ n)
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    a = np.deg2rad(angle)
    return np.cos(a) * u + np.sin(a) * v, -np.sin(a) * u + np.cos(a) * v


def fibonacci_hemisphere(n: int) -> np.ndarray:
    """`n` unit vectors spread evenly over the upper hemisphere (z >= 0).

    A plane and its flipped normal give the same section, so a hemisphere covers all
    orientations.

    >>> pts = fibonacci_hemisphere(100)
    >>> pts.shape, bool((pts[:, 2] >= 0).all()), bool(np.allclose(np.linalg.norm(pts, axis=1), 1))
    ((100, 3), True, True)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # uniform in z over (0, 1] gives uniform area on the hemisphere
    r = np.sqrt(1.0 - z**2)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def sample_planes(
    points: np.ndarray,
    n_orientations: int,
    offsets_per_orientation: int,
    rng: np.random.Generator,
    *,
    centre=None,
    include_axes: bool = True,
    jitter_deg: float = 5.0,
) -> list[Plane]:
    """Section planes through an object given by sample `points` (N×3, voxel coords).

    Normals: the three axis directions jittered by up to `jitter_deg` (when
    `include_axes`) plus a randomly turned Fibonacci hemisphere for the rest.
    Offsets: stratified over the object's extent along each normal (2nd to 98th
    percentile of the points' projections), so planes cut the object, not the air.
    In-plane angles: uniform in [0, 360).
    """
    if n_orientations < 1 or offsets_per_orientation < 1:
        raise ValueError(
            f"n_orientations and offsets_per_orientation must be >= 1, got "
            f"{n_orientations!r}, {offsets_per_orientation!r}"
        )
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"points must be a non-empty N x 3 array, got shape {pts.shape}")
    centre = pts.mean(axis=0) if centre is None else np.asarray(centre, dtype=np.float64)
    normals = []
    if include_axes:
        for axis in np.eye(3)[: min(3, n_orientations)]:
            tilt = Rotation.from_rotvec(rng.normal(size=3) * np.deg2rad(jitter_deg) / 2)
            normals.append(tilt.apply(axis))
    rest = n_orientations - len(normals)
    if rest > 0:
        turn = Rotation.random(random_state=rng)
        normals.extend(turn.apply(fibonacci_hemisphere(rest)))
    planes = []
    rel = pts - centre
    for n in normals:
        proj = rel @ n
        lo, hi = np.percentile(proj, [2.0, 98.0])
        strata = np.arange(offsets_per_orientation) + rng.random(offsets_per_orientation)
        for off in lo + (hi - lo) * strata / offsets_per_orientation:
            planes.append(Plane(tuple(n), float(off), float(rng.uniform(0.0, 360.0))))
    return planes


def _plane_points(shape, plane: Plane, size: int, centre) -> np.ndarray:
    u, v = plane_axes(plane.normal, plane.angle)
    c = np.asarray(centre, dtype=np.float64) + plane.offset * np.asarray(plane.normal)
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    # rows follow v, columns follow u
    return (
        c[:, None, None] + v[:, None, None] * t[None, :, None] + u[:, None, None] * t[None, None, :]
    )


def _volume_centre(shape) -> np.ndarray:
    return (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0


def extract_slices(
    volume: np.ndarray,
    planes: Sequence[Plane],
    size: int | None = None,
    *,
    order: int = 1,
    cval: float | None = None,
    centre=None,
) -> np.ndarray:
    """Sample several planes of `volume` in one interpolation call.

    Parameters
    ----------
    volume : 3-D array
    planes : sequence of Plane
    size : int, optional
        Edge length of each square section in voxels; default: the volume's longest
        diagonal, so any plane through it is fully covered.
    order : int
        Spline order (1 = trilinear).
    cval : float, optional
        Value outside the volume; default: the median of the volume's border voxels.
    centre : 3 floats, optional
        Point the offsets are measured from; default: the volume centre.

    Returns
    -------
    ndarray of float32, shape (len(planes), size, size)
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape}")
    if size is None:
        size = int(np.ceil(np.linalg.norm(vol.shape)))
    if int(size) < 2:
        raise ValueError(f"size must be >= 2, got {size!r}")
    if cval is None:
        border = np.concatenate(
            [vol[[0, -1]].ravel(), vol[:, [0, -1]].ravel(), vol[:, :, [0, -1]].ravel()]
        )
        cval = float(np.median(border))
    centre = _volume_centre(vol.shape) if centre is None else centre
    if not planes:
        return np.zeros((0, size, size), np.float32)
    coords = np.stack([_plane_points(vol.shape, p, int(size), centre) for p in planes], axis=1)
    out = ndimage.map_coordinates(
        vol.astype(np.float32, copy=False),
        coords,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )
    return out.astype(np.float32, copy=False)


def extract_slice(volume: np.ndarray, plane: Plane, size: int | None = None, **kwargs):
    """One section of `volume` along `plane`; see :func:`extract_slices`."""
    return extract_slices(volume, [plane], size, **kwargs)[0]


# ----------------------------------------------------------------------------------------
# Dataset creation
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlicingConfig:
    """How many sections to cut and how to preprocess them.

    Parameters
    ----------
    slices_per_taxon : int
        Target number of candidate sections per taxon, shared equally by its volumes
        (so a genus with 4 scans gets 4x more sections per scan than one with 16, as in
        the paper's balanced Table 2).
    offsets_per_orientation : int
        Parallel planes per orientation.
    jitter_deg : float
        Jitter of the three axis-aligned orientations (the authors used ±5°).
    dense_factor : float or None
        See :func:`foramlib.dataset.preprocess.remove_dense_inclusions`.
    smooth_sigma : float
        Gaussian smoothing of the volume (voxels) before thresholding and cutting.
    preprocess : PreprocessConfig
    """

    slices_per_taxon: int = 2000
    offsets_per_orientation: int = 4
    jitter_deg: float = 5.0
    dense_factor: float | None = DENSE_FACTOR
    smooth_sigma: float = 0.8
    preprocess: PreprocessConfig = PreprocessConfig()

    def __post_init__(self) -> None:
        for name in ("slices_per_taxon", "offsets_per_orientation"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def params_keys(cls) -> dict[str, str]:
        """Field -> its ``params.yaml`` key (``slice.*``; the preprocessing's fields as
        ``"preprocess.<name>"``).

        >>> keys = SlicingConfig.params_keys()
        >>> keys["jitter_deg"], keys["preprocess.size"]
        ('slice.jitter_deg', 'slice.size')
        """
        keys = {f.name: f"slice.{f.name}" for f in fields(cls) if f.name != "preprocess"}
        keys.update({f"preprocess.{k}": v for k, v in PreprocessConfig.params_keys().items()})
        return keys

    @classmethod
    def from_params(cls, params: Mapping, *, skip: Iterable[str] = ()) -> SlicingConfig:
        """The slicing of ``params.yaml``'s ``slice`` section: the one reader shared by
        the ``slice`` stage and the pretraining corpus, so both cut and preprocess
        alike. Keys in `skip` (as in :meth:`params_keys`) keep their defaults.

        >>> params = {"slice": {"slices_per_taxon": 600, "offsets_per_orientation": 4,
        ...     "jitter_deg": 5, "dense_factor": None, "smooth_sigma": 0.8, "size": 96,
        ...     "sensitivity": 0.5, "min_fraction": 0.02, "margin": 0.05, "clahe": False,
        ...     "denoise": False, "sharpen": False}}
        >>> cfg = SlicingConfig.from_params(params, skip=["slices_per_taxon"])
        >>> cfg.slices_per_taxon, cfg.dense_factor, cfg.preprocess.size
        (2000, None, 96)
        """
        from foramlib.params import read_keys

        skip = set(skip)
        inner = {k.split(".", 1)[1] for k in skip if k.startswith("preprocess.")}
        own = {k: v for k, v in cls.params_keys().items() if not k.startswith("preprocess.")}
        return cls(
            **read_keys(params, own, skip),
            preprocess=PreprocessConfig.from_params(params, skip=inner),
        )

    @classmethod
    def from_record(cls, record: Mapping, *, flat: bool = False) -> SlicingConfig:
        """The settings a slice store was cut with, from its ``slicing.json`` record
        (the preprocessing nested under ``"preprocess"``), or from a ``params.yaml``
        ``slice`` section (``flat=True``: the preprocessing keys beside the others).

        Settings absent keep their defaults; other entries (counts, per-volume
        statistics) are ignored.

        Raises
        ------
        ValueError
            `record` is not a mapping, a store record has no ``preprocess`` mapping, or
            a setting is invalid.

        Examples
        --------
        >>> rec = {"preprocess": {"size": 40, "version": 1}, "jitter_deg": 2, "n_slices": 9}
        >>> cfg = SlicingConfig.from_record(rec)
        >>> cfg.preprocess.size, cfg.jitter_deg, cfg.smooth_sigma
        (40, 2, 0.8)
        >>> SlicingConfig.from_record({"size": 48, "jitter_deg": 1}, flat=True).preprocess.size
        48
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"slicing settings must be a mapping, got {record!r}")
        pp = record if flat else record.get("preprocess")
        if not isinstance(pp, Mapping):
            raise ValueError(f"a slice store record needs a 'preprocess' mapping, got {pp!r}")
        own = {f.name: record[f.name] for f in fields(cls) if f.name in record}
        own.pop("preprocess", None)
        return cls(preprocess=PreprocessConfig.from_record(pp), **own)


STORE_RECORD = "data/slices/slicing.json"


def trained_slicing(workspace) -> tuple[SlicingConfig, str]:
    """How a workspace's models' slices were cut and preprocessed, and the source.

    The one reader of the training settings for serving (``foram classify``, the
    dashboard): the slice store's record (:data:`STORE_RECORD`, what the store WAS cut
    with) first, then ``params.yaml``'s ``slice`` section (what the next store will be
    cut with), else :class:`SlicingConfig`'s defaults. One source gives every setting:
    an unreadable record is passed over whole, never patched from the parameters.

    Parameters
    ----------
    workspace : path-like
        The project folder (holding ``params.yaml`` and ``data/``).

    Returns
    -------
    (SlicingConfig, str)
        The settings and where they were read from: ``"data/slices/slicing.json"``,
        ``"params.yaml slice.*"`` or ``"built-in defaults"``.

    Examples
    --------
    >>> import tempfile
    >>> trained_slicing(tempfile.mkdtemp())[1]
    'built-in defaults'
    """
    import yaml

    ws = Path(workspace)
    record = ws / STORE_RECORD
    if record.is_file():
        try:
            return SlicingConfig.from_record(json.loads(record.read_text("utf-8"))), STORE_RECORD
        except (ValueError, TypeError):  # unreadable or stale (JSON errors are ValueErrors)
            pass
    params = ws / "params.yaml"
    if params.is_file():
        try:
            section = (yaml.safe_load(params.read_text("utf-8")) or {}).get("slice")
            return SlicingConfig.from_record(section or {}, flat=True), "params.yaml slice.*"
        except (yaml.YAMLError, AttributeError, ValueError, TypeError):
            pass
    return SlicingConfig(), "built-in defaults"


def slices_per_volume(manifest: pd.DataFrame, slices_per_taxon: int) -> pd.Series:
    """Candidate sections per volume: the taxon's budget split equally over its scans."""
    n_vol = manifest.groupby("species")["file"].transform("count")
    return np.ceil(slices_per_taxon / n_vol).astype(int)


def prepare_volume(
    volume,
    *,
    smooth_sigma: float = 0.8,
    dense_factor: float | None = DENSE_FACTOR,
    name: str = "volume",
):
    """Ready a volume for cutting: denoise, drop dense inclusions, normalise, threshold.

    Shared by dataset creation and the 3D matching index, so that both see sections
    prepared the same way.

    Returns
    -------
    data : ndarray of float32 in [0, 1]
    background, threshold : float
        The surroundings' level and the deviation threshold of
        :func:`foramlib.dataset.preprocess.foreground_threshold`.
    points : ndarray of int, shape (N, 3)
        Voxel coordinates of the fossil (deviation above the threshold).

    Raises
    ------
    SliceError
        If nothing stands out from the background (a blank volume, or a speck).
    """
    data = np.asarray(volume, dtype=np.float32)
    if smooth_sigma > 0:
        # mild 3D denoising: a low-contrast matrix is otherwise lost in the noise
        data = ndimage.gaussian_filter(data, smooth_sigma)
    data = normalize_intensity(remove_dense_inclusions(data, dense_factor))
    background = background_level(data)
    try:
        threshold = foreground_threshold(data, background)
    except PreprocessError as exc:
        raise SliceError(f"{name}: {exc}") from None
    points = np.argwhere(np.abs(data - background) > threshold)
    if len(points) < 50:
        raise SliceError(
            f"{name}: only {len(points)} voxels above the Otsu threshold "
            f"{threshold:.3f}; no fossil to slice"
        )
    return data, background, threshold, points


def slice_volume(
    path,
    n_slices: int,
    config: SlicingConfig,
    seed: int,
    voxel_size_um: float | None = None,
    name: str | None = None,
    max_side: int | None = None,
):
    """Cut, filter and preprocess the sections of one volume.

    A volume with a side over `max_side` is binned as it is read
    (:func:`foramlib.io.volumes.read_volume`); ``stats["binned"]`` then gives the block size.

    Returns
    -------
    images : ndarray of uint8, shape (n_kept, size, size)
    rows : DataFrame
        Provenance per kept image: plane normal, offset, angle, fossil fraction.
    stats : dict
        Candidates, kept, dropped as low-content, seconds.
    """
    name = name or str(path)
    vol = read_volume(path, voxel_size_um=voxel_size_um, max_side=max_side)
    return _slice_read_volume(vol, n_slices, config, seed, name)


def _slice_read_volume(vol, n_slices: int, config: SlicingConfig, seed: int, name: str):
    """:func:`slice_array` on a volume read by ``read_volume``, noting its binning."""
    images, rows, stats = slice_array(vol.data, n_slices, config, seed, name=name)
    if vol.binned > 1:  # only then: a store of volumes read as they are stays as it was
        stats["binned"] = vol.binned
    return images, rows, stats


def slice_array(volume: np.ndarray, n_slices: int, config: SlicingConfig, seed: int, name="volume"):
    """:func:`slice_volume` on a volume already in memory (same outputs)."""
    t0 = time.perf_counter()
    data, background, threshold, fg = prepare_volume(
        volume, smooth_sigma=config.smooth_sigma, dense_factor=config.dense_factor, name=name
    )
    rng = np.random.default_rng(seed)
    fg = fg[rng.choice(len(fg), size=min(len(fg), 20_000), replace=False)]
    centre = _volume_centre(data.shape)
    radius = float(np.max(np.linalg.norm(fg - centre, axis=1))) + 3.0
    window = int(np.ceil(2 * radius))
    n_orient = int(np.ceil(n_slices / config.offsets_per_orientation))
    planes = sample_planes(
        fg,
        n_orient,
        config.offsets_per_orientation,
        rng,
        centre=centre,
        jitter_deg=config.jitter_deg,
    )[:n_slices]
    pp = config.preprocess
    images, rows = [], []
    dropped = 0
    for start in range(0, len(planes), 32):
        batch = planes[start : start + 32]
        sections = extract_slices(data, batch, window, cval=background)
        for plane, sec in zip(batch, sections, strict=True):
            try:
                img, info = preprocess_slice(
                    sec, pp, threshold=threshold, background=background, normalized=True, name=name
                )
            except PreprocessError:
                info = None
            if info is None or info.fraction < pp.min_fraction:
                dropped += 1  # low content: grazing section or empty
                continue
            images.append(img)
            rows.append(
                dict(
                    normal_x=plane.normal[0],
                    normal_y=plane.normal[1],
                    normal_z=plane.normal[2],
                    offset_vox=round(plane.offset, 3),
                    angle_deg=round(plane.angle, 3),
                    fossil_fraction=round(info.fraction, 5),
                )
            )
    size = pp.size
    stack = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    stats = dict(
        candidates=len(planes),
        kept=len(images),
        low_content=dropped,
        seconds=round(time.perf_counter() - t0, 3),
        threshold=round(threshold, 5),
    )
    return stack, pd.DataFrame(rows), stats


def _slice_job(args):
    """One volume read once: its slices, and its training reserve when asked for."""
    path, n, config, seed, voxel, name, max_side, n_reserve, reserve_seed = args
    vol = read_volume(path, voxel_size_um=voxel, max_side=max_side)
    ordinary = _slice_read_volume(vol, n, config, seed, name)
    reserve = (
        slice_array(vol.data, n_reserve, config, reserve_seed, name=name) if n_reserve else None
    )
    return ordinary, reserve


def _array_name(file: str) -> str:
    stem = Path(file).name
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}.npy"


def build_slice_store(
    manifest: pd.DataFrame,
    out_dir,
    config: SlicingConfig,
    *,
    seed: int = 0,
    n_jobs: int = 1,
    max_side: int | None = None,
    train_factor: int = 1,
    progress: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Slice every volume of a curated manifest into a slice store, atomically.

    A volume with a side over `max_side` is binned as it is read (its statistics in
    ``slicing.json`` then say by how much).

    With ``train_factor > 1`` every volume is also cut into a **training reserve** of
    ``(train_factor - 1)`` times its candidate sections, planes drawn from a separate
    random stream (so the ordinary slices are the same whatever the factor), stored as
    ``<volume>.reserve.npy`` and listed in ``reserve.csv`` (same columns as
    ``index.csv``). The split stage adds the reserve of the *training* specimens to the
    training split: training sees more sections of its specimens, while the split's
    shares, the validation and the test slices stay those of ``index.csv``.

    Writes ``<volume>.npy`` (uint8, n × size × size) per volume, ``index.csv`` (one row
    per slice, see ``INDEX_COLUMNS``) and ``slicing.json`` (settings, preprocessing
    version, per-volume statistics, timing) into `out_dir`, which replaces any previous
    store only once everything is written.

    Raises
    ------
    SliceError
        Listing every volume with nothing above threshold and every specimen left with
        zero usable slices; nothing is written then.
    """
    if int(n_jobs) < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs!r}")
    if isinstance(train_factor, bool) or not isinstance(train_factor, int) or train_factor < 1:
        raise ValueError(f"slice.train_factor must be an integer >= 1, got {train_factor!r}")
    need = {"file", "specimen_id", "species", "path"}
    if need - set(manifest.columns):
        raise ValueError(f"manifest lacks column(s) {sorted(need - set(manifest.columns))}")
    counts = slices_per_volume(manifest, config.slices_per_taxon)
    names = [_array_name(f) for f in manifest["file"]]
    if len(set(names)) != len(names):
        raise SliceError("two volumes map to the same array name; file stems must be unique")
    jobs = []
    for i, row in enumerate(manifest.itertuples(index=False)):
        voxel = manifest_voxel_size(row)
        vol_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        # the reserve has its own stream: the ordinary slices do not depend on the factor
        res_seed = int(np.random.SeedSequence([seed, i, 1]).generate_state(1)[0])
        n = int(counts.iloc[i])
        jobs.append(
            (
                row.path,
                n,
                config,
                vol_seed,
                voxel,
                row.file,
                max_side,
                n * (train_factor - 1),
                res_seed,
            )
        )
    both, problems = _run_slice_jobs(jobs, n_jobs, progress)
    results = [None if b is None else b[0] for b in both]
    reserve = [None if b is None else b[1] for b in both] if train_factor > 1 else []
    kept = pd.Series([0 if r is None else len(r[0]) for r in results], index=manifest.index)
    per_specimen = kept.groupby(manifest["specimen_id"]).sum()
    for spec in per_specimen[per_specimen == 0].index:
        species = manifest.loc[manifest["specimen_id"] == spec, "species"].iloc[0]
        problems.append(
            f"specimen {spec!r} ({species}) yields zero usable slices; lower "
            f"slice.min_fraction or raise slice.sensitivity, or drop it from the "
            f"manifest"
        )
    if problems:
        raise SliceError(
            f"{len(problems)} problem(s) while slicing:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    with atomic_dir(out_dir) as tmp:
        index = _store_arrays(tmp, manifest, names, results)
        index.to_csv(Path(tmp) / "index.csv", index=False)
        if reserve:
            names = [f"{n[:-4]}{RESERVE_SUFFIX}" for n in names]
            _store_arrays(tmp, manifest, names, reserve).to_csv(
                Path(tmp) / RESERVE_INDEX, index=False
            )
        meta = dict(
            preprocess=config.preprocess.as_dict(),
            slices_per_taxon=config.slices_per_taxon,
            offsets_per_orientation=config.offsets_per_orientation,
            jitter_deg=config.jitter_deg,
            dense_factor=config.dense_factor,
            smooth_sigma=config.smooth_sigma,
            seed=seed,
            n_volumes=len(manifest),
            n_slices=len(index),
            # no timings here: the store must be byte-identical for the same inputs, or
            # DVC would rerun every downstream stage after a mere re-slice
            volumes={
                row.file: {k: v for k, v in res[2].items() if k != "seconds"}
                for row, res in zip(manifest.itertuples(index=False), results, strict=True)
            },
        )
        if reserve:  # only then: a store without a reserve stays byte-identical
            meta["train_factor"] = train_factor
            meta["n_reserve"] = int(sum(len(r[0]) for r in reserve))
        (Path(tmp) / "slicing.json").write_text(json.dumps(meta, indent=2) + "\n")
    return index


def _run_slice_jobs(jobs, n_jobs: int, progress):
    """Run slicing jobs (see :func:`foramlib.workers.volume_pool`); results and problems."""
    from foramlib.workers import volume_pool

    results, problems = [], []
    # portable: the store's bytes (pixels and plane normals) must not depend on the CPU
    with volume_pool(int(n_jobs), portable=True) as pool:
        futures = [pool.submit(_slice_job, j) for j in jobs]
        for i, job in enumerate(jobs):
            try:
                res = futures[i].result()
            except SliceError as exc:
                problems.append(str(exc))
                results.append(None)
                continue
            results.append(res)
            if progress:
                st = res[0][2]
                extra = f", reserve {len(res[1][0])}" if res[1] is not None else ""
                progress(
                    f"[{i + 1}/{len(jobs)}] {job[5]}: {st['kept']}/{st['candidates']} "
                    f"slices kept ({st['low_content']} low-content){extra}, "
                    f"{st['seconds']:.1f} s"
                )
    return results, problems


def _store_arrays(folder, manifest: pd.DataFrame, names, results) -> pd.DataFrame:
    """Save each volume's slices as ``names[i]`` in `folder`; their index rows."""
    frames = []
    for row, name, (images, prov, _) in zip(
        manifest.itertuples(index=False), names, results, strict=True
    ):
        np.save(Path(folder) / name, images)
        prov = prov.copy()
        prov.insert(0, "row", np.arange(len(prov)))
        prov.insert(0, "array", name)
        prov.insert(0, "species", row.species)
        prov.insert(0, "specimen_id", row.specimen_id)
        prov.insert(0, "file", row.file)
        prov.insert(0, "slice_id", [f"{name[:-4]}:{r:05d}" for r in prov["row"]])
        prov["voxel_size_um"] = getattr(row, "voxel_size_um", np.nan)
        frames.append(prov)
    return pd.concat(frames, ignore_index=True)[list(INDEX_COLUMNS)]


def load_reserve(store_dir) -> pd.DataFrame | None:
    """The training reserve's index of a slice store, or None when it has none.

    See :func:`build_slice_store` (``train_factor``).
    """
    path = Path(store_dir) / RESERVE_INDEX
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"specimen_id": str})


def load_slices(store_dir, index: pd.DataFrame | None = None, *, mmap: bool = True):
    """Open a slice store: the index and a dict of (memory-mapped) arrays by name.

    Raises
    ------
    SliceError
        If the index refers to a missing array or a row beyond an array's length.
    """
    store = Path(store_dir)
    if index is None:
        index = pd.read_csv(store / "index.csv", dtype={"specimen_id": str})
    arrays = {}
    for name, rows in index.groupby("array")["row"]:
        path = store / name
        if not path.exists():
            raise SliceError(f"slice store {store}: array {name} listed in the index is missing")
        arrays[name] = np.load(path, mmap_mode="r" if mmap else None)
        if rows.max() >= len(arrays[name]):
            raise SliceError(
                f"slice store {store}: {name} has {len(arrays[name])} slices but "
                f"the index asks for row {rows.max()}"
            )
    return index, arrays
