"""Classifying one uploaded section with the saved ensemble (the dashboard's engine).

Everything the dashboard's classification page does, without widgets:

* :func:`decode_upload` turns uploaded bytes into an image (PNG, JPEG, TIFF including
  16-bit) or a :class:`VolumeUpload` (NIfTI ``.nii``/``.nii.gz`` or a multi-page TIFF
  stack) from which one section is picked;
* :func:`prepare` runs the SAME preprocessing as the slice stage
  (:func:`foramlib.dataset.preprocess.preprocess_slice`), with the store's recorded settings
  (``data/slices/slicing.json``, else ``params.yaml`` ``slice.*``) as defaults, after an
  optional manual crop;
* :class:`Classifier` loads the ensemble named by ``results/metrics.json`` ("final"),
  its member models and class names, and predicts: members see the cleaned slice
  resized exactly as in training (:func:`foramlib.dataset.preprocess.resize_slice`, float32 in
  [0, 255]), their probabilities combined by the recorded
  :class:`~foramlib.evaluation.ensemble.EnsembleSpec`;
* :func:`calibrate_threshold` sets the confidence under which a prediction is flagged
  *uncertain*, on VALIDATION predictions only;
* :func:`grad_cam` shows which part of the slice drove the main model's decision.

Examples
--------
>>> import numpy as np, cv2
>>> img = np.zeros((64, 64), np.uint16); img[16:48, 20:44] = 40000
>>> ok, png = cv2.imencode(".png", img)
>>> decoded = decode_upload("scan.png", png.tobytes())
>>> decoded.dtype.name, decoded.shape
('uint16', (64, 64))
>>> clean, info = prepare(decoded, PrepareOptions(), PreprocessConfig(size=32))
>>> clean.shape, clean.dtype.name, info["source"]
((32, 32), 'uint8', 'preprocessed')
"""

from __future__ import annotations

import gzip
import io
import json
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from foramlib.dataset.preprocess import (
    PreprocessConfig,
    PreprocessError,
    preprocess_slice,
    resize_slice,
)
from foramlib.inference.section_check import SectionCheck, SectionCheckError, Verdict, colourfulness
from foramlib.learn.tta import check_views, predict_views

