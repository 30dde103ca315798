"""Register a 2D section image to a 3D volume: plane, in-plane turn, shift and scale.

A :class:`SectionPose` maps the image's pixel offsets ``(dx, dy)`` (columns, rows)
from a reference point of the image to volume coordinates::

    X = origin + scale * (dx * U + dy * V)

with ``U``, ``V`` orthonormal in-plane axes; the plane's normal is ``U × V``. The
image is compared with the volume by sampling the volume directly at those points
(no section is cut, cropped or resized), so one evaluation of a pose costs one
trilinear interpolation of a few thousand points, and many poses are scored in one
call.

:func:`register` improves a pose by a pattern search over its seven parameters (two
tilts, the in-plane turn, three shifts and the scale), on a coarse-to-fine pyramid of
the image: band-passed at a coarse scale first, whose similarity changes slowly with
the pose (a wide basin of attraction), then at the full resolution of the template,
whose similarity peaks sharply at the true pose. :func:`register_many` runs many
such searches in lock step: each round scores the moves of all of them in one batch,
which halves the time of the few dozen registrations a query needs (the per-call cost
of small array operations, not the arithmetic, dominated).

Examples
--------
An image lying in the plane 3 voxels above the centre of a 32³ volume, upright:

>>> pose = SectionPose(np.array([15.5, 15.5, 18.5]), np.eye(3)[[0, 1]], 1.0)
>>> plane = pose.plane((15.5, 15.5, 15.5))
>>> plane.normal, plane.offset, plane.angle
((0.0, 0.0, 1.0), 3.0, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage

from foramlib.dataset.slicing import Plane, plane_axes

__all__ = [
    "SectionPose",
    "Template",
    "make_template",
    "sample_section",
    "sample_grid",
    "pose_scores",
    "batch_scores",
    "register",
    "register_many",
]


@dataclass(frozen=True)
class SectionPose:
    """Where an image lies in a volume (see the module docstring).

    Parameters
    ----------
    origin : (3,) array
        Volume coordinates of the image's reference point.
    axes : (2, 3) array
        ``U`` (image columns) and ``V`` (image rows), orthonormal.
    scale : float
        Voxels per image pixel.
    """

    origin: np.ndarray
    axes: np.ndarray
    scale: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.axes[0], self.axes[1])

    def plane(self, centre) -> Plane:
        """The :class:`~foramlib.dataset.slicing.Plane` whose section shows the image upright.

        ``extract_slice(volume, pose.plane(centre))`` has its columns along ``U`` and
        its rows along ``V``, like the image (centred elsewhere in the plane).
        """
        n = self.normal / np.linalg.norm(self.normal)
        u0, v0 = plane_axes(n, 0.0)
        angle = np.degrees(np.arctan2(self.axes[0] @ v0, self.axes[0] @ u0))
        offset = float((self.origin - np.asarray(centre, np.float64)) @ n)
        return Plane(tuple(n), offset, float(angle % 360.0))

    def moved(self, step: np.ndarray) -> SectionPose:
        """The pose after ``(tilt_u, tilt_v, turn, shift_u, shift_v, shift_n, log_scale)``.

        Tilts and turn are rotations (radians) about ``U``, ``V`` and the normal,
        pivoting on the reference point; shifts are in voxels along ``U``, ``V`` and
        the normal.
        """
        steps = np.asarray(step, np.float64)[None, None]
        origin, axes, scale = _moved_many(
            self.origin[None], self.axes[None], np.array([self.scale]), steps
        )
        return SectionPose(origin[0, 0], axes[0, 0], float(scale[0, 0]))


@dataclass(frozen=True)
class Template:
    """The image at one pyramid level, ready for scoring.

    ``offsets`` (2, m): ``(dx, dy)`` of the grid points in the pose's pixel units;
    ``shape`` of the grid; ``valid`` grid points that lie inside the image;
    ``inside`` valid points inside the fossil's silhouette; ``intensity`` and
    ``texture`` the zero-mean, unit-norm image values over ``valid`` and its high-pass
    (image minus its Gaussian blur of ``sigma`` grid pixels) over ``inside``.
    """

    offsets: np.ndarray
    shape: tuple[int, int]
    valid: np.ndarray
    inside: np.ndarray
    intensity: np.ndarray
    texture: np.ndarray
    sigma: float


def _unit_centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


@lru_cache(maxsize=16)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """The Gaussian blur of a length-`n` signal as a matrix (SciPy's kernel and
    mirrored borders): a stack of small images is blurred by two matrix products,
    3-6x faster than ``ndimage.gaussian_filter`` on the batches registration scores."""
    return ndimage.gaussian_filter1d(np.eye(n, dtype=np.float32), sigma, axis=0, truncate=3.0)


def _highpass(images: np.ndarray, sigma: float) -> np.ndarray:
    """Images (..., h, w) minus their Gaussian blur (one filter for query and volume)."""
    images = np.asarray(images, np.float32)
    h, w = images.shape[-2:]
    # one product per image, so an image's result does not depend on the batch it is in
    blurred = np.matmul(_blur_matrix(h, sigma), np.matmul(images, _blur_matrix(w, sigma).T))
    return images - blurred


def make_template(image, silhouette, reference, size: int, sigma: float) -> Template:
    """One pyramid level of an image for :func:`pose_scores`.

    Parameters
    ----------
    image : 2-D float array
        The image, NaN where it has no data (outside the field of view).
    silhouette : 2-D bool array
        The fossil's silhouette in `image`.
    reference : (row, col)
        The image's reference point (the pose's origin), in `image` pixels.
    size : int
        Side of the level's grid; `image` is area-resampled onto it.
    sigma : float
        High-pass scale of the texture term, in grid pixels.

    Raises
    ------
    ValueError
        If the image is not square, `size` < 8, or the silhouette holds no point.
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"template image must be square 2-D, got shape {img.shape}")
    if size < 8:
        raise ValueError(f"template size must be >= 8, got {size!r}")
    side = img.shape[0]
    finite = np.isfinite(img)
    fill = float(img[finite].mean()) if finite.any() else 0.0
    small = cv2.resize(np.where(finite, img, fill), (size, size), interpolation=cv2.INTER_AREA)
    valid = cv2.resize(finite.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    sil = cv2.resize(np.asarray(silhouette, np.float32), (size, size), interpolation=cv2.INTER_AREA)
    valid = valid.ravel() > 0.99
    inside = valid & (sil.ravel() > 0.5)
    if inside.sum() < 8:
        raise ValueError("template silhouette holds fewer than 8 grid points")
    k = side / size  # image pixels per grid pixel
    t = (np.arange(size) + 0.5) * k - 0.5
    dy, dx = np.meshgrid(t - reference[0], t - reference[1], indexing="ij")
    return Template(
        np.stack([dx.ravel(), dy.ravel()]),
        (size, size),
        valid,
        inside,
        _unit_centred(small.ravel()[valid]),
        _unit_centred(_highpass(small, sigma).ravel()[inside]),
        float(sigma),
    )


def _rotations(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices (k, 3, 3) of rotation vectors (k, 3) (Rodrigues' formula)."""
    theta = np.linalg.norm(rotvec, axis=1)
    axis = rotvec / np.where(theta > 0, theta, 1.0)[:, None]
    kx = np.zeros((len(rotvec), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    kx -= kx.transpose(0, 2, 1)
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + s * kx + (1.0 - c) * kx @ kx


# cv2.remap addresses pixels with 16-bit integers: image and maps under 32767 a side
_REMAP_MAX_ROWS = 32767
_REMAP_COLUMNS = 4096


def sample_grid(volume, cval: float, origin, axes, scale, offsets) -> np.ndarray:
    """Trilinear samples of `volume` at ``origin + scale * (dx * U + dy * V)``.

    Parameters
    ----------
    volume : 3-D array
    cval : float
        Value outside the volume.
    origin, axes, scale : arrays (n, 3), (n, 2, 3), (n,)
        One pose per row (see :class:`SectionPose`).
    offsets : (2, m) array
        The ``(dx, dy)`` of the points, shared by the poses.

    Returns
    -------
    (n, m) float32 array
    """
    volume = np.asarray(volume)
    d, h, w = volume.shape
    if volume.dtype == np.float32 and volume.flags.c_contiguous and d * h < _REMAP_MAX_ROWS:
        return _remap_trilinear(volume, cval, origin, axes, scale, offsets)
    pts = origin[:, None, :] + offsets.T[None] @ (axes * np.asarray(scale)[:, None, None])
    vals = ndimage.map_coordinates(
        volume, pts.reshape(-1, 3).T, order=1, mode="constant", cval=cval, prefilter=False
    )
    return vals.reshape(len(origin), -1).astype(np.float32)


def _sample_arrays(volume, cval, origin, axes, scale, t: Template) -> np.ndarray:
    """The volume at the template's grid points for poses given as arrays, (n, h, w)."""
    return sample_grid(volume, cval, origin, axes, scale, t.offsets).reshape(len(origin), *t.shape)


def _remap_trilinear(volume, cval, origin, axes, scale, offsets) -> np.ndarray:
    """Trilinear samples ``origin + scale * (dx U + dy V)``, (n, m), with OpenCV.

    The volume's slabs, stacked as one tall image (a view, no copy), are sampled
    bilinearly at each point's two neighbouring slabs by ``cv2.remap`` and blended
    along the depth: 5-7x faster than ``ndimage.map_coordinates`` (order 1) on the
    batches registration scores (2x for one pose), and equal to it up to float32
    rounding; points outside the volume take `cval`.
    """
    d, h, w = volume.shape
    image = volume.reshape(d * h, w)
    basis = (axes * np.asarray(scale)[:, None, None]).astype(np.float32)  # (n, 2, 3)
    offsets = offsets.astype(np.float32)
    start = np.asarray(origin, np.float32)
    outside = None

    def coordinate(axis: int, top: int) -> np.ndarray:
        nonlocal outside
        c = basis[:, :, axis] @ offsets
        c += start[:, axis, None]
        off = (c < 0.0) | (c > top)
        outside = off if outside is None else outside | off
        return c

    z, y, x = coordinate(0, d - 1), coordinate(1, h - 1), coordinate(2, w - 1)
    np.putmask(x, outside, -2.0)  # past the image's columns: remap's border, cval
    np.putmask(z, outside, 0.0)  # and keep their rows within the image's range
    slab = np.floor(z)
    z -= slab  # the fraction between the two slabs
    slab *= h
    y += slab  # rows of the stacked image
    x, y = x.ravel(), y.ravel()
    lower = _remap(image, x, y, cval)
    y += h
    upper = _remap(image, x, y, cval).reshape(z.shape)
    upper -= lower.reshape(z.shape)
    upper *= z
    upper += lower.reshape(z.shape)
    return upper


def _remap(image: np.ndarray, x: np.ndarray, y: np.ndarray, cval: float) -> np.ndarray:
    """``cv2.remap`` (bilinear) of `image` at flat float32 maps of any length.

    remap wants both the image and the maps under 32767 pixels a side: the maps are
    viewed as rows of ``_REMAP_COLUMNS`` (and one shorter row for the rest).
    """
    out = np.empty_like(x)
    step = _REMAP_COLUMNS * (_REMAP_MAX_ROWS - 1)
    for start in range(0, x.size, step):
        stop = min(start + step, x.size)
        full = start + (stop - start) // _REMAP_COLUMNS * _REMAP_COLUMNS
        for a, b, shape in ((start, full, (-1, _REMAP_COLUMNS)), (full, stop, (1, -1))):
            if b > a:
                cv2.remap(
                    image,
                    x[a:b].reshape(shape),
                    y[a:b].reshape(shape),
                    cv2.INTER_LINEAR,
                    dst=out[a:b].reshape(shape),
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=cval,
                )
    return out


def _as_arrays(poses: list[SectionPose]):
    return (
        np.stack([p.origin for p in poses]),
        np.stack([p.axes for p in poses]),
        np.array([p.scale for p in poses], np.float64),
    )


def sample_section(volume: np.ndarray, cval: float, pose: SectionPose, t: Template):
    """The volume at the template's grid points for `pose`, shaped like the grid."""
    return _sample_arrays(volume, cval, *_as_arrays([pose]), t)[0]


def _correlation(x: np.ndarray, mask: np.ndarray, template: np.ndarray) -> np.ndarray:
    """NCC of the rows of `x` (n, m) over the points `mask` with a zero-mean, unit-norm
    `template`; in float32 (the samples' precision: ~1e-7 from float64, ten times
    faster on the batches registration scores)."""
    y = np.take(x, np.flatnonzero(mask), axis=1)
    y -= y.mean(axis=1, keepdims=True)
    # einsum, not BLAS: a row's result must not depend on the rows beside it
    dot = np.einsum("ij,j->i", y, template.astype(np.float32))
    return dot / (np.sqrt(np.einsum("ij,ij->i", y, y)) + 1e-12)


def _scores(vals: np.ndarray, t: Template):
    n = len(vals)
    texture = _correlation(_highpass(vals, t.sigma).reshape(n, -1), t.inside, t.texture)
    intensity = _correlation(vals.reshape(n, -1), t.valid, t.intensity)
    return texture.astype(np.float64), intensity.astype(np.float64)


def batch_scores(volume, cval: float, origin, axes, scale, t: Template):
    """:func:`pose_scores` of poses given as arrays: origins (n, 3), axes (n, 2, 3) and
    scales (n,)."""
    return _scores(_sample_arrays(volume, cval, origin, axes, np.asarray(scale), t), t)


def pose_scores(volume: np.ndarray, cval: float, poses: list[SectionPose], t: Template):
    """Similarity of the template to the volume at each pose.

    Returns
    -------
    texture, intensity : (n,) arrays
        Correlation (NCC) of the high-passed values inside the silhouette, and of the
        values over the whole valid grid.
    """
    return _scores(_sample_arrays(volume, cval, *_as_arrays(poses), t), t)


GRADIENT_MOVES = (1.0, 2.0, 4.0)  # multiples of the step tried along the local slope
# initial steps: tilts and turn (degrees), shifts (voxels), log-scale
STEP = np.array([4.0, 4.0, 3.0, 1.5, 1.5, 1.5, 0.04])


def _step_vector(scale: np.ndarray) -> np.ndarray:
    """Step sizes (..., 7) in degrees and voxels as the radians and voxels of a move."""
    return np.concatenate([np.deg2rad(scale[..., :3]), scale[..., 3:]], axis=-1)


def _moved_many(origin, axes, scale, steps):
    """:meth:`SectionPose.moved` of poses (n, ...) by their step rows (n, k, 7).

    Returns origins (n, k, 3), axes (n, k, 2, 3) and scales (n, k).
    """
    n, k = steps.shape[:2]
    frame = np.concatenate([axes, np.cross(axes[:, 0], axes[:, 1])[:, None]], axis=1)
    rot = _rotations(np.einsum("nkj,nja->nka", steps[..., :3], frame).reshape(-1, 3))
    moved_axes = np.einsum("nkij,naj->nkai", rot.reshape(n, k, 3, 3), axes)
    moved_origin = origin[:, None] + np.einsum("nkj,nja->nka", steps[..., 3:6], frame)
    return moved_origin, moved_axes, scale[:, None] * np.exp(steps[..., 6])


def _objective_many(volumes, cvals, group, origin, axes, scale, t, texture_weight):
    """The objective of poses (n, k) whose pose row i lies in ``volumes[group[i]]``."""
    n, k = scale.shape
    vals = np.empty((n, k, len(t.valid)), np.float32)
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        vals[rows] = sample_grid(
            volumes[g], cvals[g], origin[rows].reshape(-1, 3), axes[rows].reshape(-1, 2, 3),
            scale[rows].ravel(), t.offsets,
        ).reshape(len(rows), k, -1)  # fmt: skip
    tex, ncc = _scores(vals.reshape(n * k, *t.shape), t)
    return (texture_weight * tex + (1.0 - texture_weight) * ncc).reshape(n, k)


def register_many(
    volumes: list[np.ndarray],
    cvals: list[float],
    starts: list[SectionPose],
    templates: list[Template],
    *,
    texture_weight: float = 0.7,
    step: np.ndarray = STEP,
    min_step: float = 1 / 8,
    max_evals: int = 400,
) -> list[tuple[SectionPose, float, int]]:
    """:func:`register` of many starts, in lock step.

    Every start follows its own pattern search, exactly as :func:`register` would run
    it, but each round scores the moves of all the unfinished starts in one batch:
    the per-call cost of sampling and scoring (small arrays, Python) is paid once a
    round instead of once a start.

    Parameters
    ----------
    volumes, cvals : lists
        The volumes the starts lie in, and their outside values; ``starts[i]`` lies in
        ``volumes[i]`` (starts in one volume object are sampled together).
    starts : list of SectionPose
    templates, texture_weight, step, min_step, max_evals
        As for :func:`register`.

    Returns
    -------
    list of (pose, score, evaluations)
        One per start, in order.
    """
    if len(volumes) != len(starts) or len(cvals) != len(starts):
        raise ValueError(
            f"register_many needs one volume and cval per start: {len(starts)} starts, "
            f"{len(volumes)} volumes, {len(cvals)} cvals"
        )
    n = len(starts)
    if n == 0:
        return []
    # starts in one volume object are sampled in one call
    first_of: dict[int, int] = {}
    group = np.array([first_of.setdefault(id(v), i) for i, v in enumerate(volumes)])
    origin, axes, scale = _as_arrays(starts)
    score = np.full(n, -np.inf)
    evals = np.zeros(n, np.int64)
    step = np.asarray(step, np.float64)
    floor = step * min_step
    for level, t in enumerate(templates):

        def objective(rows, o, a, s, t=t):
            return _objective_many(volumes, cvals, group[rows], o, a, s, t, texture_weight)

        everyone = np.arange(n)
        score = objective(everyone, origin[:, None], axes[:, None], scale[:, None])[:, 0]
        evals += 1
        size = np.tile(step * (0.5 if level else 1.0), (n, 1))
        while True:
            rows = np.flatnonzero((evals < max_evals) & (size >= floor).all(axis=1))
            if not len(rows):
                break
            vec = _step_vector(size[rows])
            moves = np.concatenate([_diagonals(vec), -_diagonals(vec)], axis=1)  # (m, 14, 7)
            here = (origin[rows], axes[rows], scale[rows])
            s = objective(rows, *_moved_many(*here, moves))
            tried = np.full(len(rows), moves.shape[1])
            if GRADIENT_MOVES:
                # the parameters are coupled (a tilt moves the section like a shift,
                # an offset changes its size like the scale): also try moving all of
                # them along the slope the neighbours show
                slope = (s[:, :7] - s[:, 7:]) / 2.0
                steep = np.abs(slope).max(axis=1)
                sloped = steep > 0
                d = vec * slope / np.where(sloped, steep, 1.0)[:, None]
                extra = d[:, None, :] * np.asarray(GRADIENT_MOVES)[None, :, None]
                moves = np.concatenate([moves, extra], axis=1)
                s_extra = np.full((len(rows), len(GRADIENT_MOVES)), -np.inf)
                if sloped.any():
                    on = np.flatnonzero(sloped)
                    s_extra[on] = objective(
                        rows[on], *_moved_many(*(h[on] for h in here), extra[on])
                    )
                s = np.concatenate([s, s_extra], axis=1)
                tried += np.where(sloped, len(GRADIENT_MOVES), 0)
            evals[rows] += tried
            best = np.argmax(s, axis=1)
            gain = s[np.arange(len(rows)), best] > score[rows] + 1e-5
            up, down = rows[gain], rows[~gain]
            if len(up):
                o, a, sc = _moved_many(*(h[gain] for h in here), moves[gain, best[gain]][:, None])
                origin[up], axes[up], scale[up] = o[:, 0], a[:, 0], sc[:, 0]
                score[up] = s[gain, best[gain]]
            size[down] /= 2.0
    return [
        (SectionPose(origin[i], axes[i], float(scale[i])), float(score[i]), int(evals[i]))
        for i in range(n)
    ]


def _diagonals(vec: np.ndarray) -> np.ndarray:
    """Rows (m, 7) as diagonal matrices (m, 7, 7)."""
    return vec[:, None, :] * np.eye(vec.shape[1])


def register(
    volume: np.ndarray,
    cval: float,
    start: SectionPose,
    templates: list[Template],
    *,
    texture_weight: float = 0.7,
    step: np.ndarray = STEP,
    min_step: float = 1 / 8,
    max_evals: int = 400,
) -> tuple[SectionPose, float, int]:
    """Improve `start` by a coarse-to-fine pattern search.

    On each template in turn (coarsest first), moves to the best of the 14
    neighbours (each parameter ± its step) and of a few moves along the slope they
    show, while that improves ``texture_weight * texture + (1 - texture_weight) *
    intensity``; halves all steps when nothing does, until the steps are `min_step`
    of the initial ones or `max_evals` poses have been scored.

    Returns
    -------
    pose, score, evaluations
        The best pose, its score on the last template, and the poses scored.
    """
    return register_many(
        [volume], [cval], [start], templates, texture_weight=texture_weight, step=step,
        min_step=min_step, max_evals=max_evals,
    )[0]  # fmt: skip
