"""Uploaded files: a file's bytes (no path) to an image or a volume.

The dashboard's uploads and ``foram match``/``foram classify`` inputs arrive as bytes
with a name. :func:`decode_upload` recognises the format from the magic bytes (then the
name) and returns the image array, or a :class:`VolumeUpload` for a 3-D scan. Volumes
go through the same readers as files on disk (:func:`foramlib.io.volumes.read_volume_bytes`:
the same checks, and a voxel size only where the header states it in a known unit).

Examples
--------
>>> import numpy as np, cv2
>>> img = np.zeros((64, 64), np.uint16); img[16:48, 20:44] = 40000
>>> ok, png = cv2.imencode(".png", img)
>>> decoded = decode_upload("scan.png", png.tobytes())
>>> decoded.dtype.name, decoded.shape
('uint16', (64, 64))
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import imagesize
import numpy as np

from foramlib.io.environment import positive_number
from foramlib.io.volumes import VolumeError, VolumeTooLarge, read_volume_bytes

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageTooLarge",
    "MAX_IMAGE_MEGAPIXELS",
    "MAX_VOLUME_MEGAVOXELS",
    "ScanTooLarge",
    "UPLOAD_SUFFIXES",
    "UploadError",
    "VolumeUpload",
    "decode_upload",
    "image_pixel_limit",
    "UPLOAD_VOLUME_SIDE",
    "volume_voxel_limit",
]

#: single images a user may upload (anything else OpenCV decodes is accepted too)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: what an upload field offers: images, and the single-file volumes (a multi-page TIFF
#: is a stack; a detached ``.nhdr`` or a folder of slices cannot be one upload)
UPLOAD_SUFFIXES = IMAGE_SUFFIXES + (".nii", ".nii.gz", ".nrrd")

#: the largest image (in millions of pixels) decoded unless ``FORAM_MAX_IMAGE_MP`` says
#: otherwise: 10000 × 10000. A section needs no more (classification works on 2048
#: pixels a side, matching on 1024), and a 20000² photo would take gigabytes to decode
#: and convert before it could be shrunk.
MAX_IMAGE_MEGAPIXELS = 100.0

#: the largest uploaded volume (in millions of voxels, as its header states) read
#: unless ``FORAM_MAX_VOLUME_MVOX`` says otherwise: 2048 × 1024 × 1024. The upload's
#: bytes are limited already, but a gzipped volume can unpack to any size (a
#: mostly-empty 1024³ scan packs into 5 MB), and even binned on read each voxel must be
#: decompressed: a few seconds per thousand million.
MAX_VOLUME_MEGAVOXELS = 2048.0

#: uploaded volumes wider than this are binned while they are read (as ``foram
#: classify`` reads a scan: :data:`foramlib.inference.scan.SCAN_READ_SIDE`); the
#: sections a whole-scan classification cuts are resized to 96–384 pixels
UPLOAD_VOLUME_SIDE = 512


class UploadError(ValueError):
    """Uploaded bytes that are not a usable image or volume, or are too large."""


class ImageTooLarge(UploadError):
    """An image with more pixels than the limit (:func:`image_pixel_limit`)."""


class ScanTooLarge(UploadError):
    """A volume with more voxels than the limit (:func:`volume_voxel_limit`)."""


@dataclass
class VolumeUpload:
    """An uploaded 3-D scan; :meth:`section` picks a 2-D slice of it.

    Parameters
    ----------
    name : str
        File name of the upload.
    data : ndarray
        float32 volume in ``(x, y, z)`` order (as :func:`foramlib.io.volumes.read_volume`).
    voxel_size_um : float or None
        The smallest voxel side in µm, when the header states the voxel size in a known
        unit.
    spacing_um : tuple of 3 float or None
        Voxel size along each axis in µm, when the header states it in a known unit.
    relative_spacing : tuple of 3 float or None
        The header's voxel dimensions in its own unit, stated or not: anisotropic
        scans are resampled by their ratios before a whole-scan classification.
    binned : int
        The block size the scan was averaged by as it was read (1: full resolution);
        the spacings are those of `data`.
    """

    name: str
    data: np.ndarray = field(repr=False)
    voxel_size_um: float | None = None
    spacing_um: tuple[float, float, float] | None = None
    relative_spacing: tuple[float, float, float] | None = None
    binned: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    def section(self, axis: int, index: int) -> np.ndarray:
        """The 2-D section ``index`` along ``axis`` (0, 1 or 2).

        >>> VolumeUpload("v.nii", np.zeros((4, 5, 6), np.float32)).section(1, 2).shape
        (4, 6)
        """
        if axis not in (0, 1, 2):
            raise UploadError(f"{self.name}: axis must be 0, 1 or 2, got {axis!r}")
        n = self.data.shape[axis]
        if not isinstance(index, int | np.integer) or not 0 <= index < n:
            raise UploadError(
                f"{self.name}: section index along axis {axis} must be in 0..{n - 1}, got {index!r}"
            )
        return np.take(self.data, int(index), axis=axis)


def _kind(name: str, data: bytes) -> str:
    """'png', 'jpeg', 'tiff', 'nrrd', 'nifti' or 'unknown', from the magic bytes (then
    the name)."""
    head = data[:352]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head.startswith(b"\x1f\x8b"):
        return "nifti"  # gzip: only .nii.gz is accepted compressed
    if len(head) >= 348 and (
        int.from_bytes(head[:4], "little") in (348, 540)
        or int.from_bytes(head[:4], "big") in (348, 540)
    ):
        return "nifti"
    lower = name.lower()
    if lower.endswith(".nrrd"):
        return "nrrd"
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "unknown"


def _decode_volume(name: str, data: bytes, max_side: int | None, max_voxels: int) -> VolumeUpload:
    try:
        read = read_volume_bytes(name, data, max_side=max_side, max_voxels=max_voxels)
    except VolumeTooLarge as exc:
        raise ScanTooLarge(
            f"{exc} (FORAM_MAX_VOLUME_MVOX); crop or bin the scan before uploading it, or "
            "classify the file with `foram classify`, which bins a scan of any size as it "
            "reads it"
        ) from None
    except VolumeError as exc:
        raise UploadError(str(exc)) from None
    spacing = read.spacing_um
    return VolumeUpload(
        name, read.data, min(spacing) if spacing else None, spacing, read.relative, read.binned
    )


def _tiff_stack(data: bytes) -> bool:
    """Whether a TIFF's first series is a stack of 2-D images (by its header; False
    where tifffile cannot parse it)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            shape = [int(v) for v in tif.series[0].shape if int(v) != 1]
    except Exception:  # tifffile raises many types for corrupt files
        return False
    return len(shape) == 3 and shape[-1] not in (3, 4)


