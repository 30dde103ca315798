"""Does an input look like a foraminifer section at all? A calibrated check.

The classifier always names one of its genera, whatever it is shown: a photo of a
person, pure noise or a section of a rock core gets a "best" genus like a fossil does.
This module gives the separate answer *"this does not look like a foraminifer section"*:

* :func:`colourfulness`: micro-CT sections are grey values; a colour picture (a photo,
  a colour-mapped rendering) is refused as such before anything else;
* :func:`section_features`: 51 cheap descriptors of a **cleaned** slice (the slicer's or
  :func:`foramlib.inference.classify.prepare`'s output): the silhouette's shape (area share,
  pieces, solidity, roundness, holes), its grey levels (mean, spread, saturation, a
  histogram) and its texture (local binary patterns at 1, 2 and 4 px, gradients, fine
  detail);
* :class:`SectionCheck`: a Gaussian mixture of those descriptors fitted on the
  **training** slices; an input's score is its negative log-likelihood, and the
  threshold is the `keep` quantile of the **validation** slices' scores (unseen
  specimens), so about `keep` of genuine sections of new specimens pass. Nothing is
  fitted or chosen on test slices or on the probes;
* :func:`probe_sets`: inputs that are not foraminifer sections, for measuring how many
  the check lets through: noise of five kinds, crops of the pictures bundled with
  scikit-image (photos, text, a CT phantom, micrographs) and sections of five unrelated
  virtual volumes (porous rock, blobs, fibres, sand grains, a box).

The check knows sections *like the training slices*. A foraminifer of a genus the
collection lacks is a section like them and passes: telling unknown genera apart is
the classifier's uncertainty rule's job, not this check's.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> yy, xx = np.mgrid[:48, :48]
>>> def disc(r):
...     img = np.zeros((48, 48), np.uint8)
...     img[(yy - 24) ** 2 + (xx - 24) ** 2 < r * r] = 180
...     return img
>>> train = np.stack([disc(r) for r in rng.uniform(14, 22, 60)])
>>> val = np.stack([disc(r) for r in rng.uniform(14, 22, 30)])
>>> check = fit_section_check(train, val, keep=0.95, components=1, seed=0)
>>> check.verdict(disc(18)).looks_like_section
True
>>> noise = rng.integers(0, 255, (48, 48)).astype(np.uint8)
>>> check.verdict(noise).looks_like_section
False
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.feature import local_binary_pattern

__all__ = [
    "FEATURE_NAMES",
    "COLOUR_LIMIT",
    "DEFAULT_KEEP",
    "SectionCheckError",
    "colourfulness",
    "section_features",
    "features_of",
    "Verdict",
    "SectionCheck",
    "fit_section_check",
    "probe_sets",
    "PROBE_PICTURES",
    "screen",
    "measure",
]

LBP_RADII = (1, 2, 4)
LBP_BINS = 10  # "uniform" LBP with 8 neighbours has 10 codes
GREY_BINS = 8
SHAPE_NAMES = (
    "area_share",
    "log_pieces",
    "largest_piece_share",
    "solidity",
    "roundness",
    "hole_share",
    "grey_mean",
    "grey_sd",
    "grey_median",
    "saturated_share",
    "gradient",
    "fine_detail",
    "laplacian",
)
FEATURE_NAMES = (
    SHAPE_NAMES
    + tuple(f"lbp{r}_{b}" for r in LBP_RADII for b in range(LBP_BINS))
    + tuple(f"grey_hist_{b}" for b in range(GREY_BINS))
)
# Mean spread of the three channels, as a share of the range, above which an image is
# called colour: grey saved as RGB (or JPEG chroma noise on grey) stays well below 0.02,
# the colour photos bundled with scikit-image are above 0.03.
COLOUR_LIMIT = 0.02
DEFAULT_KEEP = 0.97
FORMAT = "foramlib-section-check/1"


class SectionCheckError(ValueError):
    """Invalid input to the section check, or an unreadable saved check."""


def colourfulness(image) -> float:
    """Mean spread of an image's colour channels, as a share of its value range.

    0 for grey images (2-D, one channel, or RGB(A) with equal channels).

    Examples
    --------
    >>> grey = np.full((4, 4), 90, np.uint8)
    >>> colourfulness(grey), colourfulness(np.dstack([grey] * 3))
    (0.0, 0.0)
    >>> red = np.zeros((4, 4, 3), np.uint8); red[..., 0] = 255
    >>> colourfulness(red)
    1.0
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] < 3:
        return 0.0
    rgb = arr[..., :3]
    if arr.dtype.kind in "ui":
        top = float(np.iinfo(arr.dtype).max)
    else:
        finite = rgb[np.isfinite(rgb)]
        top = float(np.ptp(finite)) if finite.size else 0.0
    if top <= 0:
        return 0.0
    spread = rgb.max(axis=2).astype(np.float64) - rgb.min(axis=2)
    return float(np.nanmean(spread) / top)


