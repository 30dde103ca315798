"""The one percentile contrast stretch: `percentile_window` + `stretch`, and its callers.

`to_gray_float` feeds stored slices, the 3D match index and cached pipeline outputs, so
its result must not change by a single bit (nor its dtype); the "formula" tests below
pin each caller to the arithmetic it had before the stretch was shared.
"""

import numpy as np
import pytest

from foramlib.app.render import display_uint8
from foramlib.dataset.preprocess import PreprocessError, to_gray_float
from foramlib.io.volumes import (
    IntensityWindow,
    VolumeError,
    normalize_intensity,
    percentile_window,
    stretch,
)


def spike(n=1000, bulk=0.0, value=4.0, dtype=np.float64):
    """All `bulk` but one `value`: the 0.5 and 99.5 percentiles coincide."""
    arr = np.full(n, bulk, dtype=dtype)
    arr[n // 2] = value
    return arr


def images(seed=0):
    """A mix of ordinary, outlier-heavy, tiny-range and nearly uniform 2-D images."""
    rng = np.random.default_rng(seed)
    heavy = rng.normal(size=(48, 40))
    heavy[::17, ::13] *= 1e5
    return {
        "uniform_f32": rng.random((40, 48)).astype(np.float32),
        "heavy_f64": heavy,
        "tiny_range_f32": (1 + rng.random((32, 32)) * 1e-6).astype(np.float32),
        "uint8": rng.integers(0, 256, (64, 64), dtype=np.uint8),
        "uint16": rng.integers(0, 65536, (50, 70), dtype=np.uint16),
        "int16_negative": rng.integers(-3000, -100, (33, 31), dtype=np.int16),
        "spike_uint8": spike(32 * 32, 7, 9, np.uint8).reshape(32, 32),
        "spike_f32": spike(40 * 40, 0.25, -3.0, np.float32).reshape(40, 40),
    }


# ------------------------------------------------------------------ percentile_window


@pytest.mark.parametrize(
    ("arr", "low", "high", "expected"),
    [
        (np.arange(101.0), 0.5, 99.5, (0.5, 99.5, False)),
        (np.arange(101.0), 0, 100, (0.0, 100.0, False)),
        (np.array([0.0, 5.0, 10.0, 1000.0]), 0, 50, (0.0, 7.5, False)),
        (np.arange(201, dtype=np.uint8), 1.0, 99.5, (2.0, 199.0, False)),
        (spike(), 0.5, 99.5, (0.0, 4.0, True)),
        (spike(value=-2.0), 0.5, 99.5, (-2.0, 0.0, True)),
        (spike(bulk=3, value=9, dtype=np.int32), 0.5, 99.5, (3.0, 9.0, True)),
    ],
)
def test_percentile_window(arr, low, high, expected):
    window = percentile_window(arr, low, high)
    assert isinstance(window, IntensityWindow)
    assert tuple(window) == expected
    assert type(window.lo) is float and type(window.hi) is float


@pytest.mark.parametrize(
    ("arr", "error", "match"),
    [
        (np.zeros((0, 4)), VolumeError, r"^vol: is empty \(shape \(0, 4\)\); nothing to normalise"),
        (np.r_[1.0, np.nan, 3.0], VolumeError, r"^vol: contains NaN or infinite values"),
        (np.r_[1.0, np.inf], VolumeError, r"^vol: contains NaN or infinite values"),
        (np.full(5, 2.0), VolumeError, r"^vol: is constant \(every voxel equals 2\.0\)"),
        (np.full((3, 3), 4, np.int16), VolumeError, r"is constant \(every voxel equals 4\.0\)"),
    ],
)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
def test_percentile_window_refuses(arr, error, match):
    with pytest.raises(error, match=match):
        percentile_window(arr, name="vol")


@pytest.mark.parametrize(("low", "high"), [(-1, 50), (50, 50), (60, 40), (0, 101)])
def test_percentile_window_refuses_bad_percentiles(low, high):
    with pytest.raises(ValueError, match=f"low={low!r}, high={high!r}"):
        percentile_window(np.arange(10.0), low, high)


# ---------------------------------------------------------------------------- stretch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stretch_maps_window_and_clips(dtype):
    arr = np.array([-5, 0, 5, 10, 20], dtype=np.int16)
    out = stretch(arr, 0.0, 10.0, dtype)
    assert out.dtype == dtype
    assert out.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert arr.tolist() == [-5, 0, 5, 10, 20]  # the input is not touched


def test_stretch_works_in_the_dtype_it_is_given():
    arr = np.float32(1) + np.arange(64, dtype=np.float32) * np.float32(1e-7)
    lo, hi = float(arr[3]), float(arr[60])
    expected64 = np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0, 1)
    expected32 = np.clip((arr - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    assert stretch(arr, lo, hi, np.float64).tobytes() == expected64.tobytes()
    assert stretch(arr, lo, hi, np.float32).tobytes() == expected32.tobytes()


def test_stretch_of_a_zero_dimensional_array():
    assert float(stretch(np.array(5.0), 0.0, 10.0)) == 0.5


# ------------------------------------------------------------------ the three callers


@pytest.mark.parametrize("name", list(images()))
def test_normalize_intensity_is_the_shared_stretch(name):
    arr = images()[name]
    lo, hi, _ = percentile_window(arr)
    out = normalize_intensity(arr)
    assert out.dtype == np.float32
    assert out.tobytes() == stretch(arr, lo, hi, np.float32).tobytes()
    # and the arithmetic it always had
    old = (arr.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    assert out.tobytes() == np.clip(old, 0.0, 1.0).tobytes()


@pytest.mark.parametrize("name", list(images()))
def test_to_gray_float_is_the_shared_stretch(name):
    arr = images()[name]
    arr32 = arr.astype(np.float32)
    lo, hi, minmax = percentile_window(arr32)
    out = to_gray_float(arr)
    assert out.dtype == (np.float32 if minmax else np.float64)
    assert out.tobytes() == stretch(arr32, lo, hi, out.dtype).tobytes()


@pytest.mark.parametrize("name", list(images()))
def test_to_gray_float_keeps_its_old_arithmetic_bit_for_bit(name):
    """What to_gray_float computed before the stretch was shared (NumPy 2 promotion:
    float64 percentile scalars make a float64 result, the Python-float min/max a
    float32 one)."""
    arr = images()[name].astype(np.float32)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    old = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
    out = to_gray_float(arr)
    assert out.dtype == old.dtype
    assert out.tobytes() == old.tobytes()


def test_to_gray_float_dtype_follows_the_window():
    assert to_gray_float(images()["uint8"]).dtype == np.float64
    out = to_gray_float(images()["spike_uint8"])  # percentiles coincide: min/max window
    assert out.dtype == np.float32
    assert sorted(np.unique(out).tolist()) == [0.0, 1.0]


def test_to_gray_float_of_rgb_is_the_stretch_of_its_gray():
    from skimage import color

    rgb = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    gray = color.rgb2gray(rgb.astype(np.float64) / 255).astype(np.float32)
    lo, hi, _ = percentile_window(gray)
    assert to_gray_float(rgb).tobytes() == stretch(gray, lo, hi, np.float64).tobytes()
    assert to_gray_float(np.dstack([rgb, np.full((40, 40), 255, np.uint8)])).tobytes() == (
        to_gray_float(rgb).tobytes()
    )


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.full((20, 20), 0.25), r"^im: image is blank \(all pixels equal 0\.25\)$"),
        (np.full((20, 20, 3), 128, np.uint8), r"^im: image is blank \(all pixels equal "),
        (np.r_[np.nan, np.zeros(399)].reshape(20, 20), r"^im: contains NaN or infinite values$"),
        (np.zeros((8, 20)), r"^im: image of 8x20 pixels is too small"),
    ],
)
def test_to_gray_float_keeps_its_errors(image, match):
    with pytest.raises(PreprocessError, match=match):
        to_gray_float(image, "im")


