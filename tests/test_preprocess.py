"""Shared slice preprocessing: segmentation, crop, resize, enhancement, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from foramlib.dataset import preprocess as pp


def _ring(
    size=96, radius=30, wall=3, inside=0.0, background=0.0, wall_level=1.0, seed=0, noise=0.0
):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.full((size, size), background, np.float32)
    img[r < radius] = inside
    img[(r < radius) & (r > radius - wall)] = wall_level
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, img.shape).astype(np.float32)
    return img


def test_silhouette_fills_the_chambers_inside_the_wall():
    mask = pp.segment_silhouette(_ring())
    area = mask.sum()
    assert area == pytest.approx(np.pi * 30**2, rel=0.1)
    assert mask[48, 48]  # the hollow centre belongs to the fossil


def test_silhouette_in_low_contrast_matrix_with_dark_infill():
    # calcite wall barely brighter than the matrix, chambers infilled darker
    img = _ring(background=0.7, inside=0.4, wall_level=0.85, noise=0.02)
    mask = pp.segment_silhouette(img)
    assert mask[48, 48] and not mask[2, 2]
    assert mask.sum() > 0.75 * np.pi * 30**2  # at least the infilled chambers
    # the faint wall itself needs a higher sensitivity: that is what the knob is for
    wide = pp.segment_silhouette(img, sensitivity=0.7)
    assert wide.sum() == pytest.approx(np.pi * 30**2, rel=0.1)
    assert not wide[2, 2]


@pytest.mark.parametrize("radius", [40, 44])
def test_a_fossil_filling_most_of_a_crop_is_not_split_into_its_parts(radius):
    # a tight crop: a disc (fill 0.45) with bright walls in a lattice (0.85), noisy;
    # the median pixel is fossil, so the deviations above it are the disc's own
    yy, xx = np.mgrid[:96, :96]
    disc = np.hypot(yy - 48, xx - 48) < radius
    img = np.where(disc, 0.45, 0.05).astype(np.float32)
    img[disc & ((yy % 8 < 2) | (xx % 8 < 2))] = 0.85
    img += np.random.default_rng(1).normal(0, 0.04, img.shape).astype(np.float32)
    assert disc.mean() > 0.5
    mask = pp.segment_silhouette(img)
    assert (mask == disc).mean() > 0.97
    # the volume's path keeps the median split (stored slices stay as cut)
    smooth = pp.filters.gaussian(img, sigma=1.0, preserve_range=True)
    assert pp.foreground_threshold(smooth, 0.05) > pp.foreground_threshold(
        smooth, 0.05, crowded=True
    )


def test_small_specks_and_noise_are_dropped():
    img = _ring(radius=25)
    img[5:8, 5:8] = 1.0  # a speck: a stem cut across, or dust
    mask = pp.segment_silhouette(img)
    assert not mask[6, 6]


@pytest.mark.parametrize("low, high", [(0.3, 0.7), (0.2, 0.8)])
def test_sensitivity_moves_the_threshold_monotonically(low, high):
    # a fossil with a faint outer rim: higher sensitivity takes more of it
    img = _ring(radius=30)
    yy, xx = np.mgrid[:96, :96]
    rim = (np.hypot(yy - 48, xx - 48) < 38) & (np.hypot(yy - 48, xx - 48) >= 30)
    img[rim] = 0.25
    strict = pp.segment_silhouette(img, sensitivity=low, threshold=0.5)
    loose = pp.segment_silhouette(img, sensitivity=high, threshold=0.5)
    assert loose.sum() > strict.sum()
    assert np.all(loose[strict])


def test_preprocess_slice_crops_centres_and_resizes():
    img = np.zeros((200, 120), np.float32)
    img[20:60, 10:50] = 1.0  # off-centre square fossil
    out, info = pp.preprocess_slice(img, pp.PreprocessConfig(size=64, margin=0.0))
    assert out.shape == (64, 64) and out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=1) > 128)
    cols = np.flatnonzero(out.max(axis=0) > 128)
    # the square fills the frame (up to the 2-pixel crop border) and is centred
    assert rows[0] <= 4 and rows[-1] >= 59 and cols[0] <= 4 and cols[-1] >= 59
    assert info.fraction == pytest.approx(1600 / 24000, rel=0.15)


def test_background_outside_the_silhouette_is_zeroed():
    img = _ring(background=0.6, inside=0.45, wall_level=1.0)
    img[:10, :10] = 0.0  # something darker than the infill elsewhere in the field
    out, _ = pp.preprocess_slice(img, pp.PreprocessConfig(size=64, margin=0.2))
    assert out[0, 0] == 0 and out[-1, -1] == 0
    assert out[32, 32] > 0  # infilled chamber kept


@pytest.mark.parametrize("option", ["clahe", "denoise", "sharpen"])
def test_enhancement_options_change_the_image_and_keep_its_range(option):
    img = _ring(noise=0.05, inside=0.3)
    base, _ = pp.preprocess_slice(img, pp.PreprocessConfig(size=64))
    out, _ = pp.preprocess_slice(img, pp.PreprocessConfig(size=64, **{option: True}))
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert np.abs(out.astype(int) - base.astype(int)).mean() > 0.5


def test_rgb_and_uint16_uploads_are_accepted():
    gray = _ring()
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    u16 = (gray * 60000).astype(np.uint16)
    a, _ = pp.preprocess_slice(rgb, pp.PreprocessConfig(size=32))
    b, _ = pp.preprocess_slice(u16, pp.PreprocessConfig(size=32))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((64, 64)), "blank"),
        (np.full((64, 64), 7.0), "blank"),
        (np.ones((8, 64)), "too small"),
        (np.ones((4, 4, 4, 4)), "expected a 2-D image"),
        (np.array([["a", "b"]]), "unsupported pixel type"),
        (np.where(np.eye(64) > 0, np.nan, 1.0), "NaN or infinite"),
    ],
)
def test_bad_images_get_specific_errors(image, match):
    with pytest.raises(pp.PreprocessError, match=match):
        pp.preprocess_slice(image, name="upload.png")


def test_no_foreground_at_low_sensitivity_is_an_error():
    img = _ring()
    with pytest.raises(pp.PreprocessError, match="no foreground at sensitivity 0.01"):
        pp.preprocess_slice(
            img,
            pp.PreprocessConfig(sensitivity=0.01),
            threshold=0.9,
            background=0.0,
            normalized=True,
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=8), "size must be an integer >= 16"),
        (dict(sensitivity=1.0), "sensitivity must be in"),
        (dict(min_fraction=1.5), "min_fraction must be in"),
        (dict(margin=-0.1), "margin must be in"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pp.PreprocessConfig(**kwargs)


def test_config_records_the_preprocessing_version():
    assert pp.PreprocessConfig().as_dict()["version"] == pp.PREPROCESS_VERSION


def test_dense_inclusions_are_removed_but_the_fossil_is_not():
    rng = np.random.default_rng(1)
    vol = rng.normal(0, 0.05, (40, 40, 40)).astype(np.float32)
    vol[10:30, 10:30, 15:25] += 1.0  # fossil
    vol[18:22, 18:22, 0:10] = 3.0  # metal stem
    out = pp.remove_dense_inclusions(vol)
    assert out[20, 20, 5] < 0.5
    np.testing.assert_array_equal(out[10:30, 10:30, 15:25], vol[10:30, 10:30, 15:25])


def test_dense_removal_refuses_to_eat_the_fossil():
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = 1.0
    vol[5:15, 5:15, 9:11] = 3.0  # a bright structure 20% of the test: not a mount
    np.testing.assert_array_equal(pp.remove_dense_inclusions(vol, factor=1.5), vol)
    with pytest.raises(ValueError, match="factor must be > 1"):
        pp.remove_dense_inclusions(vol, factor=0.5)


def _shell_and_rod(rng, *, n=64, radius=22, wall=1.0, noise=0.03, rod_radius=0):
    """A thin-walled shell mostly filled with air, split by a septum, its walls' density
    varying by ~15 %, with a metal rod (3x calcite) below it when `rod_radius` > 0.

    Returns the volume, the wall voxels more than 4 voxels from the rod, and the rod."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) - (n - 1) / 2
    r = np.sqrt(x**2 + y**2 + z**2)
    texture = 1 + 2.5 * ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 2.0)
    walls = (np.abs(r - radius) < 0.9) | ((np.abs(x) < 0.7) & (r < radius))
    vol = np.where(walls, wall * texture, 0.0).astype(np.float32)
    rod = ((x - 2) ** 2 + (y + 1) ** 2 < rod_radius**2) & (z < -radius - 3)
    vol[rod] = 3.0
    vol = ndimage.gaussian_filter(vol, 0.7) + rng.normal(0, noise, vol.shape)
    far = ndimage.distance_transform_edt(~rod) > 4
    return vol.astype(np.float32), walls & far, rod