def _check_cleaned(cleaned, name: str = "slice") -> np.ndarray:
    img = np.asarray(cleaned)
    if img.ndim != 2 or img.dtype != np.uint8 or min(img.shape) < 8:
        raise SectionCheckError(
            f"{name}: expected a cleaned 2-D uint8 slice of at least 8x8 pixels (see "
            f"foramlib.inference.classify.prepare), got {img.dtype} {img.shape}"
        )
    return img


def section_features(cleaned) -> np.ndarray:
    """The descriptors of :data:`FEATURE_NAMES` for one cleaned slice.

    Parameters
    ----------
    cleaned : ndarray of uint8, shape (S, S)
        A slice as the slicer stores it: the fossil's silhouette on a 0 background.

    Returns
    -------
    ndarray of float64, shape (len(FEATURE_NAMES),)

    Examples
    --------
    >>> img = np.zeros((32, 32), np.uint8); img[8:24, 8:24] = 200
    >>> f = dict(zip(FEATURE_NAMES, section_features(img).tolist()))
    >>> round(f["area_share"], 2), round(f["solidity"], 2), bool(f["log_pieces"] == np.log(2))
    (0.25, 1.0, True)
    """
    img = _check_cleaned(cleaned)
    grey = img.astype(np.float32) / 255.0
    fg = img > 0
    n_fg = int(fg.sum())
    out = np.zeros(len(FEATURE_NAMES), np.float64)
    if n_fg == 0:
        return out
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(sizes.argmax()) + 1)
    filled = ndimage.binary_fill_holes(largest)
    contours, _ = cv2.findContours(
        filled.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    solidity = roundness = 0.0
    if contours:
        outline = max(contours, key=cv2.contourArea)
        area = cv2.contourArea(outline)
        hull = cv2.contourArea(cv2.convexHull(outline))
        perimeter = cv2.arcLength(outline, True)
        solidity = area / hull if hull > 0 else 0.0
        roundness = 4 * math.pi * area / perimeter**2 if perimeter > 0 else 0.0
    values = grey[fg]
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    fine = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.5))
    laplacian = np.abs(cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), 1.0), cv2.CV_32F))
    shape = [
        n_fg / fg.size,
        math.log1p(n),
        float(sizes.max()) / n_fg,
        solidity,
        roundness,
        float(filled.sum() - largest.sum()) / fg.size,
        float(values.mean()),
        float(values.std()),
        float(np.median(values)),
        float((values > 0.98).mean()),
        float(gradient[fg].mean()),
        float(fine[fg].mean()) / (float(values.mean()) + 1e-3),
        float(laplacian[fg].mean()),
    ]
    texture = []
    for radius in LBP_RADII:
        codes = local_binary_pattern(img, 8, radius, "uniform")[fg].astype(np.int64)
        texture.append(np.bincount(codes, minlength=LBP_BINS)[:LBP_BINS] / n_fg)
    hist = np.histogram(img[fg], bins=GREY_BINS, range=(1, 256))[0] / n_fg
    out[:] = np.concatenate([shape, *texture, hist])
    return out


