"""Slice preprocessing shared by dataset creation and the dashboard.

One path turns a raw 2D section (cut from a volume, or uploaded by a user) into the
model's input: grayscale in [0, 1] → silhouette segmentation with a *sensitivity* knob
→ background removed → square bounding-box crop → resize with padding → optional
contrast enhancement (CLAHE), denoising and sharpening → uint8.

Thresholds come from Otsu's method (scikit-image); for slices cut from a volume the
volume's own Otsu threshold is passed in, so that a slice of pure background or noise is
not split in two halves the way a per-slice Otsu threshold would.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((64, 64)); img[20:40, 10:50] = 1.0
>>> out, info = preprocess_slice(img, PreprocessConfig(size=32))
>>> out.shape, out.dtype, 0.19 < info.fraction < 0.25
((32, 32), dtype('uint8'), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, exposure, filters, morphology, restoration

from foramlib.io.volumes import VolumeError, percentile_window, stretch

__all__ = [
    "PREPROCESS_VERSION",
    "PreprocessError",
    "PreprocessConfig",
    "SliceInfo",
    "to_gray_float",
    "otsu_threshold",
    "sensitivity_threshold",
    "segment_silhouette",
    "crop_square",
    "resize_square",
    "resize_slice",
    "shrink_to_fit",
    "enhance",
    "preprocess_slice",
    "background_level",
    "foreground_threshold",
    "noise_level",
    "DENSE_FACTOR",
    "dense_inclusion_mask",
    "remove_dense_inclusions",
    "remove_bright_class",
    "bright_class_hides_fossil",
]

# Bump when the output of preprocess_slice changes for the same input, config and
# threshold: stored slices (cut with their volume's threshold) and search indexes (each
# section on its own threshold, as a query) record it and refuse to mix versions.
PREPROCESS_VERSION = 1


class PreprocessError(ValueError):
    """An image that cannot be preprocessed (blank, tiny, no foreground, ...)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of :func:`preprocess_slice`.

    Parameters
    ----------
    size : int
        Output edge length in pixels (square), >= 16.
    sensitivity : float
        Segmentation sensitivity in (0, 1); 0.5 uses Otsu's threshold, higher values
        take fainter structure as fossil, lower values only the brightest.
    min_fraction : float
        Slices whose silhouette covers less than this fraction of the section are
        "low content" (the paper drops slices with < ~2 % fossil area).
    margin : float
        Border added around the silhouette's bounding box, as a fraction of its side.
    clahe, denoise, sharpen : bool
        Contrast-limited adaptive histogram equalisation, total-variation denoising
        and unsharp masking, applied inside the crop.
    """

    size: int = 224
    sensitivity: float = 0.5
    min_fraction: float = 0.02
    margin: float = 0.05
    clahe: bool = False
    denoise: bool = False
    sharpen: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int | np.integer) or self.size < 16:
            raise ValueError(f"size must be an integer >= 16, got {self.size!r}")
        if not 0.0 < float(self.sensitivity) < 1.0:
            raise ValueError(f"sensitivity must be in (0, 1), got {self.sensitivity!r}")
        if not 0.0 <= float(self.min_fraction) < 1.0:
            raise ValueError(f"min_fraction must be in [0, 1), got {self.min_fraction!r}")
        if not 0.0 <= float(self.margin) <= 1.0:
            raise ValueError(f"margin must be in [0, 1], got {self.margin!r}")

    def as_dict(self) -> dict:
        """Plain dict, with the preprocessing version, for provenance files."""
        return {**asdict(self), "version": PREPROCESS_VERSION}

    @classmethod
    def params_keys(cls) -> dict[str, str]:
        """Field -> its ``params.yaml`` key: the slice preprocessing is ``slice.*``.

        >>> PreprocessConfig.params_keys()["size"]
        'slice.size'
        """
        return {f.name: f"slice.{f.name}" for f in fields(cls)}

    @classmethod
    def from_record(cls, record: Mapping) -> PreprocessConfig:
        """The settings in `record` (an :meth:`as_dict` or a ``params.yaml`` ``slice``
        section); absent ones keep their defaults, other entries are ignored.

        >>> PreprocessConfig.from_record({"size": 40, "version": 1, "n_slices": 9}).size
        40
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"preprocessing settings must be a mapping, got {record!r}")
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})

    @classmethod
    def from_params(cls, params: Mapping, *, skip: Iterable[str] = ()) -> PreprocessConfig:
        """The preprocessing of ``params.yaml``'s ``slice`` section (keys in `skip`
        keep their defaults).

        >>> PreprocessConfig.from_params({"slice": {"size": 96, "sensitivity": 0.5,
        ...     "min_fraction": 0.02, "margin": 0.05, "clahe": False, "denoise": False,
        ...     "sharpen": False}}).size
        96
        """
        from foramlib.params import read_keys

        return cls(**read_keys(params, cls.params_keys(), skip))


