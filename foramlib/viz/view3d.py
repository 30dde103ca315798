"""Where a section sits in its specimen: a 3D view of the plane inside the volume.

:func:`plane_figure` draws the specimen's surface (an isosurface by marching cubes of
a smoothed, downsampled copy, at the fossil's foreground level) with the section
plane as a translucent square, and beside it the section itself (and the query, if
given). It is plain matplotlib (works headless with the Agg backend, nothing loaded
from the internet), for notebooks, the book and the dashboard (:func:`figure_png`).

Coordinates are voxel indices in the volume's array order, as for
:class:`foramlib.dataset.slicing.Plane`: the plane passes through ``centre + offset * normal``
where ``centre`` is the middle of the array.

Examples
--------
>>> from foramlib.dataset.slicing import Plane
>>> corners = plane_corners(Plane((0, 0, 1), offset=3.0), (32, 32, 32), half=10)
>>> np.round(corners[:, 2], 6).tolist()  # all four at z = 15.5 + 3
[18.5, 18.5, 18.5, 18.5]
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from skimage.measure import marching_cubes
from skimage.transform import downscale_local_mean

from foramlib.dataset.preprocess import DENSE_FACTOR
from foramlib.dataset.slicing import Plane, plane_axes
from foramlib.dataset.slicing import prepare_volume as prepare_slicing_volume

__all__ = ["plane_corners", "surface_mesh", "plane_figure", "plane_words", "figure_png"]

SURFACE_COLOUR = (0.80, 0.68, 0.48)
PLANE_COLOUR = (0.10, 0.45, 0.85)
PLANE_TILES = 16  # the plane is drawn as 16 x 16 squares (for depth sorting)


def _check_volume(volume) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or vol.dtype.kind not in "uifb" or min(vol.shape) < 4:
        raise ValueError(
            f"volume must be a numeric 3-D array of at least 4 voxels a side, "
            f"got {vol.dtype} {vol.shape}"
        )
    vol = vol.astype(np.float32)
    if not np.isfinite(vol).all():
        raise ValueError("volume contains NaN or infinite values")
    return vol


def plane_corners(plane: Plane, shape, half: float | None = None) -> np.ndarray:
    """The four corners (4, 3) of the plane's square, in voxel coordinates.

    The square is centred on ``centre + offset * normal``, its sides follow the
    section's in-plane axes (:func:`foramlib.dataset.slicing.plane_axes`, turned by the plane's
    angle); `half` is half its side (default: half the volume's largest edge).
    """
    shape = np.asarray(shape, np.float64)
    if shape.shape != (3,):
        raise ValueError(f"shape must have 3 entries, got {tuple(shape)}")
    half = float(shape.max() / 2 if half is None else half)
    if not half > 0:
        raise ValueError(f"half must be > 0, got {half!r}")
    u, v = plane_axes(plane.normal, plane.angle)
    c = (shape - 1) / 2 + plane.offset * np.asarray(plane.normal)
    return np.stack([c - half * u - half * v, c + half * u - half * v,
                     c + half * u + half * v, c - half * u + half * v])  # fmt: skip


def surface_mesh(
    volume,
    *,
    level: float | None = None,
    step: int = 2,
    smooth_sigma: float = 0.8,
    dense_factor: float | None = DENSE_FACTOR,
):
    """Triangle mesh of the specimen's surface, in the volume's voxel coordinates.

    The volume is averaged down by `step` along each axis and prepared as for slicing
    (:func:`foramlib.dataset.slicing.prepare_volume`: smoothed by `smooth_sigma`, dense
    inclusions removed, normalised); the surface is where its deviation from the
    background level crosses `level` (default: the foreground threshold slicing uses,
    :func:`foramlib.dataset.preprocess.foreground_threshold`).

    Returns
    -------
    verts : ndarray (n, 3)
    faces : ndarray (m, 3) of int

    Raises
    ------
    ValueError
        For a volume that is not a numeric 3-D array, a bad `step`, or a volume in
        which nothing stands out from the background.
    """
    vol = _check_volume(volume)
    if not isinstance(step, int | np.integer) or step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step!r}")
    small = downscale_local_mean(vol, (step,) * 3) if step > 1 else vol
    if min(small.shape) < 4:
        raise ValueError(f"step {step} leaves too few voxels of a {vol.shape} volume")
    try:
        data, background, threshold, _ = prepare_slicing_volume(
            small, smooth_sigma=smooth_sigma, dense_factor=dense_factor, name="volume"
        )
    except ValueError as exc:  # SliceError, or a constant volume that cannot be normalised
        raise ValueError(f"no surface to draw: {exc}") from None
    dev = np.abs(data - background)
    level = threshold if level is None else float(level)
    if not (dev.min() < level < dev.max()):
        raise ValueError(
            f"volume has no surface at level {level:g} (values {dev.min():g} to {dev.max():g})"
        )
    # pad so that a specimen touching the border still gives a closed surface
    verts, faces, _, _ = marching_cubes(np.pad(dev, 1), level=float(level))
    verts = (verts - 1) * step + (step - 1) / 2.0
    return verts, faces


def _tessellate(corners: np.ndarray, n: int) -> np.ndarray:
    """Split the square `corners` (4, 3) into 2·n² triangles (2·n², 3, 3)."""
    a, b, d = corners[0], corners[1], corners[3]
    t = np.linspace(0.0, 1.0, n + 1)
    grid = a + t[:, None, None] * (b - a) + t[None, :, None] * (d - a)  # (n+1, n+1, 3)
    p00, p10 = grid[:-1, :-1], grid[1:, :-1]
    p01, p11 = grid[:-1, 1:], grid[1:, 1:]
    lower = np.stack([p00, p10, p11], axis=2).reshape(-1, 3, 3)
    upper = np.stack([p00, p11, p01], axis=2).reshape(-1, 3, 3)
    return np.concatenate([lower, upper])


def _draw_surface(ax, verts, faces, shape, plane: Plane, half: float | None) -> None:
    tris = verts[faces]
    # Lambert shading from a fixed light (matplotlib's own shading needs edge colours)
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([-1.0, -1.0, 1.5]) / np.linalg.norm([-1.0, -1.0, 1.5])
    shade = 0.35 + 0.65 * np.abs(normals @ light)
    colours = np.column_stack([shade[:, None] * SURFACE_COLOUR, np.full(len(tris), 0.9)])
    if half is None:  # a square a little larger than the specimen
        half = 0.6 * float((verts.max(axis=0) - verts.min(axis=0)).max())
    corners = plane_corners(plane, shape, half)
    # the plane as small triangles sorted together with the mesh's, so that the part
    # of the plane inside the specimen is hidden and the part in front shows
    plane_tris = _tessellate(corners, PLANE_TILES)
    plane_colours = np.tile((*PLANE_COLOUR, 0.35), (len(plane_tris), 1))
    ax.add_collection3d(
        Poly3DCollection(
            np.concatenate([tris, plane_tris]),
            facecolors=np.concatenate([colours, plane_colours]),
            edgecolors="none",
        )
    )
    ax.plot(*np.vstack([corners, corners[:1]]).T, color=PLANE_COLOUR, linewidth=1.2)
    centre = corners.mean(axis=0)
    # the section's column direction (u) from its centre: shows the in-plane angle
    u, _ = plane_axes(plane.normal, plane.angle)
    length = 0.4 * np.linalg.norm(corners[1] - corners[0])
    ax.plot(*np.stack([centre, centre + length * u]).T, color=PLANE_COLOUR, linewidth=1.5)
    ax.scatter(*centre, color=PLANE_COLOUR, s=10)
    ax.set_xlim(0, shape[0] - 1)
    ax.set_ylim(0, shape[1] - 1)
    ax.set_zlim(0, shape[2] - 1)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("axis 0", fontsize=7, labelpad=-8)
    ax.set_ylabel("axis 1", fontsize=7, labelpad=-8)
    ax.set_zlabel("axis 2", fontsize=7, labelpad=-8)
    ax.tick_params(labelsize=0, length=0)
    # in short lines: a 3-D axes' title is not fitted by the layout, and a long one is cut
    words = "the section: " + plane_words(plane.normal, plane.offset, plane.angle)
    ax.set_title("\n".join(textwrap.wrap(words, 36)), fontsize=8)


def plane_words(normal, offset: float, angle: float) -> str:
    """A plane of a volume in words: tilt from the scan's axes, distance from the centre.

    Examples
    --------
    >>> plane_words((0.0, 0.0, 1.0), 0.0, 0.0)
    'across axis 2 (tilted 0° from it), through the centre'
    >>> plane_words((0.6, 0.0, 0.8), -5.14, 30.0)
    'across axis 2 (tilted 37° from it), 5.1 voxels from the centre'
    """
    n = np.abs(np.asarray(normal, dtype=np.float64))
    n = n / (np.linalg.norm(n) or 1.0)
    axis = int(np.argmax(n))
    tilt = float(np.degrees(np.arccos(np.clip(n[axis], -1, 1))))
    where = (
        "through the centre" if abs(offset) < 0.05 else f"{abs(offset):.1f} voxels from the centre"
    )
    return f"across axis {axis} (tilted {tilt:.0f}° from it), {where}"


def _panels(section) -> list[tuple[str, np.ndarray]]:
    if section is None:
        return []
    if isinstance(section, np.ndarray) or (
        isinstance(section, Sequence) and section and not isinstance(section[0], tuple)
    ):
        section = [("section", section)]
    panels = []
    for item in section:
        try:
            label, image = item
        except (TypeError, ValueError):
            raise ValueError(
                f"section must be a 2-D image or (label, image) pairs, got {item!r:.60}"
            ) from None
        img = np.asarray(image)
        if img.ndim == 3 and img.shape[2] in (3, 4):
            img = img[..., :3]
        elif img.ndim != 2:
            raise ValueError(f"section {label!r} must be a 2-D image, got shape {img.shape}")
        panels.append((str(label), img))
    return panels


def plane_figure(
    volume,
    plane: Plane,
    *,
    title: str | None = None,
    section=None,
    level: float | None = None,
    step: int = 2,
    half: float | None = None,
) -> Figure:
    """The specimen's surface with `plane` drawn in it, and optional section images.

    Parameters
    ----------
    volume : 3-D array
        The specimen volume in the coordinates the plane refers to.
    plane : Plane
        E.g. ``Plane(m.normal, m.offset, m.angle_deg)`` of a
        :class:`foramlib.matching.search.Match`.
    title : str, optional
        Figure title (say "virtual" for virtual data).
    section : 2-D array or sequence of (label, 2-D array), optional
        Images shown to the right, e.g. ``[("query", q), ("match", m.image)]``.
    level, step : float, int
        Isosurface level and downsampling, see :func:`surface_mesh`.
    half : float, optional
        Half side of the plane's square (default: 0.6 times the specimen's extent).

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with pyplot: save it with ``fig.savefig`` or
        :func:`figure_png`, no ``plt.close`` needed.

    Raises
    ------
    ValueError
        For a bad volume (see :func:`surface_mesh`), plane or section.
    """
    if not isinstance(plane, Plane):
        raise ValueError(f"plane must be a foramlib.dataset.slicing.Plane, got {plane!r:.60}")
    vol = _check_volume(volume)
    panels = _panels(section)
    verts, faces = surface_mesh(vol, level=level, step=step)
    n = len(panels)
    fig = Figure(figsize=(4.2 + 2.6 * n, 4.2), layout="constrained")
    grid = fig.add_gridspec(1, 1 + n, width_ratios=[1.6] + [1.0] * n)
    ax3d = fig.add_subplot(grid[0, 0], projection="3d")
    ax3d.view_init(elev=22, azim=-60)
    _draw_surface(ax3d, verts, faces, vol.shape, plane, half)
    for i, (label, img) in enumerate(panels, start=1):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for a dashboard image widget)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