def features_of(stack, n_jobs: int = 1) -> np.ndarray:
    """:func:`section_features` of every slice of a stack (N, S, S), optionally in threads.

    Returns
    -------
    ndarray of float64, shape (N, len(FEATURE_NAMES))
    """
    arr = np.asarray(stack)
    if arr.ndim != 3 or len(arr) == 0:
        raise SectionCheckError(f"expected a non-empty stack of slices (N, S, S), got {arr.shape}")
    if n_jobs == 1 or len(arr) < 64:
        return np.stack([section_features(img) for img in arr])
    from joblib import Parallel, delayed

    chunks = np.array_split(np.arange(len(arr)), n_jobs * 4)
    parts = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(lambda rows: np.stack([section_features(arr[i]) for i in rows]))(rows)
        for rows in chunks
        if len(rows)
    )
    return np.concatenate(parts)


@dataclass(frozen=True)
class Verdict:
    """The check's answer for one input.

    Attributes
    ----------
    looks_like_section : bool
    reason : str
        ``"ok"``, ``"colour"`` (a colour picture) or ``"unlike"`` (unlike the training
        sections).
    score : float or None
        Negative log-likelihood under the training sections' model (higher: stranger);
        None for colour pictures, which are not scored.
    threshold : float
        Scores above it are refused.
    keep : float
        The share of validation sections the threshold keeps.
    """

    looks_like_section: bool
    reason: str
    score: float | None
    threshold: float
    keep: float

    def as_dict(self) -> dict:
        return {
            "looks_like_section": self.looks_like_section,
            "reason": self.reason,
            "score": None if self.score is None else round(self.score, 3),
            "threshold": round(self.threshold, 3),
            "keep": self.keep,
        }

    @property
    def message(self) -> str:
        """One sentence for people."""
        if self.looks_like_section:
            return "looks like the training sections"
        if self.reason == "colour":
            return (
                "this is a colour picture; micro-CT sections are grey values (export the "
                "grey section, not a colour rendering)"
            )
        return (
            "this does not look like a foraminifer section: its shape, grey levels and "
            f"texture are unlike the training sections (score {self.score:.1f}, limit "
            f"{self.threshold:.1f}, which keeps {self.keep:.0%} of validation sections)"
        )