@dataclass(frozen=True)
class SliceInfo:
    """What preprocessing found: silhouette fraction and the crop box (r0, r1, c0, c1)."""

    fraction: float
    box: tuple[int, int, int, int]


def to_gray_float(image, name: str = "image") -> np.ndarray:
    """Any 2D image (gray, RGB, RGBA; integer or float) → grayscale in [0, 1].

    The image (RGB and RGBA through :func:`skimage.color.rgb2gray`) is stretched between
    its 0.5 and 99.5 percentiles, clipping outliers
    (:func:`foramlib.io.volumes.percentile_window` and
    :func:`~foramlib.io.volumes.stretch`).

    Returns
    -------
    numpy.ndarray
        **float64** in general; **float32** when the two percentiles coincide (an image
        almost all one value) and its minimum and maximum are the window instead. The
        dtype and every bit of the values are as they have always been: stored slices,
        the 3D match index and cached pipeline outputs are built through here.

    Raises
    ------
    PreprocessError
        For non-numeric data, wrong dimensions, images under 16×16 pixels, non-finite
        values, or a constant image.

    Examples
    --------
    >>> out = to_gray_float(np.tile(np.arange(32, dtype=np.uint8), (32, 1)))
    >>> out.dtype, out.min(), out.max()
    (dtype('float64'), np.float64(0.0), np.float64(1.0))
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "uifb":
        raise PreprocessError(f"{name}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = color.rgb2gray(
            arr[..., :3].astype(np.float64)
            / (np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0)
        )
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise PreprocessError(f"{name}: expected a 2-D image, got shape {arr.shape}")
    if min(arr.shape) < 16:
        raise PreprocessError(
            f"{name}: image of {arr.shape[0]}x{arr.shape[1]} pixels is too "
            f"small; at least 16x16 is needed"
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise PreprocessError(f"{name}: contains NaN or infinite values")
    try:
        lo, hi, minmax = percentile_window(arr, 0.5, 99.5, name)
    except VolumeError as exc:  # not empty, all finite (checked above): constant
        raise PreprocessError(
            f"{name}: image is blank (all pixels equal {float(arr.min()):g})"
        ) from exc
    # The percentiles (float64) stretched in float64, the min/max window in float32:
    # what this always did (NumPy 2 promotion), kept bit for bit.
    return stretch(arr, lo, hi, np.float32 if minmax else np.float64)


def otsu_threshold(values) -> float:
    """Otsu's threshold of an array of intensities (any shape).

    >>> t = otsu_threshold(np.r_[np.full(50, 0.1), np.full(50, 0.9)])
    >>> 0.1 <= t < 0.9
    True
    """
    arr = np.asarray(values, dtype=np.float32).ravel()
    if arr.size == 0 or arr.min() == arr.max():
        raise PreprocessError("cannot threshold a blank image (all values equal)")
    return float(filters.threshold_otsu(arr))


def sensitivity_threshold(threshold: float, floor: float, sensitivity: float) -> float:
    """Move an Otsu threshold with the sensitivity knob.

    ``t = floor + (threshold - floor) * 2 * (1 - sensitivity)``: sensitivity 0.5 keeps
    Otsu's value, 1 would lower it to the background `floor`, 0 doubles its distance.

    >>> sensitivity_threshold(0.5, 0.0, 0.5), sensitivity_threshold(0.5, 0.0, 0.75)
    (0.5, 0.25)
    """
    if not 0.0 < sensitivity < 1.0:
        raise ValueError(f"sensitivity must be in (0, 1), got {sensitivity!r}")
    return float(floor + (threshold - floor) * 2.0 * (1.0 - sensitivity))


def segment_silhouette(
    img: np.ndarray,
    sensitivity: float = 0.5,
    threshold: float | None = None,
    background: float | None = None,
    sigma: float = 1.0,
) -> np.ndarray:
    """Boolean silhouette of the fossil: walls plus everything they enclose.

    Parameters
    ----------
    img : 2-D float array in [0, 1]
    sensitivity : float
        See :func:`sensitivity_threshold`.
    threshold : float, optional
        Deviation threshold to start from (e.g. the volume's, from
        :func:`foreground_threshold`); default: the image's own.
    background : float, optional
        Level of the surroundings (air or matrix); default: the image border's median.
    sigma : float
        Gaussian smoothing (pixels) before thresholding. More smoothing gives a
        smoother outline of a faint fossil in a noisy matrix, at the cost of detail.

    Returns
    -------
    ndarray of bool
        Pixels departing from the background by more than the threshold, closed and
        hole-filled; specks smaller than a fifth of the largest component are dropped
        (noise, a mounting stem cut across). All False when nothing stands out.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    smooth = filters.gaussian(img, sigma=sigma, preserve_range=True)
    bg = background_level(smooth) if background is None else float(background)
    dev = np.abs(smooth - bg)
    if threshold is None:
        base = foreground_threshold(smooth, bg, crowded=True)
    else:
        base = float(threshold)
    floor = min(float(np.percentile(dev, 1.0)), base)
    mask = dev > sensitivity_threshold(base, floor, sensitivity)
    if not mask.any():
        return mask
    mask = morphology.closing(mask, morphology.disk(2))
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return mask


