"""Is it one of these genera? A calibrated open-set check on the classifier's own features.

The classifier names one of its genera for every section, also for a foraminifer of a
genus the collection lacks; the section check (:mod:`foramlib.inference.section_check`)
lets such a section through, since it *is* a foraminifer section. This module gives the
answer *"this may not be one of these genera"*:

* :func:`feature_model` and :func:`embed`: the features the main model's head reads
  (its backbone's pooled vector), L2-normalised;
* :class:`GenusCheck`: an input's **novelty** is the distance from its features to
  those of its `k`-th nearest **training** slice (nearest-neighbour out-of-distribution
  detection, Sun et al., ICML 2022); the threshold is the `keep` quantile of the
  **validation** slices' novelty, so about `keep` of the sections of new specimens of
  these genera pass. A **scan** is flagged when the median novelty of its sections is
  over the threshold (more than half of them flagged). Nothing is fitted or chosen on
  test slices;
* :func:`unknown_taxa_sections`: sections of virtual shells of pseudo-taxa (random body
  plans of :mod:`foramlib.virtual.shells`, none a genus of the collection nor a taxon of
  the pretraining corpus), to measure how many sections and scans of unknown taxa the
  check lets through (:func:`measure`).

The check is only as good as the features: a network that cannot tell unseen specimens
of its own genera apart cannot tell them from unseen genera either (the book's
*Results* chapter gives this run's numbers).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> train = rng.normal(size=(200, 8)) + np.repeat(np.eye(8)[:2] * 4, 100, axis=0)
>>> val = rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:2] * 4, 30, axis=0)
>>> check = fit_genus_check(train, val, keep=0.95, k=5, member="m")
>>> bool(check.known(val).mean() >= 0.9)
True
>>> bool(check.known(rng.normal(size=(1, 8)) - np.eye(8)[:1] * 4)[0])
False
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.inference.errors import ClassifyError

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_NEIGHBOURS",
    "MAX_REFERENCE",
    "GenusCheckError",
    "GenusVerdict",
    "GenusCheck",
    "main_member",
    "feature_model",
    "embed",
    "normalise",
    "file_digest",
    "fit_genus_check",
    "unknown_taxa_sections",
    "scan_novelty",
    "measure",
]

FORMAT = 1
DEFAULT_KEEP = 0.95
# k = 5 was chosen on a development set of pseudo-taxa (another seed than the probes
# the evaluate stage reports): k = 1 follows single odd training slices, k >= 20 blurs
# the genera together; 5 let the fewest unknown sections through (0.83 against 0.85-0.87)
DEFAULT_NEIGHBOURS = 5
# The reference set is the training slices' features; a paper-size run (100k slices of
# 1,280 features) would make the check a 250 MB file, so at most this many are kept,
# drawn evenly over the genera.
MAX_REFERENCE = 20_000


class GenusCheckError(ClassifyError):
    """A genus check that cannot be built, read or applied."""


def normalise(features) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero.

    >>> normalise([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    x = np.atleast_2d(np.asarray(features, np.float32))
    if x.ndim != 2:
        raise GenusCheckError(f"expected feature rows (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise GenusCheckError("the features hold NaN or infinite values")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def main_member(spec) -> str:
    """The member whose features (and Grad-CAM) speak for an ensemble: a PatchEnsemble's
    main model, else its best-ranked member.

    >>> from foramlib.evaluation.ensemble import EnsembleSpec
    >>> main_member(EnsembleSpec("top_k", ("b", "a"), ("x", "y"), k=2))
    'b'
    """
    return spec.main if spec.kind == "patch" else spec.members[0]


def feature_model(model):
    """A Keras model from a classifier's slice input to its backbone's pooled features.

    The same layers as the classifier up to its head (grey to RGB, the backbone's input
    scaling, the backbone), so the features are the ones its softmax reads.

    >>> from foramlib.learn.models import build_model
    >>> fm = feature_model(build_model("tiny_cnn", input_size=32, n_classes=3))
    >>> tuple(fm.output.shape)
    (None, 128)
    """
    import keras

    from foramlib.learn.models import backbone_of

    size = int(model.input_shape[1])
    x = keras.Input((size, size, 1), name="slice")
    rgb = model.get_layer("gray_to_rgb")([x, x, x])
    try:
        rgb = model.get_layer("preprocess")(rgb)
    except ValueError:  # backbones that scale their input themselves
        pass
    return keras.Model(x, backbone_of(model)(rgb), name=f"{model.name}_features")


def embed(features_of_model, stack, *, batch_size: int = 128) -> np.ndarray:
    """L2-normalised features of a stack of cleaned slices.

    Parameters
    ----------
    features_of_model : keras.Model
        :func:`feature_model` of the classifier.
    stack : ndarray of uint8, shape (N, S, S)
        Cleaned slices (any size: resized to the model's input as for prediction).
    batch_size : int
    """
    from foramlib.dataset.preprocess import resize_slice

    images = np.asarray(stack)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise GenusCheckError(
            f"expected a non-empty stack of cleaned uint8 slices (N, S, S), got "
            f"{images.dtype} {images.shape}"
        )
    size = int(features_of_model.input_shape[1])
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([resize_slice(img, size) for img in images[start : start + batch_size]])
        out.append(np.asarray(features_of_model(batch.astype(np.float32)[..., None])))
    return normalise(np.concatenate(out))


def file_digest(path) -> str:
    """SHA-256 of a file (which trained model a check belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GenusVerdict:
    """The check's answer for one section.

    Attributes
    ----------
    known : bool
        The section is as close to the training slices as sections of new specimens of
        these genera are.
    novelty : float
        Distance to the k-th nearest training slice in feature space (0 to 2).
    threshold : float
    keep : float
    """

    known: bool
    novelty: float
    threshold: float
    keep: float

    def as_dict(self) -> dict:
        return {
            "known": self.known,
            "novelty": round(self.novelty, 4),
            "threshold": round(self.threshold, 4),
            "keep": self.keep,
        }

    @property
    def message(self) -> str:
        """One sentence for people."""
        if self.known:
            return "its features are as close to the training slices as new specimens' are"
        return (
            "this may not be one of these genera: the model's features of it are farther "
            f"from every training slice (novelty {self.novelty:.3f}, limit {self.threshold:.3f}, "
            f"which keeps {self.keep:.0%} of validation sections) than sections of new "
            "specimens of the known genera usually are"
        )


@dataclass(frozen=True, eq=False)
class GenusCheck:
    """Training features, a neighbour count and a threshold calibrated on validation.

    Build it with :func:`fit_genus_check`; save and load it with :meth:`save` /
    :meth:`load` (an ``.npz`` of plain arrays and a JSON header, no pickle).

    Attributes
    ----------
    reference : ndarray of float16, shape (N, D)
        L2-normalised features of (at most :data:`MAX_REFERENCE`) training slices.
    k : int
        The neighbour whose distance is the novelty.
    threshold : float
    keep : float
        The share of validation sections the threshold keeps.
    info : dict
        ``member`` (whose features), ``model_sha256`` (of its ``model.keras``),
        ``n_train``, ``n_val``, ``size`` and anything the caller adds.
    """

    reference: np.ndarray
    k: int
    threshold: float
    keep: float
    info: dict

    def __post_init__(self) -> None:
        ref = np.asarray(self.reference)
        if ref.ndim != 2 or len(ref) < 1:
            raise GenusCheckError(f"genus check: reference has shape {ref.shape}, expected (N, D)")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= len(ref):
            raise GenusCheckError(
                f"genus check: k = {self.k!r} is invalid: expected an integer in "
                f"[1, {len(ref)}] (the reference slices)"
            )
        if not (0 < self.keep < 1) or not math.isfinite(self.threshold):
            raise GenusCheckError(
                f"genus check: keep must be in (0, 1) and the threshold finite, got "
                f"keep={self.keep!r}, threshold={self.threshold!r}"
            )

    @property
    def member(self) -> str | None:
        """The ensemble member whose features the check reads."""
        return self.info.get("member")

    def novelty(self, features) -> np.ndarray:
        """Distance of each feature row to its `k`-th nearest reference row (higher: newer).

        Rows are normalised first, so raw backbone features may be passed.
        """
        from sklearn.neighbors import NearestNeighbors

        x = normalise(features)
        if x.shape[1] != self.reference.shape[1]:
            raise GenusCheckError(
                f"expected {self.reference.shape[1]} features per row (member "
                f"{self.member!r}), got {x.shape[1]}"
            )
        nn = self.__dict__.get("_nn")
        if nn is None:
            nn = NearestNeighbors(n_neighbors=self.k).fit(np.asarray(self.reference, np.float32))
            object.__setattr__(self, "_nn", nn)
        return nn.kneighbors(x)[0][:, -1].astype(np.float64)

    def known(self, features) -> np.ndarray:
        """Boolean per feature row: within the threshold."""
        return self.novelty(features) <= self.threshold

    def verdict(self, features) -> GenusVerdict:
        """The verdict for one section's features (shape (D,) or (1, D))."""
        score = float(self.novelty(np.reshape(features, (1, -1)))[0])
        return GenusVerdict(score <= self.threshold, score, self.threshold, self.keep)

    def scan_verdict(self, novelties) -> dict:
        """A scan's verdict from its sections' novelty: flagged when their median is over.

        Returns
        -------
        dict
            ``known`` (bool), ``median_novelty``, ``flagged`` (sections over the
            threshold), ``sections``, ``threshold``, ``keep``.

        >>> check = GenusCheck(np.eye(2, dtype=np.float16), 1, 0.5, 0.95, {})
        >>> check.scan_verdict([0.1, 0.9, 0.8])["known"]
        False
        """
        v = np.asarray(novelties, np.float64).ravel()
        if v.size == 0:
            raise GenusCheckError("a scan verdict needs at least one section")
        median = float(np.median(v))
        return {
            "known": median <= self.threshold,
            "median_novelty": round(median, 4),
            "flagged": int((v > self.threshold).sum()),
            "sections": int(v.size),
            "threshold": round(self.threshold, 4),
            "keep": self.keep,
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the check atomically as ``.npz`` (plain arrays; JSON header)."""
        from foramlib.io.atomic import atomic_path

        header = {"format": FORMAT, "k": self.k, "keep": self.keep, "threshold": self.threshold}
        header["info"] = self.info
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                header=np.array(json.dumps(header, sort_keys=True)),
                reference=np.asarray(self.reference, np.float16),
            )
        return Path(path)

    @classmethod
    def load(cls, path) -> GenusCheck:
        """Read a check written by :meth:`save`.

        Raises
        ------
        GenusCheckError
            A missing, unreadable or foreign file.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                reference = z["reference"]
        except FileNotFoundError:
            raise GenusCheckError(f"{path}: no genus check here") from None
        except (OSError, KeyError, ValueError) as exc:
            raise GenusCheckError(f"{path}: not a readable genus check ({exc})") from None
        if header.get("format") != FORMAT:
            raise GenusCheckError(
                f"{path}: written in another format ({header.get('format')!r}); rerun the "
                "evaluate stage"
            )
        return cls(
            reference=reference,
            k=int(header["k"]),
            threshold=float(header["threshold"]),
            keep=float(header["keep"]),
            info=dict(header.get("info", {})),
        )


def _reference_rows(labels, limit: int, seed: int) -> np.ndarray:
    """At most `limit` row numbers, as evenly over the labels as their counts allow."""
    labels = np.asarray(labels)
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    quota = limit // len(groups)
    small = [g for g in groups if len(g) <= quota]
    # what the small genera leave over goes to the others
    spare = limit - sum(len(g) for g in small)
    big = [g for g in groups if len(g) > quota]
    keep = list(small)
    for i, g in enumerate(sorted(big, key=len)):
        share = spare // (len(big) - i)
        take = min(len(g), share)
        keep.append(rng.choice(g, take, replace=False))
        spare -= take
    return np.sort(np.concatenate(keep))


def fit_genus_check(
    train,
    val,
    *,
    keep: float = DEFAULT_KEEP,
    k: int = DEFAULT_NEIGHBOURS,
    labels=None,
    max_reference: int = MAX_REFERENCE,
    seed: int = 0,
    member: str | None = None,
    **info,
) -> GenusCheck:
    """The reference set from training features, the threshold from validation features.

    Parameters
    ----------
    train, val : array_like, shape (N, D)
        Features (:func:`embed`) of training and validation slices; the validation
        specimens must be others than the training ones (the threshold then holds for
        new specimens).
    keep : float in (0.5, 1)
        Share of validation sections to accept.
    k : int >= 1
        The neighbour whose distance is the novelty.
    labels : array_like, optional
        Genus of each training row; with more than `max_reference` rows, the reference
        is drawn evenly over them (else at random).
    max_reference : int
    seed : int
        Draw of the reference when it is cut down.
    member : str, optional
        The ensemble member the features come from (stored in ``info``).
    **info
        Stored in the check's ``info`` (e.g. ``model_sha256``, ``size``).

    Raises
    ------
    GenusCheckError
        Too few rows (under 20 training or 10 validation), mismatched widths, bad
        `keep` or `k`.
    """
    if not (isinstance(keep, float | int) and not isinstance(keep, bool) and 0.5 < keep < 1):
        raise GenusCheckError(f"keep = {keep!r} is invalid: expected a share in (0.5, 1)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GenusCheckError(f"k = {k!r} is invalid: expected an integer >= 1")
    if isinstance(max_reference, bool) or not isinstance(max_reference, int) or max_reference < k:
        raise GenusCheckError(f"max_reference = {max_reference!r} is invalid: expected >= k")
    tr, va = normalise(train), normalise(val)
    if len(tr) < max(20, k) or len(va) < 10:
        raise GenusCheckError(
            f"the genus check needs at least {max(20, k)} training and 10 validation slices, "
            f"got {len(tr)} and {len(va)}"
        )
    if tr.shape[1] != va.shape[1]:
        raise GenusCheckError(
            f"training and validation features differ in width: {tr.shape[1]} and {va.shape[1]}"
        )
    if labels is not None and len(np.asarray(labels)) != len(tr):
        raise GenusCheckError(f"labels has {len(np.asarray(labels))} rows, train has {len(tr)}")
    rows = _reference_rows(
        np.zeros(len(tr)) if labels is None else np.asarray(labels), max_reference, seed
    )
    reference = tr[rows].astype(np.float16)
    details = {"member": member, "n_train": len(tr), "n_reference": len(rows), "n_val": len(va)}
    check = GenusCheck(reference, int(k), 1.0, float(keep), {**details, **info})
    threshold = float(np.quantile(check.novelty(va), keep))
    return GenusCheck(reference, int(k), threshold, float(keep), check.info)


# ----------------------------------------------------------------------------- probes
# Mixed into the probe seed, so that the pseudo-taxa are drawn apart from the pretraining
# corpus' (which draws its recipes from the plain seed) and from the development set k
# was chosen on: 12 recipes out of 10**6 meet the corpus' 48 with a chance under 1e-3.
_PROBE_TAG = 0x6E0E1


def unknown_taxa_sections(
    slicing,
    *,
    seed: int = 0,
    n_taxa: int = 12,
    specimens_per_taxon: int = 2,
    sections_per_specimen: int = 16,
    shape: int = 96,
    supersample: int = 2,
    n_jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Sections of virtual shells of taxa the collection lacks (unknown-genus probes).

    Pseudo-taxa of :func:`foramlib.virtual.shells.shell_taxa`, rendered through the
    collection's scan simulation and cut by the collection's slicer, as the pretraining
    corpus is, but from other recipes.

    Parameters
    ----------
    slicing : foramlib.dataset.slicing.SlicingConfig
        The collection's slicing (same preprocessing as the training slices).
    seed : int
        Recipes, specimens and cuts.
    n_taxa, specimens_per_taxon, sections_per_specimen, shape, supersample : int
    n_jobs : int
        Worker processes (the sections do not depend on it).

    Returns
    -------
    images : ndarray of uint8, shape (N, S, S)
    rows : DataFrame
        ``specimen_id`` and ``taxon`` of each section.
    """
    from foramlib.learn.pretraining import CorpusConfig, _corpus_job, corpus_plans
    from foramlib.workers import volume_pool

    probe_seed = int(np.random.SeedSequence([int(seed), _PROBE_TAG]).generate_state(1)[0])
    config = CorpusConfig(
        n_taxa=n_taxa,
        specimens_per_taxon=specimens_per_taxon,
        slices_per_specimen=sections_per_specimen,
        shape=shape,
        supersample=supersample,
        seed=probe_seed,
    )
    plans = corpus_plans(config)
    with volume_pool(int(n_jobs), portable=True) as pool:
        results = list(pool.map(_corpus_job, [(p, config, slicing) for p in plans]))
    images, frames = [], []
    for plan, (imgs, _, _) in zip(plans, results, strict=True):
        if progress:
            progress(f"{plan.specimen_id}: {len(imgs)} sections")
        if len(imgs):
            images.append(imgs)
            frames.append(pd.DataFrame({"specimen_id": plan.specimen_id, "taxon": plan.species},
                                       index=range(len(imgs))))  # fmt: skip
    if not images:
        raise GenusCheckError("no probe volume gave a usable section")
    return np.concatenate(images), pd.concat(frames, ignore_index=True)


def scan_novelty(novelty, specimens) -> pd.Series:
    """Median section novelty of each specimen (the scan rule's statistic)."""
    return pd.Series(np.asarray(novelty, np.float64)).groupby(np.asarray(specimens)).median()


def measure(check: GenusCheck, genuine, genuine_specimens, unknown, unknown_specimens):
    """How often genuine sections and scans are kept and unknown taxa let through.

    Parameters
    ----------
    check : GenusCheck
    genuine : array_like, shape (N, D)
        Features of held-out sections of the known genera (the test split; never used
        to fit or set the check).
    genuine_specimens : sequence of str, length N
    unknown : array_like, shape (M, D)
        Features of :func:`unknown_taxa_sections`.
    unknown_specimens : sequence of str, length M

    Returns
    -------
    pandas.DataFrame
        One row per family: ``inputs``, ``accepted`` (share), ``goal`` and ``met``.
    """
    rows = []
    for family, feats, specimens, goal in (
        ("known genera", genuine, genuine_specimens, ">= 0.95"),
        ("unknown taxa (virtual)", unknown, unknown_specimens, "<= 0.05"),
    ):
        nov = check.novelty(feats)
        per_scan = scan_novelty(nov, specimens)
        for unit, values in (("sections", nov), ("scans", per_scan.to_numpy())):
            accepted = float(np.mean(values <= check.threshold))
            met = accepted >= 0.95 if goal.startswith(">=") else accepted <= 0.05
            rows.append(dict(family=f"{family}: {unit}", inputs=len(values),
                             accepted=round(accepted, 3), goal=goal, met=met))  # fmt: skip
    return pd.DataFrame(rows)