@dataclass(frozen=True, eq=False)
class SectionCheck:
    """A Gaussian mixture of :func:`section_features` and its validation threshold.

    Build it with :func:`fit_section_check`; save and load it with :meth:`save` /
    :meth:`load` (an ``.npz`` of plain arrays and a JSON header, no pickle).
    """

    centre: np.ndarray  # feature means of the training slices
    scale: np.ndarray  # their standard deviations (floored)
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, F), standardised units
    covariances: np.ndarray  # (K, F, F)
    threshold: float
    keep: float
    info: dict  # n_train, n_val, components, seed, slice size

    def __post_init__(self) -> None:
        f = len(FEATURE_NAMES)
        k = len(np.atleast_1d(self.weights))
        shapes = {
            "centre": (np.shape(self.centre), (f,)),
            "scale": (np.shape(self.scale), (f,)),
            "means": (np.shape(self.means), (k, f)),
            "covariances": (np.shape(self.covariances), (k, f, f)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise SectionCheckError(f"section check: {name} has shape {got}, expected {want}")
        if not (0 < self.keep < 1) or not math.isfinite(self.threshold):
            raise SectionCheckError(
                f"section check: keep must be in (0, 1) and the threshold finite, got "
                f"keep={self.keep!r}, threshold={self.threshold!r}"
            )
        if np.any(np.asarray(self.scale) <= 0):
            raise SectionCheckError("section check: scale must be positive")

    def _mixture(self):
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(len(self.weights), covariance_type="full")
        gm.weights_ = np.asarray(self.weights, np.float64)
        gm.means_ = np.asarray(self.means, np.float64)
        gm.covariances_ = np.asarray(self.covariances, np.float64)
        gm.precisions_cholesky_ = np.stack(
            [np.linalg.inv(np.linalg.cholesky(c)).T for c in gm.covariances_]
        )
        return gm

    def scores(self, features) -> np.ndarray:
        """Negative log-likelihood of feature rows (N, F): higher is stranger."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != len(FEATURE_NAMES):
            raise SectionCheckError(
                f"expected {len(FEATURE_NAMES)} features per row, got {x.shape[1]}"
            )
        gm = self.__dict__.get("_gm")
        if gm is None:
            gm = self._mixture()
            object.__setattr__(self, "_gm", gm)
        return -gm.score_samples((x - self.centre) / self.scale)

    def accepts(self, features) -> np.ndarray:
        """Boolean per feature row: within the threshold."""
        return self.scores(features) <= self.threshold

    def verdict(self, cleaned, *, colour: float = 0.0) -> Verdict:
        """The verdict for one cleaned slice.

        Parameters
        ----------
        cleaned : ndarray of uint8, shape (S, S)
        colour : float
            :func:`colourfulness` of the raw input it came from (0 for grey).
        """
        if colour > COLOUR_LIMIT:
            return Verdict(False, "colour", None, self.threshold, self.keep)
        score = float(self.scores(section_features(cleaned))[0])
        ok = score <= self.threshold
        return Verdict(ok, "ok" if ok else "unlike", score, self.threshold, self.keep)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the check atomically as ``.npz`` (plain arrays; JSON header)."""
        from foramlib.io.atomic import atomic_path

        header = {"format": FORMAT, "features": list(FEATURE_NAMES), "keep": self.keep}
        header.update(threshold=self.threshold, info=self.info)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                header=np.array(json.dumps(header, sort_keys=True)),
                centre=self.centre,
                scale=self.scale,
                weights=self.weights,
                means=self.means,
                covariances=self.covariances,
            )
        return Path(path)

    @classmethod
    def load(cls, path) -> SectionCheck:
        """Read a check written by :meth:`save`.

        Raises
        ------
        SectionCheckError
            A missing, unreadable or foreign file, or one written for other features.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                arrays = {k: z[k] for k in ("centre", "scale", "weights", "means", "covariances")}
        except FileNotFoundError:
            raise SectionCheckError(f"{path}: no section check here") from None
        except (OSError, KeyError, ValueError) as exc:
            raise SectionCheckError(f"{path}: not a readable section check ({exc})") from None
        if header.get("format") != FORMAT or header.get("features") != list(FEATURE_NAMES):
            raise SectionCheckError(
                f"{path}: written for another format or feature set "
                f"({header.get('format')!r}); rerun the evaluate stage"
            )
        return cls(
            **arrays,
            threshold=float(header["threshold"]),
            keep=float(header["keep"]),
            info=dict(header.get("info", {})),
        )


def fit_section_check(
    train,
    val,
    *,
    keep: float = DEFAULT_KEEP,
    components: int = 8,
    seed: int = 0,
    n_jobs: int = 1,
) -> SectionCheck:
    """Fit the mixture on training slices and set the threshold on validation slices.

    Parameters
    ----------
    train, val : ndarray of uint8, shape (N, S, S)
        Cleaned slices of the training and validation specimens (disjoint specimens:
        the threshold then holds for specimens the mixture never saw).
    keep : float
        Share of validation slices to accept, in (0.5, 1).
    components : int
        Most mixture components; fewer when there are under 100 training slices per
        component.
    seed : int
        The mixture's ``random_state``.
    n_jobs : int
        Threads for the features.

    Raises
    ------
    SectionCheckError
        Too few slices (under 20 training or 10 validation), or `keep` out of range.
    """
    from sklearn.mixture import GaussianMixture

    if not (isinstance(keep, float | int) and 0.5 < keep < 1):
        raise SectionCheckError(f"keep = {keep!r} is invalid: expected a share in (0.5, 1)")
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise SectionCheckError(f"components = {components!r} is invalid: expected an int >= 1")
    tr, va = np.asarray(train), np.asarray(val)
    if len(tr) < 20 or len(va) < 10:
        raise SectionCheckError(
            f"the section check needs at least 20 training and 10 validation slices, got "
            f"{len(tr)} and {len(va)}"
        )
    f_tr, f_va = features_of(tr, n_jobs), features_of(va, n_jobs)
    centre = f_tr.mean(axis=0)
    scale = np.maximum(f_tr.std(axis=0), 1e-6)
    k = max(1, min(components, len(tr) // 100))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=seed)
    gm.fit((f_tr - centre) / scale)
    check = SectionCheck(
        centre=centre,
        scale=scale,
        weights=gm.weights_,
        means=gm.means_,
        covariances=gm.covariances_,
        threshold=1.0,  # replaced below, once validation is scored
        keep=float(keep),
        info={
            "n_train": len(tr),
            "n_val": len(va),
            "components": k,
            "seed": int(seed),
            "size": int(tr.shape[-1]),
        },
    )
    threshold = float(np.quantile(check.scores(f_va), keep))
    return replace(check, threshold=threshold)


# ----------------------------------------------------------------------------- probes
# Pictures shipped inside scikit-image's wheel (no download): photos, text, textures,
# micrographs and a CT phantom. None is a foraminifer section.
PROBE_PICTURES = (
    "astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "text", "clock", "checkerboard",
    "shepp_logan_phantom", "colorwheel",
)  # fmt: skip


def _noise(rng, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        side = int(rng.choice([96, 128, 256, 512]))
        kind = i % 5
        if kind == 0:
            img = rng.normal(0.5, 0.2, (side, side))
        elif kind == 1:
            img = rng.uniform(0, 1, (side, side))
        elif kind == 2:  # smooth (correlated) noise
            white = rng.normal(0.5, 0.2, (side, side)).astype(np.float32)
            img = cv2.GaussianBlur(white, (0, 0), float(rng.uniform(1, 6)))
        elif kind == 3:  # sparse bright specks
            img = (rng.uniform(size=(side, side)) < 0.05).astype(float)
        else:  # specks on a noisy dark field
            img = rng.normal(0.1, 0.05, (side, side)) + (rng.uniform(size=(side, side)) < 0.2)
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out


def _pictures(rng, per_picture: int) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PROBE_PICTURES:
        pic = getattr(skimage.data, name)()
        if pic.dtype == bool:
            pic = pic.astype(np.uint8) * 255
        elif pic.dtype.kind == "f":
            pic = (np.clip(pic, 0, 1) * 255).astype(np.uint8)
        if pic.ndim == 3 and pic.shape[2] == 4:
            pic = pic[..., :3]
        h, w = pic.shape[:2]
        for _ in range(per_picture):
            side = int(min(h, w) * rng.uniform(0.5, 1.0))
            r0, c0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            out.append(np.ascontiguousarray(pic[r0 : r0 + side, c0 : c0 + side]))
    return out


def _unrelated_volumes(rng, n: int = 96) -> dict[str, np.ndarray]:
    from skimage.data import binary_blobs

    zz, yy, xx = np.mgrid[:n, :n, :n].astype(np.float32)
    fibres = np.zeros((n, n, n), bool)
    for a, b in rng.uniform(0, n, (25, 2)):
        fibres |= (yy - a) ** 2 + (xx - b) ** 2 < 9
    grains = np.zeros((n, n, n), bool)
    for centre, radius in zip(
        rng.uniform(10, n - 10, (60, 3)), rng.uniform(4, 10, 60), strict=True
    ):
        grains |= (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < radius**2
    box = np.zeros((n, n, n), bool)
    box[20:76, 30:66, 10:86] = True
    seeds = rng.integers(0, 2**31, 2)
    return {
        "porous rock": ~binary_blobs(
            n, blob_size_fraction=0.08, n_dim=3, volume_fraction=0.3, rng=int(seeds[0])
        ),
        "blobs": binary_blobs(
            n, blob_size_fraction=0.15, n_dim=3, volume_fraction=0.2, rng=int(seeds[1])
        ),
        "fibres": fibres,
        "sand grains": grains,
        "box": box,
    }


def probe_sets(seed: int = 0, *, n_noise: int = 60, per_picture: int = 4, per_volume: int = 12):
    """Raw inputs that are not foraminifer sections, by family.

    Parameters
    ----------
    seed : int
    n_noise : int
        Noise images (five kinds in turn, 96–512 px).
    per_picture : int
        Random square crops of each of :data:`PROBE_PICTURES`.
    per_volume : int
        Axis sections of each unrelated virtual volume (smoothed, with noise).

    Returns
    -------
    dict of str to list of ndarray
        ``"noise"``, ``"pictures"`` and ``"unrelated volumes"``: raw images (uint8, grey or
        RGB) to pass through the same path as an upload.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EC7]))
    sections = []
    for volume in _unrelated_volumes(rng).values():
        v = ndimage.gaussian_filter(volume.astype(np.float32), 1.0)
        v += rng.normal(0, 0.05, v.shape).astype(np.float32)
        n = v.shape[0]
        for i in range(per_volume):
            cut = np.take(v, int(rng.integers(20, n - 20)), axis=i % 3)
            sections.append((np.clip(cut, 0, 1) * 255).astype(np.uint8))
    return {
        "noise": _noise(rng, n_noise),
        "pictures": _pictures(rng, per_picture),
        "unrelated volumes": sections,
    }