@pytest.mark.parametrize("noise", [0.03, 0.06])
@pytest.mark.parametrize("wall", [1.0, 0.3, 0.15])
@pytest.mark.parametrize("rod_radius", [0, 3])
def test_thin_walls_are_not_taken_for_dense_inclusions(wall, noise, rod_radius):
    """Most voxels brighter than the background of an air-filled shell are noise: the
    fossil's level comes from its walls, so they are kept, and a rod is still removed
    with its blurred rim (the rule before measured the noise and ate wall voxels)."""
    vol, walls, rod = _shell_and_rod(
        np.random.default_rng(0), wall=wall, noise=noise, rod_radius=rod_radius
    )
    out = pp.remove_dense_inclusions(vol)
    assert not pp.dense_inclusion_mask(vol)[walls].any()
    np.testing.assert_array_equal(out[walls], vol[walls])
    if rod_radius:
        assert pp.dense_inclusion_mask(vol)[rod].all()
        rim = ndimage.binary_dilation(rod, iterations=2)
        assert out[rim].max() < 0.5 * wall  # no bright tube left around the rod
    else:
        np.testing.assert_array_equal(out, vol)


@pytest.mark.parametrize("radius", [6, 8])
def test_a_mount_outnumbering_a_faint_fossil_is_still_removed(radius):
    """A small faint fossil has fewer voxels above the noise than its mount, so their
    90th percentile lies in the mount; the mount is then told apart as the dense
    minority of the bright voxels."""
    vol, walls, rod = _shell_and_rod(
        np.random.default_rng(1), n=96, radius=radius, wall=0.1, rod_radius=4
    )
    assert rod.sum() > walls.sum()
    mask = pp.dense_inclusion_mask(vol)
    assert mask[rod].all() and not mask[walls].any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(factor=1.0), "factor must be > 1, got 1.0"),
        (dict(grow=-1), "grow must be an integer >= 0, got -1"),
        (dict(grow=1.5), "grow must be an integer >= 0, got 1.5"),
    ],
)
def test_dense_inclusion_mask_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pp.dense_inclusion_mask(np.zeros((8, 8, 8), np.float32), **kwargs)