def crop_square(img: np.ndarray, mask: np.ndarray, margin: float = 0.05):
    """Crop a square around the mask's bounding box (plus `margin`), padding with 0.

    Returns the cropped image and the box ``(r0, r1, c0, c1)`` in input coordinates
    (it may extend past the image where padding was needed).
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PreprocessError("nothing to crop: the silhouette is empty")
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(r1 - r0, c1 - c0)
    side = int(np.ceil(side * (1.0 + 2.0 * margin))) + 2
    rc, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    br0, bc0 = int(np.floor(rc - side / 2.0)), int(np.floor(cc - side / 2.0))
    box = (br0, br0 + side, bc0, bc0 + side)
    out = np.zeros((side, side), dtype=img.dtype)
    sr0, sc0 = max(br0, 0), max(bc0, 0)
    sr1, sc1 = min(br0 + side, img.shape[0]), min(bc0 + side, img.shape[1])
    out[sr0 - br0 : sr1 - br0, sc0 - bc0 : sc1 - bc0] = img[sr0:sr1, sc0:sc1]
    return out, box


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a (padded-to-)square image to ``size × size`` with OpenCV.

    Non-square input is centred on a zero square first, so the aspect ratio is kept.
    """
    h, w = img.shape
    if h != w:
        side = max(h, w)
        square = np.zeros((side, side), dtype=img.dtype)
        square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = img
        img = square
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img.astype(np.float32), (size, size), interpolation=interp)


def resize_slice(image: np.ndarray, size: int) -> np.ndarray:
    """A stored slice at a model's input size: the ONE resize of training and serving.

    The training loader (:class:`foramlib.learn.loader.SliceBatches`) and the classifier
    (:class:`foramlib.inference.classify.Classifier`) both call it, so a model sees a slice at
    prediction exactly as it saw slices in training. The dtype is kept (uint8 in,
    uint8 out); ``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when growing, the image
    itself when it already has the size.

    Examples
    --------
    >>> img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    >>> resize_slice(img, 2).tolist()
    [[3, 5], [11, 13]]
    >>> resize_slice(img, 4) is img
    True
    """
    if image.shape == (size, size):
        return image
    shrink = size < image.shape[0] or size < image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def shrink_to_fit(image, max_side: int) -> tuple[np.ndarray, float]:
    """`image` shrunk, aspect kept, so that its longer side is at most `max_side`.

    Area averaging (``INTER_AREA``) on the image's own pixel type where OpenCV has it
    (uint8, uint16; anything else as float32). Images that fit, and images under 16
    pixels on their shorter side, come back as they are. A query or an upload is
    shrunk to its working resolution *first*, so that nothing after it (segmentation,
    filters, a search) pays for pixels it would average away.

    Parameters
    ----------
    image : array-like
        2-D (gray) or 3-D (colour, channels last).
    max_side : int
        The longest side kept, >= 16.

    Returns
    -------
    (ndarray, float)
        The image and the scale applied (1.0 when it was not shrunk).

    Examples
    --------
    >>> small, scale = shrink_to_fit(np.ones((4000, 1000), np.uint16), 1024)
    >>> small.shape, small.dtype.name, scale
    ((1024, 256), 'uint16', 0.256)
    >>> shrink_to_fit(np.ones((10, 10)), 16)[1]
    1.0
    >>> shrink_to_fit(np.ones((10, 10)), 4)
    Traceback (most recent call last):
    ...
    ValueError: max_side = 4 is invalid: expected an integer >= 16
    """
    if not isinstance(max_side, int | np.integer) or isinstance(max_side, bool) or max_side < 16:
        raise ValueError(f"max_side = {max_side!r} is invalid: expected an integer >= 16")
    arr = np.asarray(image)
    if arr.ndim < 2 or max(arr.shape[:2]) <= max_side or min(arr.shape[:2]) < 16:
        return arr, 1.0
    scale = max_side / max(arr.shape[:2])
    shape = tuple(max(16, round(s * scale)) for s in arr.shape[:2])
    src = arr if arr.dtype in (np.uint8, np.uint16) else arr.astype(np.float32)
    return cv2.resize(src, shape[::-1], interpolation=cv2.INTER_AREA), scale