def screen(check: SectionCheck, images, base) -> dict:
    """Pass raw inputs through the upload path and count the verdicts.

    Each image goes the way an upload goes: a stored slice as it is, anything else
    through :func:`foramlib.inference.classify.prepare` with the training settings `base`; then
    :meth:`SectionCheck.verdict`. An image the preprocessing refuses (blank, nothing
    stands out) is counted as ``unreadable``: the user gets an error, not a genus.

    Returns
    -------
    dict
        ``n``, ``accepted``, ``refused`` (colour or unlike), ``colour``, ``unreadable``
        and ``accepted_share``.
    """
    from foramlib.dataset.preprocess import PreprocessError
    from foramlib.inference.classify import prepare_upload

    counts = {"n": 0, "accepted": 0, "refused": 0, "colour": 0, "unreadable": 0}
    for i, image in enumerate(images):
        counts["n"] += 1
        try:
            cleaned, info = prepare_upload(image, base, name=f"probe {i}")
        except PreprocessError:
            counts["unreadable"] += 1
            continue
        verdict = check.verdict(cleaned, colour=info["colourfulness"])
        counts["accepted" if verdict.looks_like_section else "refused"] += 1
        counts["colour"] += verdict.reason == "colour"
    counts["accepted_share"] = counts["accepted"] / counts["n"] if counts["n"] else float("nan")
    return counts


