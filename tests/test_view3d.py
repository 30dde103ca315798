"""3D view of a section plane inside its specimen: geometry, figure layout, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from foramlib.dataset.slicing import Plane, extract_slice
from foramlib.viz import view3d


def _ball(shape=(32, 32, 32), radius=9.0, centre=None) -> np.ndarray:
    centre = (np.asarray(shape) - 1) / 2 if centre is None else np.asarray(centre)
    g = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(3)))
    noise = np.random.default_rng(0).normal(0, 0.01, shape)
    return (0.1 + 0.8 * (r <= radius) + noise).astype(np.float32)


@pytest.mark.parametrize(
    "normal, offset, angle",
    [((0, 0, 1), 0.0, 0.0), ((1, 2, 3), -4.5, 30.0), ((0.3, -0.9, 0.2), 7.0, 200.0)],
)
def test_plane_corners_lie_in_the_plane_and_form_a_square(normal, offset, angle):
    plane = Plane(normal, offset, angle)
    shape = (40, 32, 24)
    corners = view3d.plane_corners(plane, shape, half=10.0)
    centre = (np.asarray(shape) - 1) / 2
    n = np.asarray(plane.normal)
    assert corners.shape == (4, 3)
    np.testing.assert_allclose((corners - centre) @ n, offset, atol=1e-9)
    sides = np.linalg.norm(np.roll(corners, -1, axis=0) - corners, axis=1)
    np.testing.assert_allclose(sides, 20.0)
    np.testing.assert_allclose(corners.mean(axis=0), centre + offset * n)
    # the first side follows the section's columns (u, turned by the angle)
    u = (corners[1] - corners[0]) / 20.0
    assert abs(u @ n) < 1e-9


def test_plane_corners_default_size_and_bad_arguments():
    corners = view3d.plane_corners(Plane((1, 0, 0)), (20, 30, 40))
    assert np.ptp(corners[:, 1:], axis=0).max() == pytest.approx(40.0)  # half = 40 / 2
    with pytest.raises(ValueError, match="shape must have 3 entries"):
        view3d.plane_corners(Plane((1, 0, 0)), (20, 30))
    with pytest.raises(ValueError, match="half must be > 0, got -1"):
        view3d.plane_corners(Plane((1, 0, 0)), (20, 30, 40), half=-1)


@pytest.mark.parametrize("step", [1, 2])
def test_surface_mesh_of_a_ball_is_at_its_radius(step):
    vol = _ball(radius=9.0)
    verts, faces = view3d.surface_mesh(vol, step=step)
    assert faces.ndim == 2 and faces.shape[1] == 3 and len(faces) > 50
    r = np.linalg.norm(verts - 15.5, axis=1)
    assert abs(np.median(r) - 9.0) < 1.0 + step / 2


def test_surface_mesh_of_an_off_centre_ball_is_where_the_ball_is():
    vol = _ball(radius=6.0, centre=(10.0, 20.0, 16.0))
    verts, _ = view3d.surface_mesh(vol, step=2)
    np.testing.assert_allclose(verts.mean(axis=0), (10.0, 20.0, 16.0), atol=1.0)


def test_plane_figure_has_the_3d_view_and_one_panel_per_section():
    vol = _ball()
    plane = Plane((0.2, 0.5, 0.8), 2.0, 30.0)
    sec = extract_slice(vol, plane, 32)
    fig = view3d.plane_figure(
        vol, plane, title="virtual test", section=[("query", sec), ("match", sec)]
    )
    assert isinstance(fig, Figure)
    assert [ax.name for ax in fig.axes] == ["3d", "rectilinear", "rectilinear"]
    assert [ax.get_title() for ax in fig.axes[1:]] == ["query", "match"]
    title = fig.axes[0].get_title()
    assert max(len(line) for line in title.splitlines()) <= 36  # short lines: never cut off
    said = " ".join(title.splitlines())
    assert said == "the section: across axis 2 (tilted 34° from it), 2.0 voxels from the centre"
    assert fig.get_suptitle() == "virtual test"
    png = view3d.figure_png(fig, dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_plane_figure_without_sections_and_with_one_image():
    vol = _ball()
    alone = view3d.plane_figure(vol, Plane((0, 0, 1)))
    assert [ax.name for ax in alone.axes] == ["3d"]
    one = view3d.plane_figure(vol, Plane((0, 0, 1)), section=np.zeros((8, 8)))
    assert [ax.get_title() for ax in one.axes[1:]] == ["section"]


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((32, 32)), r"numeric 3-D array.*\(32, 32\)"),
        (np.zeros((2, 32, 32)), r"at least 4 voxels"),
        (np.array([["a"]]), r"numeric 3-D array"),
        (np.full((16, 16, 16), np.nan), r"NaN or infinite"),
        (np.full((16, 16, 16), 3.0), r"no surface to draw"),
    ],
)
def test_bad_volumes_are_value_errors(volume, message):
    with pytest.raises(ValueError, match=message):
        view3d.plane_figure(volume, Plane((0, 0, 1)))


def test_bad_plane_section_step_and_level():
    vol = _ball()
    with pytest.raises(ValueError, match="plane must be a foramlib.dataset.slicing.Plane"):
        view3d.plane_figure(vol, (0, 0, 1))
    with pytest.raises(ValueError, match=r"section 'q' must be a 2-D image, got shape \(4,\)"):
        view3d.plane_figure(vol, Plane((0, 0, 1)), section=[("q", np.zeros(4))])
    with pytest.raises(ValueError, match="step must be an integer >= 1, got 0"):
        view3d.surface_mesh(vol, step=0)
    with pytest.raises(ValueError, match="step 16 leaves too few voxels"):
        view3d.surface_mesh(vol, step=16)
    with pytest.raises(ValueError, match="no surface at level 5"):
        view3d.surface_mesh(vol, level=5.0)