def enhance(
    img: np.ndarray, *, clahe: bool = False, denoise: bool = False, sharpen: bool = False
) -> np.ndarray:
    """Optional contrast enhancement, denoising and sharpening of a [0, 1] image."""
    out = img.astype(np.float64)
    if denoise:
        out = restoration.denoise_tv_chambolle(out, weight=0.05)
    if clahe:
        out = exposure.equalize_adapthist(np.clip(out, 0, 1), clip_limit=0.01)
    if sharpen:
        out = filters.unsharp_mask(out, radius=1.5, amount=1.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def preprocess_slice(
    image,
    config: PreprocessConfig = PreprocessConfig(),
    *,
    threshold: float | None = None,
    background: float | None = None,
    normalized: bool = False,
    name: str = "image",
    sigma: float = 1.0,
):
    """Turn a section into the model's uint8 input; see the module docstring.

    Parameters
    ----------
    image : array-like
        2-D section (any dtype; RGB accepted unless `normalized`).
    config : PreprocessConfig
    threshold, background : float, optional
        The source volume's deviation threshold and background level (see
        :func:`foreground_threshold`), on the same [0, 1] scale as `image`.
    normalized : bool
        The image is already float in [0, 1] on the volume's scale (slices cut from
        a normalised volume); skip per-image normalisation so that the volume
        threshold applies.
    name : str
        Names the image in error messages.
    sigma : float
        Smoothing of the segmentation (see :func:`segment_silhouette`); the output's
        intensities are not smoothed.

    Returns
    -------
    out : ndarray of uint8, shape (size, size)
    info : SliceInfo

    Raises
    ------
    PreprocessError
        If nothing lies above the threshold at this sensitivity.
    """
    img = np.asarray(image, dtype=np.float32) if normalized else to_gray_float(image, name)
    mask = segment_silhouette(img, config.sensitivity, threshold, background, sigma)
    fraction = float(mask.mean())
    if fraction == 0.0:
        raise PreprocessError(
            f"{name}: no foreground at sensitivity {config.sensitivity}; try a higher sensitivity"
        )
    crop, box = crop_square(np.where(mask, img, 0.0).astype(np.float32), mask, config.margin)
    out = resize_square(crop, config.size)
    out = enhance(out, clahe=config.clahe, denoise=config.denoise, sharpen=config.sharpen)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8), SliceInfo(fraction, box)


def background_level(array: np.ndarray) -> float:
    """Median of the array's border (faces of a volume, edges of an image).

    The specimen sits inside the field of view, so the border is air or matrix.

    >>> v = np.full((8, 8, 8), 0.2, np.float32); v[2:6, 2:6, 2:6] = 1.0
    >>> round(background_level(v), 3)
    0.2
    """
    return float(np.median(_border_values(array)))


def _border_values(array) -> np.ndarray:
    """The values on the faces of a volume (the edges of an image), flattened."""
    a = np.asarray(array)
    return np.concatenate([np.take(a, [0, -1], axis=ax).ravel() for ax in range(a.ndim)])


