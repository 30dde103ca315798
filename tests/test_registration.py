"""2D/3D registration of a section image in a volume, on small synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from foramlib.dataset.slicing import Plane, extract_slice, plane_axes
from foramlib.matching import registration
from foramlib.matching.registration import SectionPose, make_template, pose_scores, register
from foramlib.matching.search import plane_error


@pytest.fixture(scope="module")
def volume():
    """A 40³ ball filled with smooth random structure (no symmetry to confuse poses)."""
    rng = np.random.default_rng(3)
    texture = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    z, y, x = np.mgrid[:40, :40, :40] - 19.5
    ball = (x**2 + y**2 + z**2) < 15**2
    return np.where(ball, 0.5 + 4.0 * texture, 0.0).astype(np.float32)


def _pose_of(plane: Plane, shape, size: int) -> SectionPose:
    """The pose of a section cut by ``extract_slice(volume, plane, size)``, with the
    image centre as the reference point and one voxel per pixel."""
    centre = (np.asarray(shape, np.float64) - 1.0) / 2.0
    u, v = plane_axes(plane.normal, plane.angle)
    return SectionPose(centre + plane.offset * np.asarray(plane.normal), np.stack([u, v]), 1.0)


def _template(image, size, sigma=1.5):
    mid = (image.shape[0] - 1) / 2.0
    sil = np.abs(image) > 0.05
    return make_template(image, sil, (mid, mid), size, sigma)


def _angle(a, b) -> float:
    return plane_error(a, b)[0]


@pytest.mark.parametrize(
    "normal,offset,angle",
    [((0, 0, 1), 0.0, 0.0), ((0.3, -0.5, 0.8), 2.5, 40.0), ((1, 0, 0), -3.0, 250.0)],
)
def test_pose_plane_round_trip(normal, offset, angle):
    plane = Plane(normal, offset, angle)
    back = _pose_of(plane, (40, 40, 40), 32).plane((19.5, 19.5, 19.5))
    assert np.allclose(back.normal, plane.normal)
    assert back.offset == pytest.approx(offset)
    assert (back.angle - angle + 180) % 360 - 180 == pytest.approx(0.0, abs=1e-9)


def test_moved_steps():
    pose = _pose_of(Plane((0, 0, 1), 1.0, 0.0), (40, 40, 40), 32)
    same = pose.moved(np.zeros(7))
    assert np.allclose(same.axes, pose.axes) and np.allclose(same.origin, pose.origin)
    tilted = pose.moved(np.array([np.deg2rad(10), 0, 0, 0, 0, 0, 0]))
    assert _angle(tilted.normal, pose.normal) == pytest.approx(10.0)
    assert np.allclose(tilted.origin, pose.origin)  # tilts pivot on the reference point
    turned = pose.moved(np.array([0, 0, np.deg2rad(30), 0, 0, 0, 0]))
    assert np.allclose(turned.normal, pose.normal)
    assert float(turned.axes[0] @ pose.axes[0]) == pytest.approx(np.cos(np.deg2rad(30)))
    shifted = pose.moved(np.array([0, 0, 0, 0, 0, 2.0, np.log(1.5)]))
    assert np.allclose(shifted.origin - pose.origin, 2.0 * pose.normal)
    assert shifted.scale == pytest.approx(1.5)


def test_sampling_matches_extract_slice(volume):
    plane = Plane((0.2, 0.4, 0.9), 1.5, 30.0)
    section = extract_slice(volume, plane, size=32, cval=0.0)
    t = _template(section, 32)
    pose = _pose_of(plane, volume.shape, 32)
    sampled = registration.sample_section(volume, 0.0, pose, t)
    # cv2.remap's float32 arithmetic: equal to ~1e-5 of the values (up to ~2 here)
    assert np.allclose(sampled, section, atol=1e-4)
    texture, intensity = pose_scores(volume, 0.0, [pose], t)
    assert texture[0] > 0.999 and intensity[0] > 0.999


def test_opencv_and_scipy_sampling_agree_inside_the_volume(volume):
    # float32 volumes go through cv2.remap, others through ndimage.map_coordinates
    rng = np.random.default_rng(0)
    t = _template(extract_slice(volume, Plane((0, 0, 1), 0.0, 0.0), size=36), 24)
    rot = np.linalg.qr(rng.normal(size=(6, 3, 3)))[0]
    origin = 19.5 + rng.normal(0, 2, (6, 3))
    scale = rng.uniform(1.0, 1.5, 6)
    fast = registration.batch_scores(volume, 0.0, origin, rot[:, :2], scale, t)
    exact = registration.batch_scores(volume.astype(np.float64), 0.0, origin, rot[:, :2], scale, t)
    assert np.allclose(fast, exact, atol=1e-4)
    # some points lie outside the volume, where both take cval
    pts = origin[:, None] + t.offsets.T[None] @ (rot[:, :2] * scale[:, None, None])
    assert ((pts < 0) | (pts > 39)).any()
    # more points a pose than OpenCV takes in one map side (32767)
    g = np.linspace(-30, 30, 190)
    dy, dx = np.meshgrid(g, g, indexing="ij")
    grid = np.stack([dx.ravel(), dy.ravel()])
    args = (origin[:2], rot[:2, :2], scale[:2], grid)
    big = registration.sample_grid(volume, 0.0, *args)
    assert big.shape == (2, 190 * 190)
    assert np.allclose(
        big, registration.sample_grid(volume.astype(np.float64), 0.0, *args), atol=1e-4
    )


def test_register_recovers_a_perturbed_pose(volume):
    plane = Plane((0.3, -0.2, 0.93), 2.0, 75.0)
    section = extract_slice(volume, plane, size=40, cval=0.0)
    truth = _pose_of(plane, volume.shape, 40)
    templates = [_template(section, 20, 2.0), _template(section, 40, 1.5)]
    # 7° tilt, 6° turn, 1.5 voxels off the plane and sideways, 6 % too large
    start = truth.moved(
        np.array([np.deg2rad(5), np.deg2rad(-5), np.deg2rad(6), 1.0, -1.0, 1.5, 0.06])
    )
    before = pose_scores(volume, 0.0, [start], templates[-1])[0][0]
    pose, score, evals = register(volume, 0.0, start, templates)
    assert score > before and evals > 14
    assert _angle(pose.normal, truth.normal) < 1.0
    assert np.linalg.norm(pose.origin - truth.origin) < 0.5
    assert pose.scale == pytest.approx(1.0, abs=0.02)
    got = pose.plane((19.5, 19.5, 19.5))
    assert abs((got.angle - plane.angle + 180) % 360 - 180) < 1.0


def test_register_respects_max_evals(volume):
    plane = Plane((0, 0, 1), 0.0, 0.0)
    section = extract_slice(volume, plane, size=32, cval=0.0)
    start = _pose_of(plane, volume.shape, 32).moved(np.array([0.1, 0, 0, 0, 0, 0, 0]))
    _, _, evals = register(volume, 0.0, start, [_template(section, 16)], max_evals=20)
    assert evals <= 20 + 14 + len(registration.GRADIENT_MOVES)


def test_register_many_runs_each_start_as_register_would(volume):
    # two volume objects (the second a mirror image), starts of both interleaved: the
    # lock step must neither mix them up nor let one start's search change another's
    mirror = np.ascontiguousarray(volume[::-1])
    plane = Plane((0.3, -0.2, 0.93), 2.0, 75.0)
    templates = [
        _template(extract_slice(volume, plane, size=40, cval=0.0), n, s)
        for n, s in ((20, 2.0), (40, 1.5))
    ]
    truth = _pose_of(plane, volume.shape, 40)
    rng = np.random.default_rng(5)
    starts = [truth.moved(rng.normal(0, [0.1, 0.1, 0.1, 1, 1, 1, 0.05])) for _ in range(5)]
    volumes = [volume, mirror, volume, mirror, volume]
    together = registration.register_many(volumes, [0.0] * 5, starts, templates, min_step=0.25)
    for vol, start, (pose, score, evals) in zip(volumes, starts, together, strict=True):
        alone, alone_score, alone_evals = register(vol, 0.0, start, templates, min_step=0.25)
        # the same search; cv2.remap rounds a point's value by where it falls in the
        # batch's map (~1e-6)
        assert evals == alone_evals
        assert score == pytest.approx(alone_score, abs=1e-5)
        assert np.allclose(pose.origin, alone.origin, atol=1e-4)
        assert np.allclose(pose.axes, alone.axes, atol=1e-4)
    # the searches differ: some stop on the evaluation limit, some converge first
    assert len({evals for _, _, evals in together}) > 1
    assert together[0][1] > 0.9 and together[1][1] < together[0][1]


def test_register_many_needs_a_volume_per_start(volume):
    t = _template(extract_slice(volume, Plane((0, 0, 1), 0.0, 0.0), size=32), 16)
    start = _pose_of(Plane((0, 0, 1), 0.0, 0.0), volume.shape, 32)
    assert registration.register_many([], [], [], [t]) == []
    with pytest.raises(ValueError, match="2 starts, 1 volumes, 2 cvals"):
        registration.register_many([volume], [0.0, 0.0], [start, start], [t])


@pytest.mark.parametrize("shape,sigma", [((3, 32, 32), 2.0), ((5, 64, 64), 1.5), ((20, 24), 3.0)])
def test_high_pass_is_gaussian_and_independent_of_the_batch(shape, sigma):
    images = np.random.default_rng(2).random(shape).astype(np.float32)
    lead = (0,) * (len(shape) - 2)
    expected = images - ndimage.gaussian_filter(images, (*lead, sigma, sigma), truncate=3.0)
    out = registration._highpass(images, sigma)
    assert out.shape == images.shape
    assert np.allclose(out, expected, atol=1e-6)
    if len(shape) == 3:  # an image's result does not depend on the others beside it
        assert np.array_equal(out[1], registration._highpass(images[1:2], sigma)[0])


@pytest.mark.parametrize(
    "image,sil,size,msg",
    [
        (np.ones((10, 12)), np.ones((10, 12), bool), 8, "square"),
        (np.ones((12, 12)), np.ones((12, 12), bool), 4, "size must be >= 8"),
        (np.ones((12, 12)), np.zeros((12, 12), bool), 8, "fewer than 8"),
    ],
)
def test_template_validation(image, sil, size, msg):
    with pytest.raises(ValueError, match=msg):
        make_template(image, sil, (5.5, 5.5), size, 1.0)


def test_template_ignores_pixels_outside_the_image():
    img = np.ones((16, 16), np.float32)
    img[:, :4] = np.nan  # a query cropped by the image edge
    t = make_template(img, np.ones((16, 16), bool), (7.5, 7.5), 16, 1.0)
    assert t.valid.reshape(16, 16)[:, :4].sum() == 0
    assert t.valid.sum() == 16 * 12 and t.inside.sum() == 16 * 12