def test_a_blank_volume_has_no_dense_inclusions():
    vol = np.random.default_rng(2).normal(0, 0.05, (32, 32, 32)).astype(np.float32)
    assert not pp.dense_inclusion_mask(vol).any()
    np.testing.assert_array_equal(pp.remove_dense_inclusions(vol), vol)


def _faint_ring_and_stem(rng):
    """A faint ring fossil in noise, and a metal stem cut across in a corner."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 52, xx - 50)
    img = np.where((r > 16) & (r < 22), 0.25, 0.0) + rng.normal(0, 0.02, (96, 96))
    img[4:14, 80:92] = 1.0
    return np.clip(img, 0, 1).astype(np.float32), r < 22


def test_removing_the_bright_class_frees_the_fossil_from_a_stem():
    img, fossil = _faint_ring_and_stem(np.random.default_rng(3))
    as_given = pp.segment_silhouette(img)
    assert as_given[4:14, 80:92].all() and not as_given[fossil].any()  # the stem won
    out = pp.remove_bright_class(img)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out[2:16, 78:94].max() < 0.1  # the stem and its rim are background now
    np.testing.assert_array_equal(out[fossil], img[fossil])
    sil = pp.segment_silhouette(out)
    assert not sil[:20, 75:].any()
    iou = (sil & fossil).sum() / (sil | fossil).sum()
    assert iou > 0.85, iou


@pytest.mark.parametrize(
    "image",
    [np.zeros((32, 32), np.float32), np.pad(np.ones((2, 2), np.float32), 15)],  # blank; a dot
)
def test_nothing_to_remove_gives_none(image):
    assert pp.remove_bright_class(image) is None


def test_bright_class_removal_validates_grow():
    img, _ = _faint_ring_and_stem(np.random.default_rng(3))
    with pytest.raises(ValueError, match="grow must be >= 0, got -1"):
        pp.remove_bright_class(img, grow=-1)


def _bright_walled_fossil(rng):
    """A ring fossil that is itself the brightest class, in noise."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    img = np.where((r > 16) & (r < 22), 0.8, 0.1) + rng.normal(0, 0.03, (96, 96))
    return np.clip(img, 0, 1).astype(np.float32)