def foreground_threshold(
    array: np.ndarray, background: float | None = None, *, crowded: bool = False
) -> float:
    """Otsu threshold on the deviation ``|value - background|`` of a (denoised) array.

    The fossil is whatever departs from its surroundings: bright calcite in air, but in
    a carbonate matrix also chambers infilled darker than the matrix. Otsu's method
    runs on the deviations above their median only, which turns a small fossil in a
    large field into a two-class problem instead of splitting the background's noise.

    Parameters
    ----------
    array : ndarray
        Image or volume, denoised.
    background : float, optional
        Level of the surroundings; default :func:`background_level`.
    crowded : bool
        Also handle a fossil that fills more than half of the field (a tight crop):
        when the median deviation stands out of the noise, the median is fossil, and
        the deviations above it would split the fossil's own dim and bright parts;
        Otsu then runs on every deviation. Single images use it; volumes do not, so
        that stored slices stay as they were cut.

    Raises
    ------
    PreprocessError
        If nothing stands out from the background.

    >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1.0
    >>> 0.0 < foreground_threshold(img) < 1.0
    True

    A disc filling most of a crop, with a bright core: by default only the core stands
    out; with `crowded`, the whole disc does.

    >>> yy, xx = np.mgrid[:32, :32]; r = np.hypot(yy - 15.5, xx - 15.5)
    >>> disc = np.where(r < 15, 0.5, 0.0) + np.where(r < 7, 0.5, 0.0)
    >>> float(foreground_threshold(disc, 0.0))
    0.5
    >>> foreground_threshold(disc, 0.0, crowded=True) < 0.5
    True
    """
    a = np.asarray(array, dtype=np.float32)
    bg = background_level(a) if background is None else float(background)
    dev = np.abs(a.ravel()[:: max(1, a.size // 400_000)] - bg)
    noise = noise_level(a)
    median = float(np.median(dev))
    crowded = crowded and median > CROWDED_FACTOR * noise
    upper = dev if crowded else dev[dev > median]
    if upper.size < 20:  # the fossil fills most of the field: use every pixel
        upper = dev
    if upper.max() <= 0:
        raise PreprocessError(f"nothing stands out from the background level {bg:g}")
    if upper.min() == upper.max():  # a clean two-level image
        return float(upper.max()) / 2.0
    t = otsu_threshold(upper)
    # Otsu splits anything, noise included: demand a signal well above the noise
    signal = float(np.median(upper[upper > t]))
    if signal < NOISE_FACTOR * noise:
        raise PreprocessError(
            f"nothing stands out from the background level {bg:g}: "
            f"contrast {signal:.3g} is within {NOISE_FACTOR}x the noise "
            f"({noise:.3g})"
        )
    return t


# Pure (smoothed) noise gives a contrast/noise ratio of ~3.2 by the measure below and
# the weakest virtual scan ~4.7; real fossils in air are far above both.
NOISE_FACTOR = 3.5
# Background deviations are |noise|, whose median is 0.67 of the noise level: a median
# deviation beyond 3 noise levels is fossil.
CROWDED_FACTOR = 3.0


def noise_level(array: np.ndarray) -> float:
    """Robust noise estimate: MAD of neighbour differences along the last axis / sqrt 2.

    Differences cancel smooth structure (rings, cupping, the specimen's interior), so
    the estimate is not fooled by artefacts the way the spread of the border is.

    >>> rng = np.random.default_rng(0)
    >>> round(float(noise_level(rng.normal(0, 0.1, (64, 64)))), 2)
    0.1
    """
    a = np.asarray(array, dtype=np.float32)
    d = np.diff(a, axis=-1).ravel()[:: max(1, a.size // 400_000)]
    return 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)


# Dense inclusions (metal mount, pyrite) are told from the fossil by how much denser they
# are than the fossil's own bright voxels; see remove_dense_inclusions.
DENSE_FACTOR = 2.2
# The fossil's level is this percentile of the voxels standing out of the noise: low
# enough that a mount (up to ~10 % of them) does not move it, high enough to sit in the
# walls rather than their partial-volume edges.
_FOSSIL_PERCENTILE = 90.0
# A voxel stands out of the noise when it is this many noise deviations above background.
_NOISE_DEVIATIONS = 4.0
# A faint fossil can have fewer voxels above the noise than its mount. Then the brighter
# of Otsu's two classes (on log deviations) is taken for the mount when it is a small
# part of the volume and its median this many times the other class's fossil level
# (virtual collection: 4.9-12x for mounts, at most 1.4x for fossils without one).
_DOMINANT_MINORITY = 0.005
_DOMINANT_RATIO = 3.0


def _fossil_level(deviations: np.ndarray, volume_size: int) -> float:
    """The fossil's level among deviations standing out of the noise (all > 0)."""
    logs = np.log(deviations)
    if logs.min() < logs.max():
        split = filters.threshold_otsu(logs)
        upper, lower = deviations[logs > split], deviations[logs <= split]
        lower_level = float(np.percentile(lower, _FOSSIL_PERCENTILE))
        if (
            upper.size < _DOMINANT_MINORITY * volume_size
            and float(np.median(upper)) > _DOMINANT_RATIO * lower_level
        ):
            return lower_level
    return float(np.percentile(deviations, _FOSSIL_PERCENTILE))


def dense_inclusion_mask(
    volume: np.ndarray, factor: float = DENSE_FACTOR, grow: int = 2
) -> np.ndarray:
    """Voxels of a volume much denser than the fossil: a metal mount, pyrite.

    On a smoothed copy, with ``bg`` the background level and ``noise`` the spread of the
    volume's border, the fossil's *level* is the 90th percentile of ``value - bg`` over
    the voxels more than four noise deviations above the background (its walls, not the
    air or matrix around them, which a thin-walled shell is mostly made of). Voxels
    above ``factor`` times that level are dense; the mask grows from them by `grow`
    voxels into voxels above the noise, to take the blurred rim of a mount along.
    Metal is ~3x and pyrite 2-3x as dense as calcite, while a fossil's walls, through
    partial volume, texture and cupping, reach up to about twice their 90th
    percentile. When a faint fossil has fewer voxels above the noise than its mount,
    the level is taken from the fossil's part only (see ``_fossil_level``).

    Parameters
    ----------
    volume : ndarray
        3-D volume (a 2-D image works the same way).
    factor : float
        How many times the fossil's level a voxel must exceed (> 1).
    grow : int
        Voxels added around the dense ones (>= 0).

    Returns
    -------
    ndarray of bool
        Same shape as `volume`; all False when nothing stands out.

    >>> v = np.zeros((32, 32, 32), np.float32); v[8:24, 8:24, 10:26] = 1.0
    >>> v[13:18, 13:18, 0:7] = 3.0  # a mount below the fossil
    >>> mask = dense_inclusion_mask(v)
    >>> bool(mask[15, 15, 3]), bool(mask[15, 15, 18])
    (True, False)
    """
    return _dense_inclusions(volume, factor, grow)[0]


def _dense_inclusions(volume, factor: float, grow: int) -> tuple[np.ndarray, float]:
    """:func:`dense_inclusion_mask` and the background level it measured."""
    if not factor > 1.0:
        raise ValueError(f"factor must be > 1, got {factor!r}")
    if not isinstance(grow, int | np.integer) or grow < 0:
        raise ValueError(f"grow must be an integer >= 0, got {grow!r}")
    smooth = ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), 1.0)
    border = _border_values(smooth)
    bg = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - bg)))
    deviation = smooth - bg
    standing_out = deviation > _NOISE_DEVIATIONS * noise  # all > 0, so logs exist
    values = deviation[standing_out]
    if values.size < 100:
        return np.zeros(smooth.shape, bool), bg
    dense = deviation > factor * _fossil_level(values, smooth.size)
    if grow and dense.any():
        dense = ndimage.binary_dilation(dense, iterations=int(grow)) & standing_out
    return dense, bg