@pytest.mark.parametrize("name", list(images()))
def test_display_uint8_is_the_shared_stretch(name):
    arr = images()[name].astype(np.float32)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    if hi <= lo:  # display's own rule: never refuse, widen by one grey level
        hi = lo + 1.0
    out = display_uint8(images()[name])
    assert out.dtype == np.uint8
    expected = np.round(stretch(arr, lo, hi, np.float64) * 255).astype(np.uint8)
    assert out.tobytes() == expected.tobytes()
    old = np.round(np.clip((arr - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert out.tobytes() == old.tobytes()


def test_display_uint8_agrees_with_the_pipeline_window_when_there_is_one():
    arr = images()["uint16"]
    lo, hi, minmax = percentile_window(arr.astype(np.float32))
    assert not minmax
    expected = np.round(stretch(arr.astype(np.float32), lo, hi, np.float64) * 255)
    assert display_uint8(arr).tolist() == expected.astype(np.uint8).tolist()


def test_display_uint8_never_refuses():
    assert display_uint8(np.zeros((0, 5))).shape == (0, 5)
    assert display_uint8(np.full((4, 4), 7.0)).tolist() == [[0] * 4] * 4
    spiked = display_uint8(spike(100, 0.0, 5.0).reshape(10, 10))
    assert sorted(np.unique(spiked).tolist()) == [0, 255]
