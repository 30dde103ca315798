"""Micro-CT volumes: reading, checking, resampling, writing, and the manifest.

A collection is a folder of volumes (NIfTI ``.nii``/``.nii.gz``, NRRD
``.nrrd``/``.nhdr``, multi-page TIFF stacks, or folders of reconstructed 2-D slices in
TIFF, PNG or BMP, with the voxel size of a Bruker SkyScan ``*_rec.log`` when one is
there) plus a manifest CSV naming each file's specimen and species. Everything that
enters the pipeline passes through here, so bad input is refused with a message that
names the file and the problem.

Array axis order is nibabel's ``(x, y, z)``. TIFF stacks are stored ``(z, y, x)``
(one page per z slice) and are transposed to match.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from foramlib.io.atomic import write_bytes

__all__ = [
    "MANIFEST_REQUIRED",
    "VOLUME_SUFFIXES",
    "ManifestError",
    "ManifestWarning",
    "Volume",
    "VolumeError",
    "VolumeTooLarge",
    "HeaderRead",
    "binning_factor",
    "IntensityWindow",
    "check_volume_array",
    "manifest_voxel_size",
    "check_manifest",
    "is_volume_path",
    "is_zarr",
    "voxel_size_stated",
    "normalize_intensity",
    "percentile_window",
    "stretch",
    "read_manifest",
    "read_volume",
    "ReconLog",
    "read_recon_log",
    "recon_log_voxel_size",
    "nrrd_spacing_um",
    "SLICE_SUFFIXES",
    "read_volume_bytes",
    "resample_isotropic",
    "write_nifti",
]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".tif", ".tiff")
MANIFEST_REQUIRED = ("file", "specimen_id", "species")
_MANIFEST_STRINGS = ("file", "specimen_id", "species", "source", "notes")
_UNIT_TO_UM = {"micron": 1.0, "mm": 1e3, "meter": 1e6}  # "unknown" is not a unit
# NRRD "space units" / "units" are free strings; these are the spatial ones we know
_NRRD_UNIT_TO_UM = {
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometers": 1.0,
    "micrometre": 1.0,
    "micrometres": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimeters": 1e3,
    "millimetre": 1e3,
    "millimetres": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "meters": 1e6,
    "metre": 1e6,
    "metres": 1e6,
}
_TIFF_SUFFIXES = (".tif", ".tiff")
# OME-NGFF axis units (UDUNITS-2 names) we know as lengths
_NGFF_UNIT_TO_UM = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")  # a folder of reconstructed slices


class VolumeError(ValueError):
    """A volume that cannot be used; the message starts with the file (or array) name."""


class VolumeTooLarge(VolumeError):
    """A volume whose header states more voxels than the caller's limit (found before
    its data are read)."""


class ManifestError(ValueError):
    """A manifest with problems; ``problems`` lists every one, the message shows them all."""

    def __init__(self, problems: Sequence[str], path: str | Path | None = None):
        self.problems = list(problems)
        self.path = path
        where = f"manifest {path}" if path is not None else "manifest"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where} has {len(self.problems)} problem(s):\n{lines}")

    def __reduce__(self):
        return (type(self), (self.problems, self.path))


class ManifestWarning(UserWarning):
    """Something in a collection looks wrong but does not stop the pipeline."""


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare fields yourself
class Volume:
    """A checked volume: float32 ``(x, y, z)`` data and its voxel size in µm.

    ``spacing_um`` holds the per-axis spacing; it equals ``voxel_size_um`` on every
    axis unless the volume was read with ``isotropic=False``, in which case
    ``voxel_size_um`` is the finest spacing.
    """

    data: np.ndarray
    voxel_size_um: float
    path: Path | None = None
    spacing_um: tuple[float, float, float] | None = None
    level: int = 0  # the pyramid level read (OME-Zarr); 0 is the finest
    binned: int = 1  # block size it was averaged by on read (read_volume's max_side)

    def __post_init__(self):
        if self.spacing_um is None:
            object.__setattr__(self, "spacing_um", (float(self.voxel_size_um),) * 3)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _volume_suffix(name: str) -> str | None:
    lower = name.lower()
    return next(
        (s for s in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None
    )


def is_volume_path(path) -> bool:
    """True for a folder (of slices) or a file with a volume suffix.

    Examples
    --------
    >>> is_volume_path("scan.nii.gz"), is_volume_path("notes.txt")
    (True, False)
    """
    path = Path(path)
    return path.is_dir() or _volume_suffix(path.name) is not None


def _check_dtype(dtype: np.dtype, name: str) -> None:
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise VolumeError(
            f"{name}: has unsupported data type {dtype}; expected integer or floating-point "
            "intensities (not complex, bool, RGB or object)"
        )


def _check_shape(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 4:
        raise VolumeError(
            f"{name}: is 4-D with {shape[3]} volumes (shape {shape}); expected a single 3-D volume"
        )
    if len(shape) != 3:
        raise VolumeError(f"{name}: is {len(shape)}-D (shape {shape}); expected a 3-D volume")
    if 0 in shape:
        raise VolumeError(f"{name}: is empty (shape {shape}); every axis needs at least one voxel")
    return shape


def _check_voxels(shape: tuple[int, ...], name: str, max_voxels: int | None) -> None:
    """Refuse a volume of more than `max_voxels` voxels (None: any size)."""
    n = math.prod(int(v) for v in shape)
    if max_voxels is not None and n > max_voxels:
        raise VolumeTooLarge(
            f"{name}: {' × '.join(str(int(v)) for v in shape)} voxels ({_voxels(n)}) is more "
            f"than the limit of {_voxels(max_voxels)}"
        )


def _voxels(n: float) -> str:
    """A voxel count in words: "1,074 million voxels", "12,000 voxels"."""
    return f"{n / 1e6:,.0f} million voxels" if n >= 1e7 else f"{n:,.0f} voxels"


def _check_values(arr: np.ndarray, name: str, *, allow_constant: bool = False) -> None:
    if arr.dtype.kind == "f":
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        if n_nan or n_inf:
            raise VolumeError(
                f"{name}: contains {n_nan} NaN and {n_inf} infinite voxel(s) "
                f"out of {arr.size}; expected finite intensities"
            )
    lo, hi = arr.min(), arr.max()
    if lo == hi and not allow_constant:
        raise VolumeError(
            f"{name}: is constant (every voxel equals {lo.item()!r}); it holds no image"
        )


def check_volume_array(arr, name: str = "volume") -> np.ndarray:
    """Check that `arr` is a usable 3-D volume and return it (dtype unchanged).

    A 4-D array with a singleton last axis is squeezed to 3-D.

    Parameters
    ----------
    arr : array_like
        Candidate volume.
    name : str
        Name used at the start of error messages (usually the file name).

    Returns
    -------
    numpy.ndarray
        The 3-D array.

    Raises
    ------
    VolumeError
        If the array is not 3-D (or 4-D with one volume), is empty, constant, contains
        NaN or infinite values, or has a non-numeric dtype.

    Examples
    --------
    >>> import numpy as np
    >>> check_volume_array(np.arange(24.0).reshape(2, 3, 4, 1)).shape
    (2, 3, 4)
    >>> check_volume_array(np.ones((64, 64)), name="scan.tif")
    Traceback (most recent call last):
    ...
    foramlib.io.volumes.VolumeError: scan.tif: is 2-D (shape (64, 64)); expected a 3-D volume
    """
    arr = np.asarray(arr)
    _check_dtype(arr.dtype, name)
    shape = _check_shape(arr.shape, name)
    arr = arr.reshape(shape)
    _check_values(arr, name)
    return arr


def _positive_finite(value, what: str, count: int | None = None) -> tuple[float, ...]:
    """Validate one number (count=None) or a `count`-sequence of positive finite numbers."""
    try:
        values = (float(value),) if count is None else tuple(float(v) for v in value)
        ok = (count is None or len(values) == count) and all(
            math.isfinite(v) and v > 0 for v in values
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        need = "a positive finite number" if count is None else f"{count} positive finite numbers"
        raise ValueError(f"{what} must be {need}, got {value!r}")
    return values


def resample_isotropic(arr, spacing_um, order: int = 1) -> tuple[np.ndarray, float]:
    """Resample a 3-D array to isotropic voxels at its finest spacing.

    Parameters
    ----------
    arr : array_like, shape (nx, ny, nz)
        Volume.
    spacing_um : sequence of 3 floats
        Voxel spacing along each axis, in µm.
    order : int
        Spline order for :func:`scipy.ndimage.zoom` (0-5; 1 = trilinear).

    Returns
    -------
    resampled : numpy.ndarray
        The input itself (no copy) when already isotropic within 1e-6 relative.
    voxel_size_um : float
        The new isotropic spacing (the smallest input spacing).

    Examples
    --------
    >>> import numpy as np
    >>> out, vox = resample_isotropic(np.zeros((4, 4, 2)), (5.0, 5.0, 10.0))
    >>> out.shape, vox
    ((4, 4, 4), 5.0)
    """
    spacing = _positive_finite(spacing_um, "spacing_um", count=3)
    if not (isinstance(order, int | np.integer) and 0 <= order <= 5):
        raise ValueError(f"order must be an integer from 0 to 5, got {order!r}")
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"arr must be 3-D, got shape {arr.shape}")
    finest = min(spacing)
    if max(spacing) / finest - 1.0 <= 1e-6:
        return arr, finest
    factors = [s / finest for s in spacing]
    out = ndimage.zoom(arr, factors, order=order, mode="nearest")
    return out, finest


class IntensityWindow(NamedTuple):
    """The intensities a contrast stretch maps to 0 and 1 (see :func:`percentile_window`).

    Attributes
    ----------
    lo, hi : float
        The window, ``lo < hi``.
    minmax : bool
        True when the two percentiles coincided and the window is the array's minimum
        and maximum instead.
    """

    lo: float
    hi: float
    minmax: bool = False


def percentile_window(
    arr, low: float = 0.5, high: float = 99.5, name: str = "volume"
) -> IntensityWindow:
    """The intensity window between two percentiles, for a contrast stretch.

    This is the one place the project's percentile stretches take their window from
    (:func:`normalize_intensity`, :func:`foramlib.dataset.preprocess.to_gray_float`);
    :func:`stretch` maps it onto ``[0, 1]``. When the percentiles coincide (an image
    that is almost all one value) the window falls back to the minimum and maximum.

    Parameters
    ----------
    arr : array_like
        Intensities (any shape); the percentiles are taken of its values as they are.
    low, high : float
        Percentiles mapped to 0 and 1; ``0 <= low < high <= 100``.
    name : str
        Name used at the start of error messages.

    Returns
    -------
    IntensityWindow
        ``(lo, hi, minmax)`` as Python floats, ``lo < hi``.

    Raises
    ------
    ValueError
        If `low` and `high` are out of order or outside ``[0, 100]``.
    VolumeError
        If the array is empty, a percentile is NaN or infinite, or every value is equal.

    Examples
    --------
    >>> import numpy as np
    >>> percentile_window(np.array([0.0, 5.0, 10.0, 1000.0]), 0, 50)
    IntensityWindow(lo=0.0, hi=7.5, minmax=False)
    >>> percentile_window(np.r_[np.zeros(999), 4.0])
    IntensityWindow(lo=0.0, hi=4.0, minmax=True)
    """
    if not (0 <= low < high <= 100):
        raise ValueError(f"need 0 <= low < high <= 100, got low={low!r}, high={high!r}")
    arr = np.asarray(arr)
    if arr.size == 0:
        raise VolumeError(f"{name}: is empty (shape {arr.shape}); nothing to normalise")
    lo, hi = (float(v) for v in np.percentile(arr, [low, high]))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise VolumeError(f"{name}: contains NaN or infinite values; cannot normalise")
    if hi > lo:
        return IntensityWindow(lo, hi)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise VolumeError(f"{name}: is constant (every voxel equals {lo!r}); cannot normalise")
    return IntensityWindow(lo, hi, minmax=True)


def stretch(arr, lo: float, hi: float, dtype=np.float32) -> np.ndarray:
    """Map the window ``[lo, hi]`` linearly onto ``[0, 1]``, clipping what lies outside.

    Computed in `dtype`: ``(arr - lo) / (hi - lo)`` with `arr`, `lo` and ``hi - lo``
    each converted to `dtype` first (``hi - lo`` is taken in double precision). The
    window usually comes from :func:`percentile_window`.

    Parameters
    ----------
    arr : array_like
        Intensities (any shape); not modified.
    lo, hi : float
        The window, ``lo < hi``.
    dtype : floating dtype
        The dtype of the computation and of the result.

    Returns
    -------
    numpy.ndarray
        A new array of `dtype` with values in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> stretch(np.array([-5, 0, 5, 10, 20]), 0.0, 10.0).tolist()
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    dtype = np.dtype(dtype)
    out = np.asarray(arr).astype(dtype)  # a copy, worked on in place
    np.subtract(out, dtype.type(lo), out=out)
    np.divide(out, dtype.type(hi - lo), out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_intensity(arr, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale intensities to float32 ``[0, 1]`` between two percentiles, clipping outliers.

    Falls back to the minimum and maximum when the percentiles coincide
    (:func:`percentile_window`, then :func:`stretch`).

    Parameters
    ----------
    arr : array_like
        Intensities (any shape).
    low, high : float
        Percentiles mapped to 0 and 1; ``0 <= low < high <= 100``.

    Raises
    ------
    VolumeError
        If the array is empty or constant, or a percentile is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> normalize_intensity(np.array([0.0, 5.0, 10.0, 1000.0]), 0, 50).tolist()
    [0.0, 0.6666666865348816, 1.0, 1.0]
    """
    lo, hi, _ = percentile_window(arr, low, high)
    return stretch(arr, lo, hi, np.float32)


#: a binned volume holds at most this many cubes of ``max_side`` voxels (2: 1 GiB of
#: float32 at 512): without it a scan just under twice ``max_side`` would be read whole
#: (a 1000³ scan: 4 GB as float32, and the stages hold a few copies)
MAX_BINNED_CUBES = 2


def binning_factor(shape, max_side: int | None) -> int:
    """The block size that brings a volume's largest side down to the coarsest size still
    at least `max_side` (1: read as it is), as an OME-Zarr pyramid level is chosen, and
    further while the binned volume would hold more than :data:`MAX_BINNED_CUBES` cubes
    of `max_side` voxels (a bounded working set whatever the scan's size).

    >>> binning_factor((2048, 2048, 1900), 512), binning_factor((700, 600, 600), 512)
    (4, 1)
    >>> binning_factor((1000, 1000, 1000), 512)  # 1000³ read whole would be 4 GB
    2
    >>> binning_factor((2048, 2048, 2048), None)
    1
    """
    if max_side is None:
        return 1
    return _bounded(shape, max_side, max(1, int(max(shape)) // int(max_side)))


def _bounded(shape, max_side: int, f: int = 1) -> int:
    """`f`, or the smallest larger block size whose binned volume holds at most
    :data:`MAX_BINNED_CUBES` cubes of `max_side` voxels."""
    limit = MAX_BINNED_CUBES * float(max_side) ** 3
    while np.prod([int(s) // f for s in shape], dtype=np.float64) > limit:
        f += 1
    return f


def _ngff_binning(array, axes, max_side: int | None) -> int:
    """The block size an OME-Zarr level is binned by as it is read (1: read whole): the
    pyramid gave the coarsest level still `max_side` wide, which may hold more voxels
    than the bound (a store of one level). Only for levels whose spatial axes are the
    last three and whose other axes have one element (time, channel), as NGFF stores
    them."""
    if max_side is None or array.ndim < 3 or any(int(s) != 1 for s in array.shape[:-3]):
        return 1
    names = [(a if isinstance(a, dict) else {"name": a}) for a in axes[-3:]]
    if not all(
        a.get("type") == "space" or str(a.get("name", "")).lower() in ("x", "y", "z") for a in names
    ):
        return 1
    return _bounded(array.shape[-3:], max_side)


def _block_mean(slab: np.ndarray, f: int) -> np.ndarray:
    """The mean of each f×f×f block of a slab (f, A, B) → (A // f, B // f), float32; the
    last A % f rows and B % f columns (under f voxels of the volume's edge) are left out."""
    a, b = slab.shape[1] // f * f, slab.shape[2] // f * f
    blocks = np.asarray(slab[:, :a, :b], dtype=np.float32).reshape(len(slab), a // f, f, b // f, f)
    return blocks.mean(axis=(0, 2, 4), dtype=np.float64).astype(np.float32)


def _binned(read_slab, n: int, f: int, *, zyx: bool = False) -> np.ndarray:
    """A volume averaged by f×f×f blocks while it is read slab by slab along its slowest
    axis, as a C-ordered float32 ``(x, y, z)`` array: only one slab and the binned result
    are ever in memory (no reordering copy at the end).

    `read_slab(start, stop)` gives planes ``start:stop`` of the slowest axis as an
    (f, A, B) array: ``(f, x, y)`` of an ``(x, y, z)`` volume (NIfTI, NRRD), or with
    `zyx` ``(f, y, x)`` of a stack stored ``(z, y, x)`` (TIFF, slices, Zarr). The last
    ``n % f`` planes are left out, as the other axes' remainders are."""
    out = None
    for k in range(n // f):
        plane = _block_mean(read_slab(k * f, (k + 1) * f), f)
        if zyx:
            plane = plane.T
        if out is None:
            out = np.empty((*plane.shape, n // f), np.float32)
        out[:, :, k] = plane
    if out is None or 0 in out.shape:
        raise VolumeError(f"binning by {f} leaves nothing of a volume {n} planes deep")
    return out


def _unreadable(name: str, exc: Exception, kind: str) -> VolumeError:
    return VolumeError(
        f"{name}: cannot be read: truncated or corrupt file, not a readable {kind} "
        f"{'folder' if kind == 'slice' else 'volume'} ({type(exc).__name__}: {exc})"
    )


def _nifti_image(source: Path | bytes):
    """The image and its header as written, from a path or from a file's bytes."""
    if isinstance(source, bytes):
        # a file object over the content, decompressed as it is read: the header alone
        # says the size, and the data can be binned slab by slab like a file's
        fobj = io.BytesIO(source)
        if source[:2] == b"\x1f\x8b":
            fobj = gzip.GzipFile(fileobj=fobj)
        head = fobj.read(4)
        fobj.seek(0)
        magic = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
        holder = nib.fileholders.FileHolder(fileobj=fobj)
        klass = nib.Nifti2Image if 540 in magic else nib.Nifti1Image
        img = klass.from_file_map({"header": holder, "image": holder})
        fobj.seek(0)
        return img, type(img.header).from_fileobj(fobj, check=False)
    # one file handle for every read of the image: a gzipped volume read slab by slab
    # then decompresses once, forwards, instead of from its start for every slab
    img = nib.load(source, keep_file_open=True)
    with nib.openers.ImageOpener(source) as fobj:
        return img, type(img.header).from_fileobj(fobj, check=False)


class HeaderRead(NamedTuple):
    """A NIfTI or NRRD volume and what its header says of the voxel size.

    Attributes
    ----------
    data : ndarray
        Checked float32 volume in ``(x, y, z)`` order.
    spacing_um : tuple of 3 float or None
        The voxel size along each axis in µm, when the header states it in a known
        unit; None otherwise (never guessed).
    why : str
        Why there is no `spacing_um` ("" when there is one).
    relative : tuple of 3 float or None
        The header's positive voxel dimensions in its own unit, stated or not: their
        ratios still say whether the scan is anisotropic (the axes share one unit).
    binned : int
        The block size the data was averaged by as it was read (1: full resolution);
        `spacing_um` and `relative` are those of the binned data.
    """

    data: np.ndarray
    spacing_um: tuple[float, float, float] | None
    why: str
    relative: tuple[float, float, float] | None
    binned: int = 1


def _read_nifti(
    source: Path | bytes, name: str, max_side: int | None = None, max_voxels: int | None = None
) -> HeaderRead:
    """Checked float32 data, and the header's spacing in µm or why it has none.

    `source` is the file's path or its content. A volume larger than `max_side` is
    binned while it is read (:func:`binning_factor`), slab by slab along z, and its
    spacing scaled to match; one whose header states more than `max_voxels` voxels is
    refused before its data are read (:class:`VolumeTooLarge`). The spacing is taken
    only from a header that states it: positive finite voxel dimensions in a known
    spatial unit. nibabel silently turns a zero voxel dimension into 1 and a header
    without a unit means millimetres to it; a micro-CT export like that would become
    1000 µm voxels, so the raw header is read and such a header gives no spacing (the
    caller asks for ``voxel_size_um``).
    """
    try:
        img, header = _nifti_image(source)
        _check_dtype(img.get_data_dtype(), name)
        shape = _check_shape(img.shape, name)
        _check_voxels(shape, name, max_voxels)
        f = binning_factor(shape, max_side)
        if f == 1:
            data = img.get_fdata(dtype=np.float32)  # forces the (lazy) read
        else:
            extra = (0,) * (len(img.shape) - 3)  # a 4-D file of one volume

            def slab(start, stop):  # (x, y, z) on disk, z slowest: planes z first
                return np.moveaxis(np.asarray(img.dataobj[:, :, start:stop, *extra]), 2, 0)

            data = _binned(slab, shape[2], f)
        zooms = tuple(float(z) * f for z in header.get_zooms()[:3])
        unit = header.get_xyzt_units()[0]
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(name, exc, "NIfTI") from exc
    data = check_volume_array(data, name)
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        shown = tuple(round(z, 6) for z in zooms)
        why = f"the header's voxel size {shown} is not positive and finite"
        return HeaderRead(data, None, why, None, f)
    if unit not in _UNIT_TO_UM:
        why = f"the header states no spatial unit (xyzt_units {unit!r})"
        return HeaderRead(data, None, why, zooms, f)
    return HeaderRead(data, tuple(z * _UNIT_TO_UM[unit] for z in zooms), "", zooms, f)


def _nrrd_zooms(header) -> tuple[tuple[float, ...], object, str] | None:
    """The voxel dimensions a NRRD header gives (in its own unit), that unit and its key."""
    if header.get("space directions") is not None:
        rows = np.asarray(header["space directions"], dtype=np.float64)
        zooms = tuple(float(np.linalg.norm(r)) for r in rows)  # a "none" row is NaN
        return zooms, header.get("space units"), "space units"
    if header.get("spacings") is not None:
        return tuple(float(z) for z in header["spacings"]), header.get("units"), "units"
    return None


def nrrd_spacing_um(header) -> tuple[tuple[float, float, float] | None, str]:
    """The voxel spacing (µm) a NRRD header states, or None and why it states none.

    As for NIfTI, the spacing is taken only where the header states it in a known unit:
    the lengths of its ``space directions`` with ``space units``, or its ``spacings``
    with ``units``. A NRRD without units is not read as millimetres.

    Examples
    --------
    >>> nrrd_spacing_um({"spacings": [0.005] * 3, "units": ["mm"] * 3})
    ((5.0, 5.0, 5.0), '')
    >>> nrrd_spacing_um({"spacings": [0.005] * 3})[1]
    'the header states no spatial unit (units: None)'
    """
    found = _nrrd_zooms(header)
    if found is None:
        return None, "the header states no voxel spacing"
    zooms, units, key = found
    if len(zooms) != 3 or not all(math.isfinite(z) and z > 0 for z in zooms):
        shown = tuple(round(z, 6) for z in zooms)
        return None, f"the header's voxel size {shown} is not positive and finite"
    factors = [_NRRD_UNIT_TO_UM.get(str(u).strip().lower()) for u in (units or [])]
    if len(factors) != 3 or None in factors:
        return None, f"the header states no spatial unit ({key}: {units!r})"
    return tuple(round(z * f, 9) for z, f in zip(zooms, factors, strict=True)), ""


def _nrrd_slabs(
    source: Path | bytes, header: dict, offset: int, shape: tuple[int, int, int], opened
):
    """``read_slab(start, stop)`` over the z planes of a NRRD file's raw or gzip data,
    read in order without the rest of the volume; None where it cannot be streamed
    (another encoding, skipped lines or bytes, more than 3 axes). `source` is the
    file's path or its content (an attached header: data from `offset`). Files it
    opens are closed with `opened` (a :class:`contextlib.ExitStack`)."""
    import gzip as gz

    import nrrd.reader

    encoding = str(header.get("encoding", "")).lower()
    skips = [header.get(k, 0) for k in ("lineskip", "line skip", "byteskip", "byte skip")]
    if encoding not in ("raw", "gzip", "gz") or any(skips) or len(header["sizes"]) != 3:
        return None
    dtype = nrrd.reader._determine_datatype(header)  # the NRRD type and endianness
    plane = shape[0] * shape[1]  # NRRD data: x fastest, z slowest, as NIfTI's
    stored = (shape[2], shape[1], shape[0])
    if isinstance(source, bytes):
        if encoding == "raw":
            data = np.frombuffer(source, dtype, math.prod(stored), offset).reshape(stored)
            return lambda start, stop: data[start:stop].transpose(0, 2, 1)
        stream = io.BytesIO(source)
    else:
        detached = header.get("data file", header.get("datafile"))
        data_path = source
        if detached is not None:
            data_path, offset = Path(detached), 0
            if not data_path.is_absolute():
                data_path = source.parent / data_path
        if encoding == "raw":
            data = np.memmap(data_path, dtype, "r", offset, shape=stored)
            return lambda start, stop: np.asarray(data[start:stop]).transpose(0, 2, 1)
        stream = opened.enter_context(open(data_path, "rb"))
    stream.seek(offset)
    unzipped = opened.enter_context(gz.GzipFile(fileobj=stream))

    def read_slab(start, stop):  # the slabs come in order: just read on
        raw = unzipped.read((stop - start) * plane * dtype.itemsize)
        planes = np.frombuffer(raw, dtype).reshape(stop - start, shape[1], shape[0])
        return planes.transpose(0, 2, 1)

    return read_slab


def _read_nrrd_data(
    source: Path | bytes, name: str, max_side: int | None, max_voxels: int | None = None
):
    """A NRRD file's data (binned to `max_side`, streamed where :func:`_nrrd_slabs` can),
    its header and the block size; the data type, shape and size are checked first.
    `source` is the file's path or its content (which cannot have detached data)."""
    import contextlib

    import nrrd
    import nrrd.reader

    with contextlib.ExitStack() as opened:
        if isinstance(source, bytes):
            fh = io.BytesIO(source)
        else:
            fh = opened.enter_context(open(source, "rb"))
        header = nrrd.read_header(fh)
        if isinstance(source, bytes) and ("data file" in header or "datafile" in header):
            raise VolumeError(
                f"{name}: a detached NRRD header (its data lives in another file); "
                "give the single-file .nrrd instead"
            )
        offset = fh.tell()
        _check_dtype(nrrd.reader._determine_datatype(header), name)
        shape = _check_shape(tuple(int(v) for v in header["sizes"]), name)
        _check_voxels(shape, name, max_voxels)
        f = binning_factor(shape, max_side)
        slabs = _nrrd_slabs(source, header, offset, shape, opened) if f > 1 else None
        if slabs is not None:
            return _binned(slabs, shape[2], f), header, f
        where = None if isinstance(source, bytes) else str(source)
        raw = nrrd.read_data(header, fh, where)  # index order "F": (x, y, z)
    if f > 1:  # an encoding that cannot be read in part: binned after a whole read
        raw = raw.reshape(shape)
        raw = _binned(lambda a, b: np.moveaxis(raw[:, :, a:b], 2, 0), shape[2], f)
    return raw, header, f


def _read_nrrd(
    source: Path | bytes, name: str, max_side: int | None = None, max_voxels: int | None = None
) -> HeaderRead:
    """Checked float32 data in ``(x, y, z)`` order, and the spacing in µm or why it has
    none (:func:`nrrd_spacing_um`); `source` is the file's path or its content. A volume
    larger than `max_side` is binned while it is read, slab by slab along z, when its
    data are raw or gzip (the usual encodings), else after a whole read; one whose
    header states more than `max_voxels` voxels is refused before its data are read."""
    try:
        raw, header, f = _read_nrrd_data(source, name, max_side, max_voxels)
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(name, exc, "NRRD") from exc
    _check_dtype(raw.dtype, name)
    _check_shape(raw.shape, name)
    data = check_volume_array(np.asarray(raw, dtype=np.float32), name)
    spacing, why = nrrd_spacing_um(header)
    if spacing is not None:
        spacing = tuple(v * f for v in spacing)
    zooms = tuple(z * f for z in (_nrrd_zooms(header) or ((),))[0])
    usable = len(zooms) == 3 and all(math.isfinite(z) and z > 0 for z in zooms)
    return HeaderRead(data, spacing, why, zooms if usable else None, f)


def read_volume_bytes(
    name: str, data: bytes, *, max_side: int | None = None, max_voxels: int | None = None
) -> HeaderRead:
    """Read a NIfTI (``.nii``, ``.nii.gz``), NRRD or multi-page TIFF file's content, as
    :func:`read_volume` reads the file (an upload has no path).

    Parameters
    ----------
    name : str
        The file's name, for messages.
    data : bytes
        Its content; NRRD and TIFF are recognised by their magic bytes, anything else is
        NIfTI.
    max_side : int, optional
        Bin a volume larger than this while it is read (:func:`binning_factor`): only
        the binned volume and a slab of the file are ever decoded, a gzipped one
        included. None reads it whole.
    max_voxels : int, optional
        Refuse a volume whose header states more voxels, before its data are read.

    Returns
    -------
    HeaderRead
        The checked float32 volume in ``(x, y, z)`` order, the voxel size in µm where
        the header states it in a known unit (else None, and why; a TIFF stack states
        none), the header's voxel dimensions in its own unit, and the binning.

    Raises
    ------
    VolumeTooLarge
        More voxels than `max_voxels`.
    VolumeError
        Unreadable, not 3-D, constant, non-finite, or a detached NRRD header.

    Examples
    --------
    >>> import numpy as np
    >>> img = nib.Nifti1Image(np.arange(24.0).reshape(2, 3, 4), np.diag([0.0625] * 3 + [1]))
    >>> img.header.set_xyzt_units("mm")
    >>> read = read_volume_bytes("s.nii", img.to_bytes())
    >>> read.data.shape, read.spacing_um
    ((2, 3, 4), (62.5, 62.5, 62.5))
    >>> img.header.set_xyzt_units("unknown")  # no unit: no µm, only the ratios
    >>> read = read_volume_bytes("s.nii", img.to_bytes())
    >>> read.spacing_um, read.relative
    (None, (0.0625, 0.0625, 0.0625))
    """
    data = bytes(data)
    if data.startswith(b"NRRD000"):
        return _read_nrrd(data, name, max_side, max_voxels)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        arr, f = _read_tiff(io.BytesIO(data), name, max_side, max_voxels)
        if arr.ndim != 3:
            raise VolumeError(f"{name}: a TIFF of shape {arr.shape} is not a stack of images")
        return HeaderRead(arr, None, "a TIFF stack states no voxel size", None, f)
    return _read_nifti(data, name, max_side, max_voxels)


def is_zarr(path) -> bool:
    """True for a Zarr store (v2 or v3): a folder with Zarr metadata at its top.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> is_zarr(tempfile.mkdtemp())
    False
    """
    path = Path(path)
    return path.is_dir() and any(
        (path / meta).is_file() for meta in ("zarr.json", ".zgroup", ".zarray")
    )


def _ngff_image(attrs: dict, name: str) -> dict:
    multiscales = (attrs.get("ome") or attrs).get("multiscales")
    if not multiscales:
        raise VolumeError(
            f"{name}: a Zarr group without OME-NGFF 'multiscales' metadata; give its image "
            "array's folder (e.g. the level '0' inside it) or an OME-Zarr image"
        )
    return multiscales[0]


def _ngff_scale(image: dict, level: dict, ndim: int) -> tuple[float, ...] | None:
    """The product of the level's and the image's ``scale`` transformations, or None."""
    scale = np.ones(ndim)
    found = False
    for transforms in (
        level.get("coordinateTransformations"),
        image.get("coordinateTransformations"),
    ):
        for tr in transforms or []:
            if tr.get("type") == "scale" and len(tr.get("scale", ())) == ndim:
                scale *= np.asarray(tr["scale"], dtype=np.float64)
                found = True
    return tuple(float(s) for s in scale) if found else None


def _pick_level(node, image: dict, max_side: int | None) -> tuple[int, float]:
    """The coarsest level whose largest side is still at least `max_side` (0 without
    one), and how many times coarser than the finest it is; levels come finest first,
    and only their metadata is read."""
    sides = [max(node[level["path"]].shape[-3:]) for level in image["datasets"]]
    chosen = 0
    if max_side is not None:
        while chosen + 1 < len(sides) and sides[chosen + 1] >= max_side:
            chosen += 1
    return chosen, sides[0] / sides[chosen]


def _read_zarr(path: Path, name: str, max_side: int | None = None) -> tuple[HeaderRead, int, float]:
    """Checked float32 ``(x, y, z)`` data of an OME-Zarr image's level (the finest, or
    the coarsest still `max_side` voxels wide) or of a plain Zarr array, the voxel size
    its OME-NGFF metadata states for that level in a known unit (else None, and why),
    the level read and how many times coarser than the finest it is."""
    import zarr

    chosen, coarser = 0, 1.0
    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            array, axes, scale = node, None, None
        else:
            image = _ngff_image(node.attrs.asdict(), name)
            chosen, coarser = _pick_level(node, image, max_side)
            level = image["datasets"][chosen]  # the finest resolution comes first
            array = node[level["path"]]
            axes = image.get("axes")
            scale = _ngff_scale(image, level, array.ndim)
        _check_dtype(array.dtype, name)
        f = binning_factor(array.shape, max_side) if axes is None and array.ndim == 3 else 1
        g = 1 if axes is None else _ngff_binning(array, axes, max_side)
        if f > 1:  # a plain 3-D array without a pyramid: binned as it is read
            data = _binned(lambda a, b: array[a:b], array.shape[0], f, zyx=True)
        elif g > 1:  # a level too large for the working set: binned as it is read too
            k = array.ndim - 3
            data = _binned(lambda a, b: array[(0,) * k + (slice(a, b),)], array.shape[k], g,
                           zyx=True)  # fmt: skip
            # back to the level's own axis order (a view), as the code below expects
            data = data.transpose(2, 1, 0).reshape((1,) * k + data.shape[::-1])
            if scale is not None:
                scale = tuple(v * g if i >= k else v for i, v in enumerate(scale))
            coarser *= g
        else:
            data = np.asarray(array[...])
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(name, exc, "Zarr") from exc
    if axes is None:  # a plain array: stored (z, y, x), as a TIFF stack (binned: in order)
        return (
            HeaderRead(
                check_volume_array(data, name)
                if f > 1
                else _zyx_to_xyz(check_volume_array(data, name)),
                None,
                "a plain Zarr array carries none (no OME-NGFF metadata)",
                None,
            ),
            0,
            float(f),
        )
    # NGFF 0.3 names the axes; later versions describe them
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    if len(axes) != data.ndim:
        raise VolumeError(f"{name}: its {len(axes)} axes do not match the {data.ndim}-D data")
    names = [str(a.get("name", "")).lower() for a in axes]
    space = [
        i for i, a in enumerate(axes) if a.get("type") == "space" or names[i] in ("x", "y", "z")
    ]
    for i in sorted(set(range(data.ndim)) - set(space), reverse=True):
        if data.shape[i] != 1:
            raise VolumeError(
                f"{name}: has {data.shape[i]} images along axis {names[i]!r}; expected one "
                "3-D volume (save one channel and time point)"
            )
        data = data.take(0, axis=i)
    if len(space) != 3:
        raise VolumeError(f"{name}: has {len(space)} spatial axes; expected 3")
    order = [names[i] for i in space]
    # to (x, y, z), as read_volume returns every volume; unnamed axes are (z, y, x)
    perm = [order.index(a) for a in "xyz"] if sorted(order) == ["x", "y", "z"] else [2, 1, 0]
    data = np.ascontiguousarray(check_volume_array(data, name).transpose(perm), dtype=np.float32)
    if scale is None:
        why = "its OME-NGFF metadata states no scale"
        return HeaderRead(data, None, why, None), chosen, coarser
    zooms = tuple(scale[space[p]] for p in perm)
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        shown = tuple(round(z, 6) for z in zooms)
        why = f"its OME-NGFF scale {shown} is not positive and finite"
        return HeaderRead(data, None, why, None), chosen, coarser
    units = [axes[space[p]].get("unit") for p in perm]
    factors = [_NGFF_UNIT_TO_UM.get(str(u).lower()) if u else None for u in units]
    if None in factors:
        why = f"its OME-NGFF axes state no spatial unit (units: {units})"
        return HeaderRead(data, None, why, zooms), chosen, coarser
    spacing = tuple(round(z * f, 9) for z, f in zip(zooms, factors, strict=True))
    return HeaderRead(data, spacing, "", zooms), chosen, coarser


@dataclass(frozen=True)
class ReconLog:
    """What a Bruker SkyScan reconstruction log (NRecon's ``*_rec.log``) says of its slices.

    Attributes
    ----------
    path : Path
    voxel_size_um : float or None
        ``Pixel Size (um)`` of the ``[Reconstruction]`` section: the reconstructed voxel
        (not the camera's ``Image Pixel Size (um)`` of ``[Acquisition]``); None if absent.
    prefix : str or None
        ``Filename Prefix``: the slices are ``<prefix><index>.<type>``; other images in
        the folder (NRecon's ``_spr`` preview, say) are not slices.
    """

    path: Path
    voxel_size_um: float | None
    prefix: str | None


def read_recon_log(path) -> ReconLog:
    """Read a SkyScan reconstruction log: ``[Section]`` headers and ``key=value`` lines.

    Raises
    ------
    VolumeError
        If the file cannot be read, or states a voxel size that is not a positive number.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "shell_rec.log"
    >>> _ = log.write_text("[Acquisition]\\nImage Pixel Size (um)=11.9\\n"
    ...                    "[Reconstruction]\\nPixel Size (um)=5.00010\\n"
    ...                    "[File name convention]\\nFilename Prefix=shell_rec\\n")
    >>> rec = read_recon_log(log)
    >>> rec.voxel_size_um, rec.prefix
    (5.0001, 'shell_rec')
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VolumeError(f"{path.name}: cannot read the reconstruction log ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # NRecon writes Windows-1252 (its µ signs)
    values, section = {}, ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif "=" in line:
            key, value = line.split("=", 1)
            values.setdefault((section, key.strip().lower()), value.strip())
    voxel = values.get(("reconstruction", "pixel size (um)"))
    if voxel is not None:
        try:
            voxel = float(voxel)
        except ValueError:
            voxel = math.nan
        if not (math.isfinite(voxel) and voxel > 0):
            shown = values[("reconstruction", "pixel size (um)")]
            raise VolumeError(
                f"{path.name}: [Reconstruction] Pixel Size (um)={shown!r} is not a positive "
                "number; give voxel_size_um in the manifest"
            )
    prefixes = [v for (_, k), v in values.items() if k == "filename prefix" and v]
    return ReconLog(path, voxel, prefixes[0] if prefixes else None)


def voxel_size_stated(path) -> bool:
    """Whether a folder's own metadata states its voxel size: a SkyScan log that gives
    it, or OME-NGFF metadata with a scale in a known unit (only metadata is read).

    A file's header is not looked at here (:func:`read_volume` reads it); a TIFF stack
    states none.
    """
    path = Path(path)
    if is_zarr(path):
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
            if isinstance(node, zarr.Array):
                return False
            image = _ngff_image(node.attrs.asdict(), path.name)
            level = image["datasets"][0]
            scale = _ngff_scale(image, level, len(image.get("axes") or ()))
        except (VolumeError, KeyError, IndexError, TypeError, OSError, ValueError):
            return False  # read_volume says what is wrong with it
        axes = [a for a in image.get("axes") or () if isinstance(a, dict)]
        units = [a.get("unit") for a in axes if a.get("type") == "space"]
        return (
            scale is not None
            and len(units) == 3
            and all(str(u).lower() in _NGFF_UNIT_TO_UM for u in units)
        )
    return recon_log_voxel_size(path) is not None


def recon_log_voxel_size(folder) -> float | None:
    """The voxel size (µm) a folder's SkyScan ``*_rec.log`` states, else None.

    Raises
    ------
    VolumeError
        Several logs, or a log stating a voxel size that is not a positive number.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    log = _find_recon_log(folder, folder.name)
    return None if log is None else log.voxel_size_um


def _find_recon_log(folder: Path, name: str) -> ReconLog | None:
    logs = sorted(p for p in folder.iterdir() if p.name.lower().endswith("_rec.log"))
    if len(logs) > 1:
        raise VolumeError(
            f"{name}: several reconstruction logs ({', '.join(p.name for p in logs)}); "
            "keep the one of these slices"
        )
    return read_recon_log(logs[0]) if logs else None


def _slice_files(folder: Path, name: str, log: ReconLog | None) -> list[Path]:
    """The folder's slice images in natural order (the log's ``prefix<index>`` ones)."""
    images = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES]
    if log is not None and log.prefix:
        pattern = re.compile(re.escape(log.prefix) + r"\d+", re.IGNORECASE)
        images = [p for p in images if pattern.fullmatch(p.stem)]
        if not images:
            raise VolumeError(
                f"{name}: no slice named {log.prefix}<number> ({', '.join(SLICE_SUFFIXES)}) "
                f"as {log.path.name} announces"
            )
    elif images:
        images = _numbered_series(images, name)
    if not images:
        raise VolumeError(f"{name}: folder contains no slices ({', '.join(SLICE_SUFFIXES)})")
    kinds = sorted({p.suffix.lower().replace(".tiff", ".tif") for p in images})
    if len(kinds) > 1:
        raise VolumeError(
            f"{name}: folder mixes slice types ({', '.join(kinds)}); keep one kind of image"
        )
    return sorted(images, key=lambda p: _natural_key(p.name))


def _numbered_series(images: list[Path], name: str) -> list[Path]:
    """The longest series of images whose names differ only in a trailing number.

    Reconstruction software writes the slices as one numbered series and may leave
    other images beside them (a preview, a thumbnail); those are not slices. Without
    numbered names every image is a slice.
    """
    series: dict[str | None, list[Path]] = {}
    for p in images:
        m = re.fullmatch(r"(.*?)(\d+)", p.stem)
        series.setdefault(m.group(1).lower() if m else None, []).append(p)
    numbered = {k: v for k, v in series.items() if k is not None}
    if not numbered:
        return images
    longest = max(len(v) for v in numbered.values())
    top = sorted(k for k, v in numbered.items() if len(v) == longest)
    if len(top) > 1:
        shown = ", ".join(f"{k or ''}<number>" for k in top)
        raise VolumeError(
            f"{name}: {len(top)} series of {longest} numbered images ({shown}); "
            "keep one series of slices in the folder"
        )
    return numbered[top[0]]


def _read_plane(p: Path, name: str) -> np.ndarray:
    if p.suffix.lower() in _TIFF_SUFFIXES:
        plane = tifffile.imread(p)
    else:  # PNG (8 or 16 bit) and BMP through OpenCV, bit depth kept
        plane = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if plane is None:
            raise VolumeError(f"{name}: slice {p.name} cannot be decoded")
        if plane.ndim == 3 and plane.shape[2] in (3, 4):  # a grey scan saved as colour
            code = cv2.COLOR_BGR2GRAY if plane.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
            plane = cv2.cvtColor(plane, code)
    if plane.ndim != 2:
        raise VolumeError(
            f"{name}: slice {p.name} is {plane.ndim}-D (shape {plane.shape}); expected 2-D slices"
        )
    return plane


def _read_slice_folder(
    path: Path, name: str, max_side: int | None = None
) -> tuple[np.ndarray, ReconLog | None, int]:
    """A folder of reconstructed slices, stacked along z, its SkyScan log if any, and the
    block size it was binned by as it was read (:func:`binning_factor`)."""
    try:
        log = _find_recon_log(path, name)
        slices = _slice_files(path, name, log)
        first = _read_plane(slices[0], name)

        def plane(i):
            image = first if i == 0 else _read_plane(slices[i], name)
            if image.shape != first.shape:
                raise VolumeError(
                    f"{name}: slice {slices[i].name} has shape {image.shape} but "
                    f"{slices[0].name} has shape {first.shape}"
                )
            return image

        f = binning_factor((len(slices), *first.shape), max_side)
        if f == 1:
            arr = np.stack([plane(i) for i in range(len(slices))])
        else:

            def stack(start, stop):
                return np.stack([plane(i) for i in range(start, stop)])

            arr = _binned(stack, len(slices), f, zyx=True)
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(name, exc, "slice") from exc
    arr = check_volume_array(arr, name)
    return (arr if f > 1 else _zyx_to_xyz(arr)), log, f  # binned: in (x, y, z) order


def _zyx_to_xyz(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32)


def _read_tiff(
    source, name: str, max_side: int | None = None, max_voxels: int | None = None
) -> tuple[np.ndarray, int]:
    """A multi-page TIFF stack in ``(x, y, z)`` order and the block size it was binned by
    (:func:`binning_factor`): a stack of one 2-D image per page is then read a few pages
    at a time. `source` is a path or a binary file object; a stack of more than
    `max_voxels` voxels is refused before its pages are decoded."""
    try:
        with tifffile.TiffFile(source) as tif:
            series = tif.series[0]
            shape = tuple(series.shape)
            _check_voxels(shape[::-1], name, max_voxels)  # said in (x, y, z) order
            f = binning_factor(shape, max_side) if len(shape) == 3 else 1
            paged = len(tif.pages) == shape[0] and tif.pages[0].shape == shape[1:]
            if f > 1 and paged:
                _check_dtype(series.dtype, name)

                def pages(start, stop):
                    return tif.asarray(key=range(start, stop)).reshape(stop - start, *shape[1:])

                arr = _binned(pages, shape[0], f, zyx=True)
            else:
                f = 1
                arr = tif.asarray()
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(name, exc, "TIFF") from exc
    arr = check_volume_array(arr, name)
    return (arr if f > 1 else _zyx_to_xyz(arr)), f  # stored (z, y, x); binned: in order


def read_volume(
    path,
    voxel_size_um: float | None = None,
    *,
    isotropic: bool = True,
    order: int = 1,
    max_side: int | None = None,
):
    """Read and check a micro-CT volume.

    Parameters
    ----------
    path : path-like
        A ``.nii``/``.nii.gz`` file, a ``.nrrd``/``.nhdr`` file (3D Slicer's format), a
        multi-page ``.tif``/``.tiff`` stack, a Zarr store (an OME-Zarr image, NGFF 0.4
        or 0.5, whose finest level is read; or a plain 3-D Zarr array), or a folder of
        reconstructed 2-D slices (TIFF, PNG or BMP, one kind; stacked in natural order
        of the numbers in their names). A Bruker SkyScan ``*_rec.log`` in the folder
        gives the voxel size and names the slices (``Filename Prefix``); without one,
        the slices are the longest series of images numbered alike (a preview is left
        out).
    voxel_size_um : float, optional
        Isotropic voxel size in µm. Overrides the NIfTI/NRRD header, the OME-NGFF
        metadata or the SkyScan log (a `ManifestWarning` is emitted when they disagree
        by more than 1%); required for a TIFF stack, a plain Zarr array, a folder of
        slices without a log that states it, and a NIfTI, NRRD or OME-Zarr that states
        no spatial unit or no positive voxel size (never guessed).
    isotropic : bool
        Resample anisotropic volumes to the finest spacing (see `resample_isotropic`).
    order : int
        Spline order of that resampling.
    max_side : int, optional
        Read a large scan at the resolution the work needs, not whole: for a multiscale
        OME-Zarr image, the coarsest pyramid level whose largest side is still at least
        this many voxels (the finest level when none is), with that level's voxel size;
        any other volume larger than that is **binned** while it is read: averaged by
        blocks of f×f×f voxels (:func:`binning_factor`: the largest f that keeps the
        largest side at least `max_side`), slab by slab, so that memory holds one slab
        and the binned volume (a NIfTI file, a TIFF stack of one image per page, a
        folder of slices, a plain Zarr array, a raw or gzip NRRD file; a NRRD file of
        another encoding is read whole first). Under f
        voxels at the far edge of each axis are left out. A `voxel_size_um` given is
        that of the full-resolution scan and is scaled to the data returned.

    Returns
    -------
    Volume
        float32 data in ``(x, y, z)`` order, the voxel size in µm, the level read and
        the block size it was binned by.

    Raises
    ------
    VolumeError
        If the file is missing, unreadable, of an unknown type, or fails
        `check_volume_array`, or its voxel size is unknown.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.nii.gz"
    >>> _ = write_nifti(f, np.arange(24.0).reshape(2, 3, 4), (5.0, 5.0, 10.0))
    >>> vol = read_volume(f)
    >>> vol.data.shape, vol.voxel_size_um
    ((2, 3, 8), 5.0)
    """
    path = Path(path)
    name = path.name or str(path)
    if voxel_size_um is not None:
        (voxel_size_um,) = _positive_finite(voxel_size_um, f"{name}: voxel_size_um")
    if not path.exists():
        raise VolumeError(f"{name}: file not found ({path.absolute()})")
    suffix = None if path.is_dir() else _volume_suffix(path.name)
    if suffix is None and not path.is_dir():
        raise VolumeError(
            f"{name}: unsupported file type; expected one of {', '.join(VOLUME_SUFFIXES)}, "
            "a Zarr store or a folder of slices"
        )
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ValueError(f"{name}: max_side must be an integer >= 1, got {max_side!r}")
    zarr_store = is_zarr(path)
    level, binned = 0, 1
    if path.is_dir() or suffix in (".nii", ".nii.gz", ".nrrd", ".nhdr"):
        if zarr_store:
            read, level, coarser = _read_zarr(path, name, max_side)
            data, spacing, why = read.data, read.spacing_um, read.why
            if level == 0 and coarser > 1:  # a plain array, binned as it was read
                binned = int(coarser)
            if voxel_size_um is not None:  # given for the finest level
                voxel_size_um *= coarser
        elif path.is_dir():
            data, log, binned = _read_slice_folder(path, name, max_side)
            spacing = (
                None
                if log is None or log.voxel_size_um is None
                else (log.voxel_size_um * binned,) * 3
            )
            why = (
                f"{log.path.name} states no [Reconstruction] Pixel Size (um)"
                if log is not None
                else "a folder of slices carries none (no SkyScan *_rec.log in it)"
            )
        else:
            reader = _read_nrrd if suffix in (".nrrd", ".nhdr") else _read_nifti
            read = reader(path, name, max_side)
            data, spacing, why, binned = read.data, read.spacing_um, read.why, read.binned
            if voxel_size_um is not None and spacing is None and read.relative is not None:
                ratios = np.asarray(read.relative) / min(read.relative)
                if ratios.max() > 1.01:  # one number cannot describe these voxels
                    warnings.warn(
                        f"{name}: the header's voxel dimensions "
                        f"{tuple(round(float(r), 6) for r in read.relative)} (in no stated "
                        f"unit) are not cubes, but voxel_size_um={voxel_size_um:g} is applied "
                        "to every axis; state the header's unit (e.g. mm) so that each axis "
                        "keeps its own size",
                        ManifestWarning,
                        stacklevel=2,
                    )
        if voxel_size_um is not None and not zarr_store:
            voxel_size_um *= binned  # given for the full-resolution scan
        if voxel_size_um is not None:
            if spacing is not None and any(
                abs(s - voxel_size_um) > 0.01 * voxel_size_um for s in spacing
            ):
                warnings.warn(
                    f"{name}: voxel_size_um={voxel_size_um:g} overrides the "
                    f"{'log' if path.is_dir() and not zarr_store else 'header'}'s voxel "
                    f"size {tuple(round(s, 6) for s in spacing)} µm",
                    ManifestWarning,
                    stacklevel=2,
                )
            spacing = (voxel_size_um,) * 3
        elif spacing is None:
            raise VolumeError(
                f"{name}: voxel size unknown: {why}; give it in µm (the manifest's "
                "voxel_size_um column, or --voxel-size on the command line)"
            )
    else:
        data, binned = _read_tiff(path, name, max_side)
        if voxel_size_um is None:
            raise VolumeError(
                f"{name}: voxel size unknown; the manifest must give voxel_size_um for TIFF stacks"
            )
        spacing = (voxel_size_um * binned,) * 3
    if isotropic:
        data, vox = resample_isotropic(data, spacing, order=order)
        spacing = (vox,) * 3
    return Volume(
        data=np.ascontiguousarray(data, dtype=np.float32),
        voxel_size_um=float(min(spacing)),
        path=path,
        spacing_um=tuple(float(s) for s in spacing),
        level=level,
        binned=binned,
    )


def write_nifti(path, arr, voxel_size_um, *, dtype=np.uint16, description: str | None = None):
    """Write a NIfTI-1 volume atomically and byte-reproducibly, with units in µm.

    Float input written to an integer `dtype` is scaled into the dtype's range with the
    scaling stored in ``scl_slope``/``scl_inter``, so `read_volume` recovers the values
    within quantisation error. Integer input that fits `dtype` is stored unscaled.

    The bytes depend only on the arguments: no time, host or file name is stored, and
    ``.nii.gz`` is written as uncompressed deflate blocks (see `_gzip_stored`), so the
    installed zlib build cannot change them either.

    Parameters
    ----------
    path : path-like
        Destination ending in ``.nii`` or ``.nii.gz``.
    arr : array_like, shape (nx, ny, nz)
        Finite numeric volume.
    voxel_size_um : float or sequence of 3 floats
        Voxel size in µm.
    dtype : numpy dtype
        On-disk data type (integer or float).
    description : str, optional
        Stored in the header's ``descrip`` field (at most 80 ASCII characters).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "v.nii.gz"
    >>> _ = write_nifti(f, np.linspace(-1, 1, 27).reshape(3, 3, 3), 4.0)
    >>> bool(abs(read_volume(f).data.max() - 1.0) < 1e-4)
    True
    """
    path = Path(path)
    suffix = _volume_suffix(path.name)
    if suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"{path.name}: write_nifti writes .nii or .nii.gz, got {path.name!r}")
    if np.ndim(voxel_size_um) == 0:
        spacing = _positive_finite(voxel_size_um, "voxel_size_um") * 3
    else:
        spacing = _positive_finite(voxel_size_um, "voxel_size_um", count=3)
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise ValueError(f"dtype must be an integer or float type, got {dtype}")
    arr = np.asarray(arr)
    _check_dtype(arr.dtype, path.name)
    arr = arr.reshape(_check_shape(arr.shape, path.name))
    _check_values(arr, path.name, allow_constant=True)
    if arr.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if info.min <= arr.min() and arr.max() <= info.max:
            arr = arr.astype(dtype)
    if arr.dtype.kind in "iu" and arr.dtype != dtype:
        arr = arr.astype(np.float64)
    img = nib.Nifti1Image(arr, np.diag([*spacing, 1.0]))
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_xyzt_units(xyz="micron")
    if description is not None:
        if not description.isascii() or len(description) > 80:
            raise ValueError(
                f"description must be at most 80 ASCII characters, got {description!r}"
            )
        hdr["descrip"] = description.encode("ascii")
    raw = img.to_bytes()
    if suffix == ".nii.gz":
        raw = _gzip_stored(raw)
    return write_bytes(path, raw)


_STORED_BLOCK = 0xFFFF  # the largest deflate "stored" block


def _gzip_stored(raw: bytes) -> bytes:
    """`raw` as a gzip member of uncompressed ("stored") deflate blocks.

    The bytes are fixed by the format alone, not by the zlib that happens to be
    installed: compressed deflate output differs between zlib, zlib-ng (Fedora's
    system zlib, some Python builds) and Apple's zlib, so a compressed ``.nii.gz``
    written from the same array would hash differently on another machine. Header:
    no file name, mtime 0, OS "unknown". Any gzip reader (nibabel, ``gzip``, ``zcat``)
    reads it. Micro-CT noise leaves little to compress (level 6 saved about 10 % on
    the virtual collection), which is the price of this.
    """
    out = bytearray(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
    n = len(raw)
    view = memoryview(raw)
    starts = range(0, n, _STORED_BLOCK) if n else [0]
    for start in starts:
        block = view[start : start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= n
        size = len(block)
        out += bytes([1 if final else 0]) + struct.pack("<HH", size, size ^ 0xFFFF)
        out += block
    out += struct.pack("<II", zlib.crc32(raw) & 0xFFFFFFFF, n & 0xFFFFFFFF)
    return bytes(out)


def _lines(rows) -> str:
    return ", ".join(str(int(r) + 2) for r in rows)


def manifest_voxel_size(row) -> float | None:
    """The voxel size (µm) a manifest row gives, or None where its optional cell is empty.

    None makes :func:`read_volume` take the size from the file's header.

    Examples
    --------
    >>> manifest_voxel_size({"voxel_size_um": "12.5"})
    12.5
    >>> manifest_voxel_size({"voxel_size_um": float("nan")}) is None
    True
    >>> manifest_voxel_size({}) is None
    True
    """
    get = row.get if hasattr(row, "get") else lambda key, default: getattr(row, key, default)
    value = get("voxel_size_um", None)
    return None if value is None or pd.isna(value) else float(value)


def check_manifest(
    path, data_dir=None, *, check_files: bool = True
) -> tuple[pd.DataFrame | None, list[str]]:
    """Read a collection manifest CSV and list every problem in it, without raising.

    Like :func:`read_manifest`, but returns the rows it could read with the problems, so
    a caller can go on checking the volumes those rows point at and report both kinds of
    problem together. The rows are None when the file cannot be read as a manifest.

    Columns: ``file`` (relative to `data_dir`, or absolute), ``specimen_id``,
    ``species``, and optionally ``voxel_size_um`` (empty = take it from the header),
    ``source`` and ``notes``. Cells are read as strings (``"007"`` stays ``"007"``) and
    stripped of surrounding whitespace.

    Parameters
    ----------
    path : path-like
        The manifest CSV.
    data_dir : path-like, optional
        Folder that relative ``file`` entries are resolved against; defaults to the
        manifest's folder.
    check_files : bool
        Check that listed files exist and warn (`ManifestWarning`) about volume files in
        `data_dir` that the manifest does not list.

    Returns
    -------
    rows : pandas.DataFrame or None
        The manifest, with missing optional columns added (``voxel_size_um`` as float,
        NaN where empty; ``source``/``notes`` as ``""``) and a ``path`` column holding
        each file's absolute path as a string ("" where ``file`` is empty).
    problems : list of str
        Every problem found; lines are CSV line numbers (header = 1). Empty if none.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "m.csv").write_text("file,specimen_id,species\\na.nii,007,\\n")
    >>> rows, problems = check_manifest(d / "m.csv", check_files=False)
    >>> rows.loc[0, "specimen_id"], problems
    ('007', ["empty 'species' cell on line(s) 2"])
    """
    path = Path(path)
    data_dir = Path(data_dir) if data_dir is not None else path.parent
    if not path.is_file():
        return None, [f"manifest file not found: {path.absolute()}"]
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8"
        )
    except pd.errors.EmptyDataError:
        return None, ["the file is empty (no header row)"]
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        return None, [f"cannot be read as a CSV ({type(exc).__name__}: {exc})"]

    problems: list[str] = []
    df.columns = [str(c).strip() for c in df.columns]
    df = df.apply(lambda s: s.str.strip())
    df = df[(df != "").any(axis=1)].copy()  # blank lines; the index still maps to CSV lines
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if missing:
        problems.append(
            f"missing required column(s) {', '.join(map(repr, missing))} "
            f"(found {', '.join(map(repr, df.columns))})"
        )
    if df.empty:
        problems.append("has no data rows")
    if check_files and not data_dir.is_dir():
        problems.append(f"data_dir not found: {data_dir.absolute()}")
    for col in MANIFEST_REQUIRED:
        if col in df.columns and (df[col] == "").any():
            problems.append(f"empty {col!r} cell on line(s) {_lines(df.index[df[col] == ''])}")

    for col in _MANIFEST_STRINGS:
        if col not in df.columns:
            df[col] = ""
    voxel = pd.Series(np.nan, index=df.index, dtype=float)
    if "voxel_size_um" in df.columns:
        for i, cell in df["voxel_size_um"].items():
            if cell == "":
                continue
            try:
                v = float(cell)
            except ValueError:
                problems.append(f"line {i + 2}: voxel_size_um {cell!r} is not a number")
                continue
            if not (math.isfinite(v) and v > 0):
                problems.append(f"line {i + 2}: voxel_size_um {cell!r} must be positive and finite")
            voxel[i] = v
    df["voxel_size_um"] = voxel

    resolved = [Path(os.path.normpath(data_dir.absolute() / f)) if f else None for f in df["file"]]
    df["path"] = [str(p) if p is not None else "" for p in resolved]
    for i, f, p in zip(df.index, df["file"], resolved, strict=True):
        if p is None or p.is_dir():  # a folder of slices; read_volume checks its content
            continue
        store = f.rstrip("/").lower().endswith(".zarr")  # a Zarr store is a folder
        if _volume_suffix(f) is None and not store and (Path(f).suffix or p.is_file()):
            problems.append(
                f"line {i + 2}: unsupported file type {f!r} "
                f"(expected {', '.join(VOLUME_SUFFIXES)}, a Zarr store or a folder of slices)"
            )
        elif check_files and not p.exists():
            problems.append(f"line {i + 2}: file not found: {f!r} (looked for {p})")

    listed = df[df["path"] != ""]
    for _, group in listed.groupby("path", sort=False):
        if len(group) > 1:
            rows = group.drop(columns=["path"]).astype(str)
            kind = "duplicate rows" if len(rows.drop_duplicates()) == 1 else "listed more than once"
            problems.append(
                f"{kind}: file {group['file'].iloc[0]!r} on lines {_lines(group.index)}"
            )
    ids = df[(df["specimen_id"] != "") & (df["species"] != "")]
    for sid, group in ids.groupby("specimen_id", sort=False):
        if group["species"].nunique() > 1:
            per = ", ".join(f"{s!r} (line {i + 2})" for i, s in group["species"].items())
            problems.append(f"specimen {sid!r} is listed under different species: {per}")

    if check_files and not problems:
        _warn_unlisted(path, data_dir, {Path(p) for p in df["path"]})
    return df.reset_index(drop=True), problems


def read_manifest(path, data_dir=None, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a collection manifest CSV, reporting every problem at once.

    Columns: ``file`` (relative to `data_dir`, or absolute), ``specimen_id``,
    ``species``, and optionally ``voxel_size_um`` (empty = take it from the header),
    ``source`` and ``notes``. See :func:`check_manifest` for the parameters.

    Returns
    -------
    pandas.DataFrame
        The manifest (see :func:`check_manifest`).

    Raises
    ------
    ManifestError
        Listing every problem found; problem lines are CSV line numbers (header = 1).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "m.csv").write_text("file,specimen_id,species\\na.nii,007,Chrysalidina\\n")
    >>> read_manifest(d / "m.csv", check_files=False).loc[0, "specimen_id"]
    '007'
    """
    df, problems = check_manifest(path, data_dir, check_files=check_files)
    if problems:
        raise ManifestError(problems, path)
    return df


def _warn_unlisted(manifest: Path, data_dir: Path, listed: set[Path]) -> None:
    """One `ManifestWarning` naming volume files in `data_dir` the manifest does not list."""
    folders = [p for p in listed if p.is_dir()]
    unlisted = sorted(
        str(p.relative_to(data_dir.absolute()))
        for p in data_dir.absolute().rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(data_dir.absolute()).parts)
        and _volume_suffix(p.name) is not None
        and p not in listed
        and not any(f in p.parents for f in folders)
    )
    if unlisted:
        shown = ", ".join(unlisted[:20]) + (
            f" and {len(unlisted) - 20} more" if len(unlisted) > 20 else ""
        )
        warnings.warn(
            f"{len(unlisted)} volume file(s) in {data_dir} are not listed in manifest "
            f"{manifest.name} and will be ignored: {shown}",
            ManifestWarning,
            stacklevel=4,
        )