def remove_dense_inclusions(
    volume: np.ndarray, factor: float | None = DENSE_FACTOR, grow: int = 2
) -> np.ndarray:
    """Replace voxels much denser than the fossil (metal mount, pyrite) by background.

    The voxels of :func:`dense_inclusion_mask` become the background level: a mount or
    pyrite would otherwise dominate intensity normalisation and the thresholds. If that
    would touch more than 2 % of the volume, the volume is returned unchanged (the
    estimate is not trustworthy). ``factor=None`` disables it.

    >>> v = np.zeros((32, 32, 32), np.float32); v[8:24, 8:24, 10:26] = 1.0
    >>> v[13:18, 13:18, 0:7] = 3.0
    >>> out = remove_dense_inclusions(v)
    >>> float(out[15, 15, :6].max()), float(out[15, 15, 18])
    (0.0, 1.0)
    """
    if factor is None:
        return volume
    if not factor > 1.0:
        raise ValueError(f"factor must be > 1 (or None to disable), got {factor!r}")
    vol = np.asarray(volume, dtype=np.float32)
    dense, bg = _dense_inclusions(vol, factor, grow)
    if not dense.any() or dense.mean() > 0.02:
        return vol
    out = vol.copy()
    out[dense] = bg
    return out


def remove_bright_class(img: np.ndarray, grow: int = 2) -> np.ndarray | None:
    """A section with its brightest class of foreground replaced by the background.

    A mounting stem or a dense inclusion (pyrite) cut across by a 2-D section is
    brighter than the fossil's walls, and it captures the segmentation: the fossil is
    cropped with it, or falls under a threshold the stem sets. In a volume
    :func:`remove_dense_inclusions` tells them apart by how much denser they are; a
    single section cannot (a fossil's bright walls in a grey matrix look the same), so
    this gives the *other reading* of the section, to be tried beside the image as it
    is: Otsu's method splits the pixels brighter than the background by more than
    the foreground threshold, and the upper class, grown by `grow` pixels, becomes
    background.

    Parameters
    ----------
    img : 2-D float array in [0, 1]
        As from :func:`to_gray_float`.
    grow : int
        Pixels added around the removed class (its blurred rim).

    Returns
    -------
    ndarray or None
        The new image (same shape), or None when there is nothing to split: no
        foreground, or fewer than 20 pixels above its threshold, or all of one value.

    >>> img = np.zeros((64, 64), np.float32); img[16:48, 16:48] = 0.3
    >>> img[4:10, 4:10] = 1.0  # a stem in the corner
    >>> out = remove_bright_class(img)
    >>> float(out[4:10, 4:10].max()), round(float(out[20:44, 20:44].min()), 2)
    (0.0, 0.3)
    """
    if grow < 0:
        raise ValueError(f"grow must be >= 0, got {grow!r}")
    g = np.asarray(img, dtype=np.float32)
    smooth = filters.gaussian(g, sigma=1.0, preserve_range=True)
    bg = background_level(smooth)
    try:
        t = foreground_threshold(smooth, bg, crowded=True)
    except PreprocessError:
        return None
    dev = smooth - bg
    bright = dev[dev > t]
    if bright.size < 20 or bright.min() == bright.max():
        return None
    dense = dev > otsu_threshold(bright)
    if grow:
        dense = ndimage.binary_dilation(dense, iterations=grow)
    return np.where(dense, np.float32(bg), g)


