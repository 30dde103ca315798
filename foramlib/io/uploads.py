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
import os
from dataclasses import dataclass, field

import cv2
import imagesize
import numpy as np

from foramlib.io.volumes import VolumeError, read_volume_bytes

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageTooLarge",
    "MAX_IMAGE_MEGAPIXELS",
    "UPLOAD_SUFFIXES",
    "UploadError",
    "VolumeUpload",
    "decode_upload",
    "image_pixel_limit",
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


class UploadError(ValueError):
    """Uploaded bytes that are not a usable image or volume, or are too large."""


class ImageTooLarge(UploadError):
    """An image with more pixels than the limit (:func:`image_pixel_limit`)."""


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
    """

    name: str
    data: np.ndarray = field(repr=False)
    voxel_size_um: float | None = None
    spacing_um: tuple[float, float, float] | None = None
    relative_spacing: tuple[float, float, float] | None = None

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


def _decode_volume(name: str, data: bytes) -> VolumeUpload:
    try:
        read = read_volume_bytes(name, data)
    except VolumeError as exc:
        raise UploadError(str(exc)) from None
    spacing = read.spacing_um
    return VolumeUpload(name, read.data, min(spacing) if spacing else None, spacing, read.relative)


def _decode_tiff(name: str, data: bytes):
    import tifffile

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
    >>> image_pixel_limit() == int(MAX_IMAGE_MEGAPIXELS * 1e6) or "FORAM_MAX_IMAGE_MP" in os.environ
    True
    """
    text = os.environ.get("FORAM_MAX_IMAGE_MP", "").strip()
    if not text:
        return int(MAX_IMAGE_MEGAPIXELS * 1e6)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"FORAM_MAX_IMAGE_MP = {text!r} is invalid: expected a positive number of megapixels"
        )
    return int(value * 1e6)


def _check_pixels(name: str, height: int, width: int, limit: int) -> None:
    if height * width > limit:
        raise ImageTooLarge(
            f"{name}: {width} × {height} pixels ({height * width / 1e6:.0f} megapixels) is "
            f"more than the limit of {limit / 1e6:g} megapixels (FORAM_MAX_IMAGE_MP); "
            "shrink the image first: a section needs no more than about 2048 pixels a side"
        )


def decode_upload(
    name: str, data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None
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

    Returns
    -------
    ndarray or VolumeUpload
        2-D (gray) or 3-D (RGB/RGBA, in RGB order) array with the file's own pixel
        type (uint8, uint16, float), or a volume for NIfTI and NRRD files and TIFF
        stacks.

    Raises
    ------
    UploadError
        Empty, too large (bytes or pixels), or not a PNG/JPEG/TIFF/NIfTI/NRRD the
        decoders can read; the message names the file.

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
    if kind in ("nifti", "nrrd"):
        return _decode_volume(name, data)
    limit = image_pixel_limit() if max_pixels is None else int(max_pixels)
    # the header's size, before gigabytes are decoded; (-1, -1) where it cannot tell
    width, height = imagesize.get(io.BytesIO(data))
    if width > 0 and height > 0:
        _check_pixels(name, height, width, limit)
    if kind == "tiff":
        decoded = _decode_tiff(name, data)
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