def _decode_tiff(name: str, data: bytes, max_side: int | None, max_voxels: int):
    import tifffile

    if _tiff_stack(data):  # binned as it is read, page by page, after a size check
        try:
            return _decode_volume(name, data, max_side, max_voxels)
        except ScanTooLarge:
            raise
        except UploadError:
            pass  # e.g. a compression tifffile cannot decode without imagecodecs: below
    try:
        arr = tifffile.imread(io.BytesIO(data))
    except Exception as exc:  # tifffile raises many types for corrupt files
        # compressions tifffile cannot decode without imagecodecs (LZW, JPEG): OpenCV's
        # libtiff reads them
        ok, pages = cv2.imdecodemulti(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise UploadError(
                f"{name}: not a readable TIFF image ({type(exc).__name__}: {exc})"
            ) from None
        pages = [
            cv2.cvtColor(p, cv2.COLOR_BGR2RGB if p.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
            if p.ndim == 3
            else p
            for p in pages
        ]
        arr = pages[0] if len(pages) == 1 else np.stack(pages)
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        return arr
    if arr.ndim == 3:  # a stack of pages (z, y, x) → volume in (x, y, z) like read_volume
        if arr.size > max_voxels:
            raise ScanTooLarge(
                f"{name}: {arr.shape[2]} × {arr.shape[1]} × {arr.shape[0]} voxels is more than "
                f"the limit of {max_voxels / 1e6:,.0f} million voxels (FORAM_MAX_VOLUME_MVOX)"
            )
        return VolumeUpload(name, np.ascontiguousarray(arr.transpose(2, 1, 0), np.float32))
    raise UploadError(
        f"{name}: not a readable TIFF image (it holds an array of shape {arr.shape}, "
        "neither an image nor a stack of images)"
    )


def image_pixel_limit() -> int:
    """Pixels an image may have: ``FORAM_MAX_IMAGE_MP`` megapixels, else
    :data:`MAX_IMAGE_MEGAPIXELS`.

    Raises
    ------
    ValueError
        If ``FORAM_MAX_IMAGE_MP`` is set to something other than a positive number.

    Examples
    --------
    >>> import os
    >>> image_pixel_limit() == int(MAX_IMAGE_MEGAPIXELS * 1e6) or "FORAM_MAX_IMAGE_MP" in os.environ
    True
    """
    return int(positive_number("FORAM_MAX_IMAGE_MP", MAX_IMAGE_MEGAPIXELS, "megapixels") * 1e6)


def volume_voxel_limit() -> int:
    """Voxels an uploaded volume may have: ``FORAM_MAX_VOLUME_MVOX`` million, else
    :data:`MAX_VOLUME_MEGAVOXELS`.

    Raises
    ------
    ValueError
        If ``FORAM_MAX_VOLUME_MVOX`` is set to something other than a positive number.

    Examples
    --------
    >>> import os
    >>> volume_voxel_limit() == 2048 * 10**6 or "FORAM_MAX_VOLUME_MVOX" in os.environ
    True
    """
    mvox = positive_number("FORAM_MAX_VOLUME_MVOX", MAX_VOLUME_MEGAVOXELS, "million voxels")
    return int(mvox * 1e6)


def _check_pixels(name: str, height: int, width: int, limit: int) -> None:
    if height * width > limit:
        raise ImageTooLarge(
            f"{name}: {width} × {height} pixels ({height * width / 1e6:.0f} megapixels) is "
            f"more than the limit of {limit / 1e6:g} megapixels (FORAM_MAX_IMAGE_MP); "
            "shrink the image first: a section needs no more than about 2048 pixels a side"
        )


def decode_upload(
    name: str,
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_voxels: int | None = None,
    volume_max_side: int | None = UPLOAD_VOLUME_SIDE,
):
    """Decode uploaded bytes into an image array or a :class:`VolumeUpload`.

    Parameters
    ----------
    name : str
        The file's name (for messages; ``.nii``/``.nii.gz``/``.nrrd`` marks a volume
        when the content does not say).
    data : bytes
        The file's content.
    max_bytes : int, optional
        Refuse larger uploads.
    max_pixels : int, optional
        Refuse images (or pages of a TIFF stack) with more pixels, before they are
        decoded where the header tells the size (:func:`imagesize.get`); default
        :func:`image_pixel_limit`.
    max_voxels : int, optional
        Refuse volumes with more voxels, by their header, before their data are read;
        default :func:`volume_voxel_limit`.
    volume_max_side : int or None
        Bin a volume wider than this as it is read (a slab at a time, gzipped files
        included); default :data:`UPLOAD_VOLUME_SIDE`. None reads it whole.

    Returns
    -------
    ndarray or VolumeUpload
        2-D (gray) or 3-D (RGB/RGBA, in RGB order) array with the file's own pixel
        type (uint8, uint16, float), or a volume for NIfTI and NRRD files and TIFF
        stacks.

    Raises
    ------
    UploadError
        Empty, too large (bytes, pixels: :class:`ImageTooLarge`, voxels:
        :class:`ScanTooLarge`), or not a PNG/JPEG/TIFF/NIfTI/NRRD the decoders can
        read; the message names the file.

    Examples
    --------
    >>> decode_upload("notes.txt", b"hello")
    Traceback (most recent call last):
    ...
    foramlib.io.uploads.UploadError: notes.txt: not a readable image or volume (expected PNG, JPEG, TIFF, NIfTI or NRRD; the file starts with b'hello')
    """  # noqa: E501
    data = bytes(data)
    if not data:
        raise UploadError(f"{name}: the file is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise UploadError(
            f"{name}: {len(data) / 2**20:.1f} MB is too large; the limit is "
            f"{max_bytes / 2**20:.0f} MB (FORAM_MAX_UPLOAD_MB)"
        )
    kind = _kind(name, data)
    voxels = volume_voxel_limit() if max_voxels is None else int(max_voxels)
    if kind in ("nifti", "nrrd"):
        return _decode_volume(name, data, volume_max_side, voxels)
    limit = image_pixel_limit() if max_pixels is None else int(max_pixels)
    # the header's size, before gigabytes are decoded; (-1, -1) where it cannot tell
    width, height = imagesize.get(io.BytesIO(data))
    if width > 0 and height > 0:
        _check_pixels(name, height, width, limit)
    if kind == "tiff":
        decoded = _decode_tiff(name, data, volume_max_side, voxels)
        if not isinstance(decoded, VolumeUpload):
            _check_pixels(name, *decoded.shape[:2], limit)
        return decoded
    # PNG, JPEG, and whatever else OpenCV reads (BMP, WebP, ...)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None:
        _check_pixels(name, *arr.shape[:2], limit)
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
        return arr
    if kind in ("png", "jpeg"):
        raise UploadError(f"{name}: the {kind.upper()} file is corrupt or truncated")
    raise UploadError(
        f"{name}: not a readable image or volume (expected PNG, JPEG, TIFF, NIfTI or NRRD; "
        f"the file starts with {data[:16]!r})"
    )