def bright_class_hides_fossil(img: np.ndarray, sensitivity: float = 0.5) -> bool:
    """Whether the section's brightest class hides a dimmer object from the segmentation.

    A mounting stem far brighter than the fossil sets the threshold, so the silhouette is
    the stem alone and the fossil beside it is read as background. That section, with
    :func:`remove_bright_class` applied, shows a silhouette mostly *outside* the first
    one (the hidden fossil), while a fossil that is its own brightest class leaves
    remnants inside its silhouette and specks of noise around it.

    Parameters
    ----------
    img : 2-D float array in [0, 1]
        As from :func:`to_gray_float`.
    sensitivity : float
        As for :func:`segment_silhouette`.

    Returns
    -------
    bool
        True when one connected part of the silhouette after removal, outside the first
        silhouette (grown by 2 % of the image side), has at least half its area.

    >>> img = np.zeros((64, 64), np.float32); img[4:12, 28:36] = 1.0  # a stem
    >>> img[30:54, 20:44] = 0.25  # a dimmer fossil below it
    >>> bright_class_hides_fossil(img)
    True
    >>> bright_class_hides_fossil(img[24:, :])  # the fossil alone
    False
    """
    g = np.asarray(img, dtype=np.float32)
    removed = remove_bright_class(g)
    if removed is None:
        return False
    try:
        first = segment_silhouette(g, sensitivity)
        second = segment_silhouette(removed, sensitivity)
    except PreprocessError:  # nothing stands out, before or after the removal
        return False
    grow = max(2, int(round(0.02 * max(g.shape))))
    outside = second & ~ndimage.binary_dilation(first, iterations=grow)
    # one object, not the specks of noise left where the whole fossil was removed
    labels, n = ndimage.label(outside)
    largest = np.bincount(labels.ravel())[1:].max() if n else 0
    return bool(largest >= 0.5 * first.sum())