def measure(check: SectionCheck, genuine, genera, probes: dict, base) -> pd.DataFrame:
    """How often genuine sections are kept and other inputs let through.

    Parameters
    ----------
    check : SectionCheck
    genuine : ndarray of uint8, shape (N, S, S)
        Held-out sections (the test split; never used to fit or set the check).
    genera : sequence of str, length N
        Their genus, for the worst genus' rate.
    probes : dict of str to list of ndarray
        :func:`probe_sets`.
    base : PreprocessConfig
        The training preprocessing.

    Returns
    -------
    pandas.DataFrame
        One row per family: ``inputs``, ``accepted`` (share), ``unreadable``,
        ``colour``, ``goal`` and ``met``.
    """
    kept = check.accepts(features_of(genuine))
    by_genus = pd.Series(kept).groupby(np.asarray(genera)).mean()
    genera = np.asarray(genera)
    worst = by_genus.idxmin()

    def row(family, inputs, accepted, goal, unreadable=0, colour=0):
        return dict(family=family, inputs=int(inputs), accepted=float(accepted),
                    unreadable=unreadable, colour=colour, goal=goal)  # fmt: skip

    rows = [
        row("test sections (genuine)", len(kept), kept.mean(), ">= 0.95"),
        row(f"worst genus ({worst})", (genera == worst).sum(), by_genus.min(), ""),
    ]
    for family, images in probes.items():
        c = screen(check, images, base)
        rows.append(
            row(family, c["n"], c["accepted_share"], "<= 0.05", c["unreadable"], c["colour"])
        )
    table = pd.DataFrame(rows)
    goal_met = [
        (a >= 0.95) if g == ">= 0.95" else (a <= 0.05) if g == "<= 0.05" else None
        for a, g in zip(table["accepted"], table["goal"], strict=True)
    ]
    table["met"] = goal_met
    table["accepted"] = table["accepted"].round(3)
    return table