__all__ = [
    "ClassifyError",
    "UploadError",
    "ArtefactError",
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "VolumeUpload",
    "decode_upload",
    "PrepareOptions",
    "preprocess_defaults",
    "stored_slice",
    "prepare",
    "prepare_upload",
    "Calibration",
    "calibrate_threshold",
    "calibrate_spec",
    "load_validation",
    "Prediction",
    "Classifier",
    "missing_artefacts",
    "load_section_check",
    "SECTION_CHECK",
    "member_tta_views",
    "feature_layer",
    "cam_side",
    "grad_cam",
    "overlay",
    "DEFAULT_TARGET_PRECISION",
    "DEFAULT_MIN_SUPPORT",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd")
DEFAULT_TARGET_PRECISION = 0.80
DEFAULT_MIN_SUPPORT = 20
MAX_SIDE = 2048
DEFAULT_CONFIG = PreprocessConfig()
RUN_FIRST = "run `dvc repro` (or `make demo`) in the workspace first"


class ClassifyError(ValueError):
    """A request the classifier cannot serve (bad options, wrong image, ...)."""


class UploadError(ClassifyError):
    """Uploaded bytes that are not a usable image or volume, or are too large."""


class ArtefactError(ClassifyError):
    """Models, results or data that the pipeline has not produced (yet)."""


# --------------------------------------------------------------------------- upload


@dataclass
class VolumeUpload:
    """An uploaded 3-D scan; :meth:`section` picks the 2-D slice to classify.

    Parameters
    ----------
    name : str
        File name of the upload.
    data : ndarray
        float32 volume in ``(x, y, z)`` order (as :func:`foramlib.io.volumes.read_volume`).
    voxel_size_um : float or None
        Voxel size from the header, when known.
    spacing_um : tuple of 3 float or None
        Voxel size along each axis from the header, when known (anisotropic scans are
        resampled before a whole-scan classification).
    """

    name: str
    data: np.ndarray = field(repr=False)
    voxel_size_um: float | None = None
    spacing_um: tuple[float, float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    def section(self, axis: int, index: int) -> np.ndarray:
        """The 2-D section ``index`` along ``axis`` (0, 1 or 2).

        >>> VolumeUpload("v.nii", np.zeros((4, 5, 6), np.float32)).section(1, 2).shape
        (4, 6)
        """
        if axis not in (0, 1, 2):
            raise ClassifyError(f"{self.name}: axis must be 0, 1 or 2, got {axis!r}")
        n = self.data.shape[axis]
        if not isinstance(index, int | np.integer) or not 0 <= index < n:
            raise ClassifyError(
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
    if lower.endswith(VOLUME_SUFFIXES):
        return "nifti"
    return "unknown"


def _decode_nifti(name: str, data: bytes) -> VolumeUpload:
    import nibabel as nib

    from foramlib.io.volumes import check_volume_array

    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        first = int.from_bytes(raw[:4], "little")
        first_be = int.from_bytes(raw[:4], "big")
        cls = nib.Nifti2Image if 540 in (first, first_be) else nib.Nifti1Image
        img = cls.from_bytes(raw)
        arr = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise UploadError(
            f"{name}: not a readable NIfTI volume ({type(exc).__name__}: {exc})"
        ) from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise UploadError(f"{name}: a NIfTI volume must be 3-D, got shape {arr.shape}")
    try:
        arr = check_volume_array(arr, name)
    except ValueError as exc:
        raise UploadError(str(exc)) from None
    known = len(zooms) == 3 and all(math.isfinite(z) and z > 0 for z in zooms)
    size = zooms[0] if known else None
    return VolumeUpload(
        name, np.ascontiguousarray(arr, np.float32), size, tuple(zooms) if known else None
    )


def _decode_nrrd(name: str, data: bytes) -> VolumeUpload:
    import nrrd

    from foramlib.io.volumes import check_volume_array, nrrd_spacing_um

    try:
        fh = io.BytesIO(data)
        header = nrrd.read_header(fh)
        if "data file" in header or "datafile" in header:
            raise UploadError(
                f"{name}: a detached NRRD header (its data lives in another file); "
                "upload a single .nrrd file"
            )
        arr = nrrd.read_data(header, fh, None)  # index order "F": (x, y, z)
    except (UploadError, MemoryError):
        raise
    except Exception as exc:  # pynrrd raises several types for corrupt files
        raise UploadError(
            f"{name}: not a readable NRRD volume ({type(exc).__name__}: {exc})"
        ) from None
    if arr.ndim != 3:
        raise UploadError(f"{name}: a NRRD volume must be 3-D, got shape {arr.shape}")
    try:
        arr = check_volume_array(np.asarray(arr, np.float32), name)
    except ValueError as exc:
        raise UploadError(str(exc)) from None
    spacing, _ = nrrd_spacing_um(header)  # None: taken as isotropic, and said so
    return VolumeUpload(name, np.ascontiguousarray(arr), min(spacing) if spacing else None, spacing)


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


def decode_upload(name: str, data: bytes, *, max_bytes: int | None = None):
    """Decode uploaded bytes into an image array or a :class:`VolumeUpload`.

    Parameters
    ----------
    name : str
        The file's name (for messages; ``.nii``/``.nii.gz``/``.nrrd`` marks a volume).
    data : bytes
        The file's content.
    max_bytes : int, optional
        Refuse larger uploads.

    Returns
    -------
    ndarray or VolumeUpload
        2-D (gray) or 3-D (RGB/RGBA, in RGB order) array with the file's own pixel
        type (uint8, uint16, float), or a volume for NIfTI and NRRD files and TIFF
        stacks.

    Raises
    ------
    UploadError
        Empty, too large, or not a PNG/JPEG/TIFF/NIfTI/NRRD the decoders can read; the
        message names the file.

    Examples
    --------
    >>> decode_upload("notes.txt", b"hello")
    Traceback (most recent call last):
    ...
    foramlib.inference.classify.UploadError: notes.txt: not a readable image or volume (expected PNG, JPEG, TIFF, NIfTI or NRRD; the file starts with b'hello')
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
    if kind == "nifti":
        return _decode_nifti(name, data)
    if kind == "nrrd":
        return _decode_nrrd(name, data)
    if kind == "tiff":
        return _decode_tiff(name, data)
    # PNG, JPEG, and whatever else OpenCV reads (BMP, WebP, ...)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None:
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


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class PrepareOptions:
    """The user's preprocessing choices on top of the training settings.

    Parameters
    ----------
    sensitivity : float, optional
        Segmentation sensitivity in (0, 1); None keeps the training value.
    clahe, denoise, sharpen : bool, optional
        Contrast enhancement, denoising, sharpening; None keeps the training value.
    crop : (top, bottom, left, right)
        Manual crop before the automatic one, as fractions of the height and width
        (``(0, 1, 0, 1)``: the whole image).
    """

    sensitivity: float | None = None
    clahe: bool | None = None
    denoise: bool | None = None
    sharpen: bool | None = None
    crop: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        crop = tuple(float(c) for c in self.crop)
        if (
            len(crop) != 4
            or not all(math.isfinite(c) for c in crop)
            or not (0.0 <= crop[0] < crop[1] <= 1.0 and 0.0 <= crop[2] < crop[3] <= 1.0)
        ):
            raise ClassifyError(
                f"crop must be (top, bottom, left, right) fractions with 0 <= top < bottom "
                f"<= 1 and 0 <= left < right <= 1, got {self.crop!r}"
            )
        object.__setattr__(self, "crop", crop)

    def config(self, base: PreprocessConfig) -> PreprocessConfig:
        """`base` with the options that are set."""
        changes = {
            k: v
            for k, v in dict(
                sensitivity=self.sensitivity,
                clahe=self.clahe,
                denoise=self.denoise,
                sharpen=self.sharpen,
            ).items()
            if v is not None
        }
        try:
            return replace(base, **changes)
        except ValueError as exc:
            raise ClassifyError(str(exc)) from None

    @property
    def cropped(self) -> bool:
        return self.crop != (0.0, 1.0, 0.0, 1.0)


def preprocess_defaults(workspace) -> tuple[PreprocessConfig, str]:
    """The preprocessing the models were trained with, and where it was read from
    (:func:`foramlib.dataset.slicing.trained_slicing`, the one reader: the slice store's
    record, then ``params.yaml`` ``slice.*``, else the defaults).

    >>> import tempfile
    >>> preprocess_defaults(tempfile.mkdtemp())[1]
    'built-in defaults'
    """
    from foramlib.dataset.slicing import trained_slicing

    config, source = trained_slicing(workspace)
    return config.preprocess, source


def _manual_crop(image: np.ndarray, crop) -> np.ndarray:
    h, w = image.shape[:2]
    r0, r1 = int(round(crop[0] * h)), int(round(crop[1] * h))
    c0, c1 = int(round(crop[2] * w)), int(round(crop[3] * w))
    return image[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)]


def stored_slice(image, base: PreprocessConfig) -> np.ndarray | None:
    """`image` as a 2-D uint8 slice if it already is one as the slicer stores it, else None.

    A stored slice (``data/slices``, the dashboard's gallery, or a PNG/TIFF a user saved
    from either) went through the training preprocessing once: it is a ``base.size``
    square of 8-bit grey whose background the segmentation set to 0, so its whole
    border is 0. Preprocessing it again would stretch its contrast again and cut its
    dim parts, and the models would see another image than the stored one; such an
    image is classified as it is. A raw section (larger, or with a scanner background
    of noise, matrix or mount around the fossil) gets the full preprocessing. Grey
    saved as RGB(A) (equal channels, opaque) counts as grey.

    Parameters
    ----------
    image : array-like
        A decoded image (:func:`decode_upload`).
    base : PreprocessConfig
        The served preprocessing; its ``size`` is the stored slices' edge.

    Returns
    -------
    ndarray of uint8 or None

    Examples
    --------
    >>> base = PreprocessConfig(size=32)
    >>> s = np.zeros((32, 32), np.uint8); s[8:24, 6:26] = 200
    >>> stored_slice(s, base) is s
    True
    >>> stored_slice(s + 3, base) is None  # a background that is not the store's 0
    True
    >>> stored_slice(np.dstack([s, s, s]), base).shape
    (32, 32)
    >>> stored_slice(np.zeros((64, 64), np.uint8), base) is None  # another size
    True
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.shape[:2] != (base.size, base.size):
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        opaque = arr.shape[2] == 3 or bool((arr[..., 3] == 255).all())
        if not (opaque and (rgb == rgb[..., :1]).all()):
            return None
        arr = np.ascontiguousarray(rgb[..., 0])
    if arr.ndim != 2 or not arr.any():
        return None  # a blank image is reported as blank by prepare
    border = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    return arr if not border.any() else None


def prepare(
    image,
    options: PrepareOptions = PrepareOptions(),
    base: PreprocessConfig = DEFAULT_CONFIG,
    *,
    cleaned: bool = False,
    name: str = "image",
    max_side: int = MAX_SIDE,
):
    """Manual crop, then the training preprocessing (:func:`preprocess_slice`).

    Parameters
    ----------
    image : array-like
        A raw section (any pixel type, gray or RGB).
    options : PrepareOptions
    base : PreprocessConfig
        The training settings (see :func:`preprocess_defaults`).
    cleaned : bool
        `image` is a slice from the store, already preprocessed with `base`: with the
        training settings and no crop it is returned as is (exactly the model's test
        input); any change runs the pipeline on it.
    name : str
        For messages.
    max_side : int
        Images whose longer side exceeds it are first shrunk to it (``INTER_AREA``):
        segmentation of a 10k-pixel scan would take seconds and the result is a
        ``size``-pixel slice anyway.

    Returns
    -------
    (ndarray of uint8, dict)
        The cleaned ``size × size`` slice and what was done: ``source``
        ("preprocessed" or "stored slice"), ``fraction`` of the section that is fossil,
        ``box``, ``crop``, the ``config`` used and the input's ``colourfulness``
        (:func:`foramlib.inference.section_check.colourfulness`).

    Raises
    ------
    foramlib.dataset.preprocess.PreprocessError
        Blank, tiny (< 16 px) or featureless images; nothing above the threshold.

    Examples
    --------
    >>> prepare(np.zeros((40, 40)), name="blank.png")
    Traceback (most recent call last):
    ...
    foramlib.dataset.preprocess.PreprocessError: blank.png: image is blank (all pixels equal 0)
    """
    config = options.config(base)
    arr = np.asarray(image)
    if arr.dtype.kind not in "uifb":
        raise PreprocessError(f"{name}: unsupported pixel type {arr.dtype}")
    info = {"crop": list(options.crop), "config": config.as_dict()}
    if cleaned and config == base and not options.cropped and arr.shape == (base.size,) * 2:
        out = arr.astype(np.uint8)
        fraction = float((out > 0).mean())
        info["colourfulness"] = 0.0  # a stored slice is grey
        return out, {**info, "source": "stored slice", "fraction": fraction, "box": None}
    if options.cropped:
        arr = _manual_crop(arr, options.crop)
    if max(arr.shape[:2]) > max_side and min(arr.shape[:2]) >= 16:
        scale = max_side / max(arr.shape[:2])
        shape = tuple(max(16, round(s * scale)) for s in arr.shape[:2])
        info["downscaled_from"], info["scale"] = list(arr.shape[:2]), scale
        src = arr if arr.dtype in (np.uint8, np.uint16) else arr.astype(np.float32)
        arr = cv2.resize(src, shape[::-1], interpolation=cv2.INTER_AREA)
    # the section check's colour rule, on the shrunk image: a full-size scan's channel
    # spread would cost seconds and say the same
    info["colourfulness"] = round(colourfulness(arr), 4)
    out, sl = preprocess_slice(arr, config, name=name)
    return out, {
        **info,
        "source": "preprocessed",
        "fraction": sl.fraction,
        "box": [int(b) for b in sl.box],
    }


def prepare_upload(
    image,
    base: PreprocessConfig = DEFAULT_CONFIG,
    options: PrepareOptions = PrepareOptions(),
    *,
    name: str = "image",
):
    """:func:`prepare` for an image from outside: a stored slice is kept as it is.

    An exported stored slice (:func:`stored_slice`) with the training settings and no
    crop is classified as it is (``info["source"] == "stored slice"``); anything else
    gets the full preprocessing. The one entry point of uploads and ``foram classify``.

    Examples
    --------
    >>> s = np.zeros((32, 32), np.uint8); s[8:24, 6:26] = 200
    >>> prepare_upload(s, PreprocessConfig(size=32))[1]["source"]
    'stored slice'
    >>> prepare_upload(np.pad(s, 8), PreprocessConfig(size=32))[1]["source"]
    'preprocessed'
    """
    stored = None
    if not options.cropped and options.config(base) == base:
        stored = stored_slice(image, base)
    if stored is None:
        return prepare(image, options, base, name=name)
    return prepare(stored, options, base, cleaned=True, name=name)


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """The confidence threshold under which a prediction is flagged uncertain.

    Attributes
    ----------
    threshold : float
        Predictions whose top probability is below it are uncertain.
    target_precision : float
        The validation precision asked for.
    precision, coverage : float
        On the validation slices with confidence >= threshold: the share predicted
        correctly, and the share of all validation slices they are.
    n_val : int
        Validation slices used.
    reached : bool
        False when no threshold reaches the target (then every prediction is flagged).
    rule : str
        The rule in words.
    """

    threshold: float
    target_precision: float
    precision: float
    coverage: float
    n_val: int
    reached: bool
    rule: str

    def uncertain(self, confidence: float) -> bool:
        """True when a prediction of this top probability should be flagged."""
        return (not self.reached) or confidence < self.threshold

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(
    confidence,
    correct,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> Calibration:
    """The lowest confidence threshold whose accepted predictions reach a precision.

    Rule: over the validation slices, accept a prediction when its top probability is
    at least ``t``; choose the smallest ``t`` (the largest coverage) at which the
    accepted predictions are correct at least `target_precision` of the time and
    number at least `min_support`. Predictions below ``t`` are *uncertain*. When no
    ``t`` qualifies, every prediction is uncertain (``reached=False``).

    Parameters
    ----------
    confidence : array of float
        Top probability of each validation prediction.
    correct : array of bool
        Whether each top-1 prediction was right.
    target_precision : float in (0, 1]
    min_support : int >= 1

    Examples
    --------
    >>> conf = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    >>> ok = [True, True, True, False, True, False]
    >>> c = calibrate_threshold(conf, ok, target_precision=0.75, min_support=2)
    >>> c.threshold, c.precision, round(c.coverage, 3), c.reached
    (0.6, 0.8, 0.833, True)
    >>> calibrate_threshold(conf, ok, target_precision=1.0, min_support=4).reached
    False
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape or conf.size == 0:
        raise ClassifyError(
            f"confidence and correct must be non-empty and of one length, got "
            f"{conf.size} and {ok.size}"
        )
    if not np.isfinite(conf).all():
        raise ClassifyError("confidence holds NaN or infinite values")
    if not 0.0 < float(target_precision) <= 1.0:
        raise ClassifyError(f"target_precision must be in (0, 1], got {target_precision!r}")
    if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 1:
        raise ClassifyError(f"min_support must be an integer >= 1, got {min_support!r}")
    rule = (
        f"smallest threshold t such that validation predictions with top probability >= t "
        f"are correct at least {target_precision:.0%} of the time (at least {min_support} "
        f"of them); below t a prediction is flagged uncertain"
    )
    order = np.argsort(-conf, kind="stable")
    c, k = conf[order], ok[order]
    hits = np.cumsum(k)
    n = np.arange(1, len(c) + 1)
    # accepting "confidence >= t" takes every slice tied at t: only ends of tie runs count
    ends = np.r_[c[1:] != c[:-1], True]
    prec = hits / n
    good = ends & (prec >= target_precision - 1e-12) & (n >= min_support)
    if not good.any():
        best = int(np.argmax(np.where(ends & (n >= min(min_support, len(c))), prec, -1)))
        return Calibration(
            threshold=1.0,
            target_precision=float(target_precision),
            precision=float(prec[best]),
            coverage=0.0,
            n_val=int(len(c)),
            reached=False,
            rule=rule,
        )
    i = int(np.flatnonzero(good)[-1])
    return Calibration(
        threshold=float(c[i]),
        target_precision=float(target_precision),
        precision=float(prec[i]),
        coverage=float(n[i] / len(c)),
        n_val=int(len(c)),
        reached=True,
        rule=rule,
    )


def load_validation(spec, models_dir) -> dict:
    """Each member's validation predictions (``<models_dir>/<member>/predictions_val.csv``).

    Raises
    ------
    ArtefactError
        A member's validation predictions are missing or unreadable.
    """
    from foramlib.evaluation.metrics import PredictionError, load_model_predictions

    val = {}
    for m in spec.members:
        try:
            val[m] = load_model_predictions(Path(models_dir) / m, "val")
        except (PredictionError, FileNotFoundError, OSError) as exc:
            raise ArtefactError(
                f"validation predictions of {m!r} are missing or unreadable ({exc}); {RUN_FIRST}"
            ) from None
    return val


def calibrate_spec(spec, models_dir, **kwargs) -> Calibration:
    """Calibrate the uncertainty threshold of an ensemble on its members' validation output.

    Reads ``<models_dir>/<member>/predictions_val.csv``, combines them with
    ``spec.apply`` and calls :func:`calibrate_threshold` (keyword arguments passed on).

    Raises
    ------
    ArtefactError
        A member's validation predictions are missing.
    """
    val = load_validation(spec, models_dir)
    try:
        probs = spec.apply(val)
    except ValueError as exc:  # EnsembleError, PredictionError: members that do not align
        raise ArtefactError(f"cannot combine the validation predictions: {exc}") from None
    y = val[spec.members[0]].y_true
    return calibrate_threshold(probs.max(axis=1), probs.argmax(axis=1) == y, **kwargs)


# --------------------------------------------------------------------------- workspace


SECTION_CHECK = "results/section_check.npz"  # written by the evaluate stage


def load_section_check(workspace, preprocess: PreprocessConfig) -> tuple[SectionCheck | None, str]:
    """The workspace's section check (evaluate stage), or None and why not.

    A check fitted on slices of another size than the served preprocessing is stale
    (the slices were rebuilt since) and not used.
    """
    path = Path(workspace) / SECTION_CHECK
    if not path.is_file():
        return None, f"none ({SECTION_CHECK} missing; the evaluate stage writes it)"
    try:
        check = SectionCheck.load(path)
    except SectionCheckError as exc:
        return None, f"unusable: {exc}"
    size = check.info.get("size")
    if size is not None and int(size) != preprocess.size:
        return None, (
            f"stale: fitted on {size}-px slices, the models see {preprocess.size}-px "
            "slices; rerun the evaluate stage"
        )
    return check, SECTION_CHECK


def _final_name(ws: Path) -> str:
    metrics = ws / "results" / "metrics.json"
    if not metrics.is_file():
        raise ArtefactError(f"{metrics} is missing: no evaluated ensemble yet; {RUN_FIRST}")
    try:
        final = json.loads(metrics.read_text(encoding="utf-8"))["final"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{metrics} names no final ensemble ({exc}); {RUN_FIRST}") from None
    return str(final)


def _load_spec(ws: Path, name: str):
    from foramlib.evaluation.ensemble import EnsembleError, EnsembleSpec

    path = ws / "results" / "ensemble" / f"{name}.json"
    if path.is_file():
        try:
            return EnsembleSpec.load(path), str(path.relative_to(ws))
        except EnsembleError as exc:
            raise ArtefactError(f"{exc}; {RUN_FIRST}") from None
    model_dir = ws / "models" / name
    if (model_dir / "class_names.json").is_file():  # a single trained backbone
        names = json.loads((model_dir / "class_names.json").read_text(encoding="utf-8"))
        return EnsembleSpec("top_k", (name,), tuple(names), k=1), f"models/{name}"
    raise ArtefactError(
        f"ensemble {name!r} not found: neither {path} nor {model_dir} exists; {RUN_FIRST}"
    )


def member_tta_views(model_dir) -> int:
    """The views a trained model's predictions average over (its ``config.json``).

    Models trained before test-time augmentation existed, or without a
    ``config.json``, were predicted from the slice alone: 1.

    Raises
    ------
    ArtefactError
        ``config.json`` is unreadable or names an invalid ``tta_views``.

    Examples
    --------
    >>> import tempfile
    >>> member_tta_views(tempfile.mkdtemp())
    1
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return 1
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        return check_views(settings.get("tta_views", 1), f"tta_views in {path}")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as exc:
        raise ArtefactError(f"{path} is unreadable ({exc}); {RUN_FIRST}") from None


def missing_artefacts(workspace, ensemble: str | None = None) -> list[str]:
    """What the classifier needs from the pipeline but cannot find (empty: all there).

    Checks files only (no model is loaded), so a page can say what to run first.

    >>> import tempfile
    >>> missing_artefacts(tempfile.mkdtemp())[0].startswith("results/metrics.json")
    True
    """
    ws = Path(workspace)
    try:
        name = ensemble or _final_name(ws)
    except ArtefactError:
        return ["results/metrics.json (the evaluated final ensemble)"]
    try:
        spec, _ = _load_spec(ws, name)
    except ArtefactError:
        return [f"results/ensemble/{name}.json (the saved ensemble)"]
    missing = []
    for m in spec.members:
        for f in ("model.keras", "class_names.json"):
            if not (ws / "models" / m / f).is_file():
                missing.append(f"models/{m}/{f}")
    return missing


# --------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """The classifier's answer for one slice.

    Attributes
    ----------
    top5 : list of (str, float)
        The five most probable genera (fewer if there are fewer classes), best first.
    probabilities : dict of str to float
        Every genus' probability, in class order.
    uncertain : bool
        Top probability under the calibrated threshold (or no calibration reached).
    threshold : Calibration or None
    metadata : dict
        Ensemble, members, input sizes, preprocessing used, main model.
    member_probabilities : dict of str to list of float
        Each member's own distribution (class order).
    section : Verdict or None
        Does the input look like a foraminifer section at all
        (:mod:`foramlib.inference.section_check`)? None when the workspace has no section check.
    """

    top5: list[tuple[str, float]]
    probabilities: dict[str, float]
    uncertain: bool
    threshold: Calibration | None
    metadata: dict
    member_probabilities: dict[str, list[float]] = field(default_factory=dict)
    section: Verdict | None = None

    @property
    def not_a_section(self) -> bool:
        """The section check refused the input (a photo, noise, another material)."""
        return self.section is not None and not self.section.looks_like_section

    @property
    def genus(self) -> str:
        return self.top5[0][0]

    @property
    def confidence(self) -> float:
        return self.top5[0][1]


class Classifier:
    """The saved ensemble, ready to classify single slices.

    Build it with :meth:`from_workspace`; or directly from loaded models.

    Parameters
    ----------
    spec : EnsembleSpec
    models : mapping of member name to keras.Model
    preprocess : PreprocessConfig
        The training preprocessing (defaults of :func:`prepare`).
    calibration : Calibration, optional
    name : str
        The ensemble's name (e.g. "PatchEnsemble").
    sources : dict
        Where the spec, preprocessing and calibration came from (for the metadata).
    tta_views : mapping of member name to int, optional
        Views (:mod:`foramlib.learn.tta`) each member's probability is averaged over, as in
        its training run's predictions (default: 1, the slice alone).
    section_check : SectionCheck, optional
        Says whether an input looks like a foraminifer section at all (default: no
        check; predictions then carry ``section=None``).
    """

    def __init__(
        self,
        spec,
        models: Mapping,
        preprocess: PreprocessConfig,
        calibration: Calibration | None = None,
        *,
        name: str = "ensemble",
        sources: dict | None = None,
        tta_views: Mapping[str, int] | None = None,
        section_check: SectionCheck | None = None,
    ):
        from foramlib.evaluation.ensemble import check_members

        check_members(spec, models)
        self.spec = spec
        self.models = {m: models[m] for m in spec.members}
        self.preprocess = preprocess
        self.calibration = calibration
        self.name = name
        self.sources = dict(sources or {})
        self.names = list(spec.names)
        for m, model in self.models.items():
            n_out = int(model.output_shape[-1])
            if n_out != len(self.names):
                raise ArtefactError(
                    f"member {m!r} outputs {n_out} classes, the ensemble has {len(self.names)}"
                )
        self.input_sizes = {m: int(model.input_shape[1]) for m, model in self.models.items()}
        views = dict(tta_views or {})
        unknown = sorted(set(views) - set(self.models))
        if unknown:
            raise ArtefactError(f"tta_views names models outside the ensemble: {unknown}")
        self.tta_views = {m: check_views(views.get(m, 1), f"tta_views[{m!r}]") for m in self.models}
        self.section_check = section_check

    @property
    def main(self) -> str:
        """The main member: the PatchEnsemble's main model, else the best-ranked member."""
        return self.spec.main if self.spec.kind == "patch" else self.spec.members[0]

    @classmethod
    def from_workspace(
        cls,
        workspace,
        ensemble: str | None = None,
        *,
        target_precision: float = DEFAULT_TARGET_PRECISION,
        min_support: int = DEFAULT_MIN_SUPPORT,
    ) -> Classifier:
        """Load the ensemble ``ensemble`` (default: ``results/metrics.json`` "final").

        `ensemble` may also name one trained backbone under ``models/``.

        Raises
        ------
        ArtefactError
            Missing or inconsistent pipeline outputs; the message says what to run.
        """
        import keras

        from foramlib.learn.loader import DataError, check_class_lists, load_class_names
        from foramlib.learn.training import enable_jit

        ws = Path(workspace)
        name = ensemble or _final_name(ws)
        spec, spec_source = _load_spec(ws, name)
        models, views = {}, {}
        for m in spec.members:
            views[m] = member_tta_views(ws / "models" / m)
            path = ws / "models" / m / "model.keras"
            if not path.is_file():
                raise ArtefactError(f"model of member {m!r} is missing ({path}); {RUN_FIRST}")
            try:
                check_class_lists(
                    list(spec.names),
                    load_class_names(ws / "models" / m / "class_names.json"),
                    what=f"class list of models/{m}",
                )
            except DataError as exc:
                raise ArtefactError(f"{exc}; {RUN_FIRST}") from None
            models[m] = keras.saving.load_model(path, compile=False)
            # on JAX the augmentation layers (idle at inference) would leave prediction
            # uncompiled, op by op; `supports_jit` is not saved with a model
            if enable_jit(models[m]) is True:
                models[m].jit_compile = True
        config, pp_source = preprocess_defaults(ws)
        try:
            calibration = calibrate_spec(
                spec, ws / "models", target_precision=target_precision, min_support=min_support
            )
        except ArtefactError:
            calibration = None
        section_check, check_source = load_section_check(ws, config)
        return cls(
            spec,
            models,
            config,
            calibration,
            name=name,
            sources={
                "ensemble": spec_source,
                "preprocessing": pp_source,
                "section_check": check_source,
            },
            tta_views=views,
            section_check=section_check,
        )

    # ------------------------------------------------------------------ inference
    def warm_up(self) -> None:
        """Run every member and Grad-CAM once, so the first user request is fast.

        (TensorFlow traces its prediction functions on first use: seconds per model.)
        """
        size = self.preprocess.size
        yy, xx = np.mgrid[:size, :size]
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 200
        image = disc.astype(np.uint8)
        pred = self.predict(image)
        try:
            self.grad_cam(image, pred.genus)
        except ClassifyError:
            pass

    def prepare(self, image, options: PrepareOptions = PrepareOptions(), **kwargs):
        """:func:`prepare` with this classifier's training preprocessing."""
        return prepare(image, options, self.preprocess, **kwargs)

    def _input(self, cleaned: np.ndarray, size: int) -> np.ndarray:
        img = np.asarray(cleaned)
        if img.ndim != 2 or img.dtype != np.uint8:
            raise ClassifyError(
                f"expected a cleaned 2-D uint8 slice (see prepare), got {img.dtype} {img.shape}"
            )
        return resize_slice(img, size).astype(np.float32)[None, :, :, None]

    def member_probabilities(self, cleaned: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's (1, C) probabilities for one cleaned slice."""
        out = {}
        for m, model in self.models.items():
            x = self._input(cleaned, self.input_sizes[m])
            out[m] = predict_views(model, x, self.tta_views[m]).reshape(1, -1)
        return out

    def predict_many(self, cleaned, batch_size: int = 64) -> np.ndarray:
        """The ensemble's probabilities for a stack of cleaned slices.

        Parameters
        ----------
        cleaned : ndarray of uint8, shape (N, S, S)
            Slices as :meth:`prepare` or the slice stage leave them.
        batch_size : int

        Returns
        -------
        ndarray of float64, shape (N, n_classes)
        """
        stack = np.asarray(cleaned)
        if stack.ndim != 3 or stack.dtype != np.uint8 or len(stack) == 0:
            raise ClassifyError(
                f"expected a non-empty stack of cleaned uint8 slices (N, S, S), got "
                f"{stack.dtype} {stack.shape}"
            )
        members = {}
        for m, model in self.models.items():
            size = self.input_sizes[m]
            out = []
            for start in range(0, len(stack), batch_size):
                x = np.stack([resize_slice(img, size) for img in stack[start : start + batch_size]])
                x = x.astype(np.float32)[..., None]
                out.append(predict_views(model, x, self.tta_views[m]))
            members[m] = np.concatenate(out).reshape(len(stack), -1)
        return np.asarray(self.spec.apply(members), dtype=np.float64)

    def predict(self, cleaned: np.ndarray, *, preprocessing: dict | None = None) -> Prediction:
        """Classify one cleaned slice (the output of :meth:`prepare`).

        Parameters
        ----------
        cleaned : ndarray of uint8, shape (S, S)
        preprocessing : dict, optional
            The ``info`` of :meth:`prepare`, copied into the metadata.
        """
        members = self.member_probabilities(cleaned)
        probs = self.spec.apply(members)[0]
        order = np.argsort(-probs, kind="stable")[:5]
        top5 = [(self.names[i], float(probs[i])) for i in order]
        conf = top5[0][1]
        uncertain = True if self.calibration is None else self.calibration.uncertain(conf)
        section = None
        if self.section_check is not None:
            colour = float((preprocessing or {}).get("colourfulness", 0.0))
            section = self.section_check.verdict(cleaned, colour=colour)
        metadata = {
            "ensemble": self.name,
            "kind": self.spec.kind,
            "members": list(self.spec.members),
            "main": self.main,
            "weak": list(self.spec.weak),
            "input_size": dict(self.input_sizes),
            "tta_views": dict(self.tta_views),
            "classes": len(self.names),
            "preprocessing": preprocessing or {},
            "preprocessing_defaults": {**self.preprocess.as_dict()},
            "sources": dict(self.sources),
            "calibration": None if self.calibration is None else self.calibration.as_dict(),
            "section_check": None if section is None else section.as_dict(),
        }
        if self.spec.kind == "patch":
            rule = self.spec.rule()
            metadata["patch_switched"] = bool(
                rule.switched(members[self.spec.main], members[self.spec.patch])[0]
            )
        return Prediction(
            top5=top5,
            probabilities={n: float(p) for n, p in zip(self.names, probs, strict=True)},
            uncertain=bool(uncertain),
            threshold=self.calibration,
            metadata=metadata,
            member_probabilities={m: p[0].tolist() for m, p in members.items()},
            section=section,
        )

    def grad_cam(self, cleaned: np.ndarray, class_name: str | None = None) -> np.ndarray:
        """Grad-CAM heat map of the main member for `class_name` (default: its top-1).

        Returns
        -------
        ndarray of float32 in [0, 1], the shape of `cleaned`
        """
        model = self.models[self.main]
        size = self.input_sizes[self.main]
        x = self._input(cleaned, size)
        index = None if class_name is None else self.names.index(class_name)
        try:
            heat = grad_cam(model, x[0], class_index=index, min_side=cam_side(size))
        except ClassifyError:  # no map that fine: the last one
            heat = grad_cam(model, x[0], class_index=index)
        return cv2.resize(heat, cleaned.shape[::-1], interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- Grad-CAM


def feature_layer(model, min_side: int = 1):
    """The backbone's last layer with a 4-D (spatial) output at least `min_side` wide.

    With the default, the last spatial layer: for ``tiny_cnn`` ``block4_relu``, for the
    ImageNet backbones the activation after their last convolution (e.g.
    EfficientNetV2's ``top_activation``). A larger `min_side` picks a deeper-than-early
    but finer layer (e.g. the last 6×6 map of a 96-px MobileNetV3 instead of its 3×3
    one): Grad-CAM there shows more of the slice's structure.

    >>> from foramlib.learn.models import build_model
    >>> feature_layer(build_model("tiny_cnn", input_size=32, n_classes=2)).name
    'block4_relu'
    """
    from foramlib.learn.models import backbone_of

    net = backbone_of(model)
    for layer in reversed(net.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        kind = type(layer).__name__
        if len(shape) != 4 or kind == "InputLayer" or "Padding" in kind:
            continue  # a padding layer's map has a frame of zeros the slice does not have
        if shape[1] is None or min(shape[1], shape[2]) >= min_side:
            return layer
    raise ClassifyError(
        f"backbone of {model.name!r} has no layer with a spatial output of side >= {min_side}"
    )


def cam_side(input_size: int) -> int:
    """The smallest feature-map side the page's Grad-CAM uses for an input size.

    A sixteenth of the input (the stride-16 maps of the ImageNet backbones), at least 6:
    a 3×3 map (a 96-px MobileNetV3's last) paints a few blocks, not the slice's chambers.

    >>> cam_side(96), cam_side(224), cam_side(48)
    (6, 14, 6)
    """
    return max(6, int(input_size) // 16)


_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {side: model}


def grad_cam(model, image, *, class_index: int | None = None, min_side: int = 1) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of a :func:`foramlib.learn.models.build_model` model.

    The gradient of the class score with respect to the backbone's last spatial feature
    map (:func:`feature_layer`), averaged over space, weights the map's channels; the
    rectified sum, scaled to [0, 1], is the heat map. The model's wrapper layers are
    applied around the nested backbone as in the model (gray to RGB, rescaling; the
    augmentation and dropout are inactive at inference).

    Parameters
    ----------
    model : keras.Model
    image : array, shape (S, S) or (S, S, 1)
        The model's input: float in [0, 255] at the model's input size.
    class_index : int, optional
        Class to explain (default: the model's top-1).
    min_side : int
        Explain at the last feature map at least this wide (:func:`feature_layer`).

    Returns
    -------
    ndarray of float32 in [0, 1]
        The heat map at the feature map's resolution (e.g. 3×3 for a 96-px
        EfficientNet input); resize it for display.

    Raises
    ------
    ClassifyError
        On a backend other than TensorFlow, or an input of the wrong size.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ClassifyError(
            f"grad_cam needs the tensorflow backend, not {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    from foramlib.learn.models import backbone_of

    size = int(model.input_shape[1])
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape != (size, size, 1):
        raise ClassifyError(
            f"grad_cam: expected an image of shape {(size, size, 1)}, got {x.shape}"
        )
    cached = _FEATURES.setdefault(model, {})
    features = cached.get(min_side)
    if features is None:
        net = backbone_of(model)
        layer = feature_layer(model, min_side)
        features = keras.Model(net.inputs, [layer.output, net.output])
        cached[min_side] = features
    names = {layer.name for layer in model.layers}
    x = tf.convert_to_tensor(x[None])
    rgb = model.get_layer("gray_to_rgb")([x, x, x])
    if "preprocess" in names:
        rgb = model.get_layer("preprocess")(rgb)
    with tf.GradientTape() as tape:
        fmap, pooled = features(rgb, training=False)
        tape.watch(fmap)
        probs = model.get_layer("predictions")(pooled)
        k = int(tf.argmax(probs[0])) if class_index is None else int(class_index)
        score = probs[:, k]
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(fmap * weights[:, None, None, :], axis=-1))[0].numpy()
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of `heat` (jet colour map) blended over a gray uint8 `image`.

    >>> overlay(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32)).shape
    (8, 8, 3)
    """
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32) / 255.0
    if heat.shape != img.shape:
        heat = cv2.resize(heat.astype(np.float32), img.shape[::-1])
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    out = (1 - alpha) * img[..., None] + alpha * colour
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def top_k_table(pairs: Sequence[tuple[str, float]]) -> list[dict]:
    """Rows ``{"rank", "genus", "probability"}`` of a ranked list (for tables)."""
    return [{"rank": i + 1, "genus": g, "probability": float(p)} for i, (g, p) in enumerate(pairs)]