def _bright_blob_on_a_fossil(rng):
    """A dense inclusion inside a fossil: both in one silhouette."""
    img = _bright_walled_fossil(rng) * 0.4
    img[44:52, 44:52] = 1.0
    return img


@pytest.mark.parametrize(
    "make,hidden",
    [
        (lambda rng: _faint_ring_and_stem(rng)[0], True),  # the stem alone is segmented
        (_bright_walled_fossil, False),  # removal leaves specks of noise around it
        (_bright_blob_on_a_fossil, False),  # the fossil was in the first silhouette
        (lambda rng: np.zeros((32, 32), np.float32), False),  # nothing at all
    ],
)
def test_a_stem_hiding_the_fossil_is_told_apart(make, hidden):
    assert pp.bright_class_hides_fossil(make(np.random.default_rng(5))) is hidden


def test_more_smoothing_gives_a_faint_fossil_a_cleaner_outline():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:128, :128]
    disc = np.hypot(yy - 64, xx - 60) < 30
    # darker than the matrix by 0.6 of the noise level
    img = np.clip(0.5 + np.where(disc, -0.06, 0.0) + rng.normal(0, 0.1, disc.shape), 0, 1)
    ious = []
    for sigma in (1.0, 2.7):
        sil = pp.segment_silhouette(img.astype(np.float32), sigma=sigma)
        ious.append((sil & disc).sum() / (sil | disc).sum())
    assert ious[1] > ious[0] + 0.03 and ious[1] > 0.9, ious
    out, _ = pp.preprocess_slice(img, pp.PreprocessConfig(size=64), sigma=2.7)
    assert out.shape == (64, 64)
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        pp.segment_silhouette(img, sigma=0)


@pytest.mark.parametrize(
    ("shape", "dtype", "out_shape", "out_dtype"),
    [
        ((3000, 1500), np.uint8, (1024, 512), np.uint8),
        ((1500, 3000), np.uint16, (512, 1024), np.uint16),
        ((2048, 2048, 3), np.uint8, (1024, 1024, 3), np.uint8),
        ((2000, 100), np.float64, (1024, 51), np.float32),
        ((1200, 1000), bool, (1024, 853), np.float32),
    ],
)
def test_shrink_to_fit_keeps_aspect_and_pixel_type(shape, dtype, out_shape, out_dtype):
    image = np.ones(shape, dtype)
    out, scale = pp.shrink_to_fit(image, 1024)
    assert out.shape == out_shape and out.dtype == out_dtype
    assert scale == pytest.approx(1024 / max(shape[:2]))
    assert float(out.mean()) == pytest.approx(1.0)  # area averaging keeps the level


def test_shrink_to_fit_averages_areas():
    image = np.zeros((64, 64), np.uint8)
    image[::2] = 200  # stripes one pixel wide: averaged, not aliased
    out, _ = pp.shrink_to_fit(image, 32)
    assert out.shape == (32, 32) and np.all(out == 100)


@pytest.mark.parametrize("shape", [(500, 400), (1024, 1024), (5000, 12)])
def test_shrink_to_fit_leaves_what_fits_or_is_too_thin(shape):
    image = np.ones(shape, np.uint16)
    out, scale = pp.shrink_to_fit(image, 1024)
    assert out is image and scale == 1.0


@pytest.mark.parametrize("max_side", [0, 15, 100.0, True, None])
def test_shrink_to_fit_refuses_a_bad_side(max_side):
    with pytest.raises(ValueError, match=rf"max_side = {max_side!r} is invalid"):
        pp.shrink_to_fit(np.ones((64, 64)), max_side)
