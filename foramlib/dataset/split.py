"""Specimen-grouped train/val/test split with balanced per-genus slice counts.

The paper assigns every 3D model wholly to one split ("specimen-level splitting") and
optimises "dataset balance ... using brute-force coefficient of variation minimization"
(§2.1, Table 3). Here the unit is the *specimen*: repeat scans of one specimen share a
``specimen_id`` and always land in the same split, so nothing leaks between splits.

How the search works
--------------------
1. Per genus, :func:`allocate_specimens` fixes how many specimens go to each split.
2. Per genus, every assignment consistent with those counts is enumerated and reduced
   to its distinct per-split slice-count vectors (the *candidates*).
3. One candidate per genus is chosen to minimise :func:`split_objective` -- exhaustively
   when the joint space is small, otherwise by coordinate descent with restarts.

Examples
--------
>>> import pandas as pd
>>> specimens = pd.DataFrame({
...     "specimen_id": ["a1", "a2", "a3", "b1", "b2", "b3", "b4"],
...     "species": ["Alpha"] * 3 + ["Beta"] * 4,
...     "n_volumes": [1, 1, 2, 1, 1, 1, 1],
...     "n_slices": [100, 120, 90, 80, 110, 95, 105],
... })
>>> result = search_split(specimens)
>>> result.method
'exhaustive'
>>> result.assignment.groupby("species")["split"].nunique().tolist()
[3, 3]
>>> table3(result.assignment)["Split"].tolist()
['Training', 'Validation', 'Test']
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

__all__ = [
    "SPLITS",
    "SPLIT_NAMES",
    "SplitError",
    "SplitResult",
    "coefficient_of_variation",
    "balance_quality",
    "validate_fractions",
    "allocate_specimens",
    "split_objective",
    "search_split",
    "table2",
    "table3",
    "split_slices",
    "specimen_table",
]

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}

#: Upper CV (%) bounds of the balance labels, checked in order (see :func:`balance_quality`).
BALANCE_THRESHOLDS = (("Excellent", 15.0), ("Good", 22.0), ("Acceptable", 30.0))

REQUIRED_COLUMNS = ("specimen_id", "species", "n_volumes", "n_slices")

_CHUNK = 65_536  # joint assignments scored at once in the exhaustive search


class SplitError(ValueError):
    """The specimens cannot be split as asked (bad input or impossible constraints)."""


# --------------------------------------------------------------------------- metrics


def coefficient_of_variation(counts) -> float:
    """Coefficient of variation in percent: sample std (``ddof=1``) / mean x 100.

    This is the balance measure of the paper's Table 3, computed over the per-genus
    slice counts of one split.

    Parameters
    ----------
    counts : array-like of float
        At least two non-negative, finite numbers with a positive mean.

    Returns
    -------
    float

    Raises
    ------
    SplitError
        For fewer than two values, negative or non-finite values, or a zero mean.

    Examples
    --------
    >>> round(coefficient_of_variation([90, 100, 110]), 2)
    10.0
    """
    try:
        x = np.asarray(counts, dtype=float).ravel()
    except (TypeError, ValueError):
        raise SplitError(f"counts = {counts!r} must be numbers") from None
    if x.size < 2:
        raise SplitError(f"counts = {x.tolist()} needs at least 2 values for a sample CV")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise SplitError(f"counts = {x.tolist()} must be finite and non-negative")
    mean = x.mean()
    if mean == 0:
        raise SplitError(f"counts = {x.tolist()} have mean 0; the CV is undefined")
    return float(x.std(ddof=1) / mean * 100.0)


def balance_quality(cv_percent: float) -> str:
    """Label a CV (%) as in the paper's Table 3.

    The paper prints the labels but not the thresholds; these agree with its three rows
    (13.91 Excellent, 20.58 Good, 24.72 Acceptable):

    ============  ================
    CV (%)        label
    ============  ================
    < 15          ``"Excellent"``
    15 to < 22    ``"Good"``
    22 to < 30    ``"Acceptable"``
    >= 30         ``"Poor"``
    ============  ================

    Examples
    --------
    >>> balance_quality(13.91), balance_quality(24.72), balance_quality(30)
    ('Excellent', 'Acceptable', 'Poor')
    """
    try:
        cv = float(cv_percent)
    except (TypeError, ValueError):
        raise SplitError(f"cv_percent = {cv_percent!r} must be a number") from None
    if not math.isfinite(cv) or cv < 0:
        raise SplitError(f"cv_percent = {cv_percent!r} must be finite and non-negative")
    for label, upper in BALANCE_THRESHOLDS:
        if cv < upper:
            return label
    return "Poor"


def validate_fractions(fractions) -> tuple[float, float, float]:
    """Check the train/val/test fractions: three positive finite numbers summing to 1.

    Examples
    --------
    >>> validate_fractions([0.4, 0.13, 0.47])
    (0.4, 0.13, 0.47)
    >>> validate_fractions([0.5, 0.5, 0.2])
    Traceback (most recent call last):
    ...
    foramlib.dataset.split.SplitError: split.fractions = [0.5, 0.5, 0.2] must sum to 1 (got 1.2)
    """
    try:
        values = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise SplitError(
            f"split.fractions = {fractions!r} must be three numbers (train, val, test)"
        ) from None
    if len(values) != len(SPLITS):
        raise SplitError(
            f"split.fractions = {values} must have 3 values (train, val, test), got {len(values)}"
        )
    for name, value in zip(SPLITS, values, strict=True):
        if not math.isfinite(value) or value <= 0:
            raise SplitError(
                f"split.fractions = {values} must be positive finite numbers; {name!r} is {value}"
            )
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        raise SplitError(f"split.fractions = {values} must sum to 1 (got {total:.6g})")
    return tuple(values)


def allocate_specimens(n: int, fractions, species: str = "?") -> tuple[int, int, int]:
    """How many of a genus's `n` specimens go to train, val and test.

    Largest-remainder rounding of ``n * fractions`` (ties go to the earlier split); then
    every split that got none takes one from the split with the most specimens (ties:
    the one furthest above its exact share ``n * fraction``, then the earlier split).

    Raises
    ------
    SplitError
        If ``n < 3``: some split would lack the genus.

    Examples
    --------
    >>> allocate_specimens(16, (0.4, 0.13, 0.47))
    (6, 2, 8)
    >>> allocate_specimens(4, (0.4, 0.13, 0.47))
    (1, 1, 2)
    """
    f = np.array(validate_fractions(fractions))
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise SplitError(f"genus {species!r}: number of specimens n = {n!r} must be an integer")
    n = int(n)
    if n < len(SPLITS):
        raise SplitError(
            f"genus {species!r} has {n} specimens; at least 3 are needed so that every "
            "split gets one"
        )
    exact = n * f
    counts = np.floor(exact + 1e-9).astype(int)
    remainders = exact - counts
    # stable sort on -remainder: ties keep split order
    for i in np.argsort(-remainders, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for empty in range(len(SPLITS)):
        if counts[empty] == 0:
            # max count first, then largest surplus over the exact share, then split order
            donor = min(range(len(SPLITS)), key=lambda i: (-counts[i], -(counts[i] - exact[i])))
            counts[donor] -= 1
            counts[empty] += 1
    return tuple(int(c) for c in counts)


def split_objective(counts, fractions) -> float:
    """The balance objective that :func:`search_split` minimises.

    ``mean_j CV_j + 100 * mean_j |share_j - fraction_j|`` over the splits ``j``, where
    ``CV_j`` is :func:`coefficient_of_variation` (%) of the per-genus slice counts in
    split ``j`` and ``share_j`` is split ``j``'s share of all slices. The second term is
    a small penalty for drifting from the target fractions: one percentage point of
    drift costs as much as one point of CV.

    Parameters
    ----------
    counts : array-like, shape (n_genera, 3)
        Slice counts per genus (rows) and split (train, val, test).
    fractions : sequence of 3 floats

    Examples
    --------
    >>> round(split_objective([[40, 13, 47], [40, 13, 47]], (0.4, 0.13, 0.47)), 6)
    0.0
    """
    f = np.array(validate_fractions(fractions))
    x = np.asarray(counts, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(SPLITS) or x.shape[0] < 2:
        raise SplitError(f"counts must have shape (n_genera >= 2, 3), got {x.shape}")
    for j in range(len(SPLITS)):
        coefficient_of_variation(x[:, j])  # validates the column
    return float(_objective(x, f))


def _objective(counts: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Vectorised objective over leading axes of ``counts`` with shape (..., genera, 3)."""
    cv = counts.std(axis=-2, ddof=1) / counts.mean(axis=-2) * 100.0
    split_totals = counts.sum(axis=-2)
    shares = split_totals / split_totals.sum(axis=-1, keepdims=True)
    return cv.mean(axis=-1) + 100.0 * np.abs(shares - fractions).mean(axis=-1)


def _objective_from_sums(s: np.ndarray, q: np.ndarray, g: int, fractions: np.ndarray):
    """Objective from per-split sums ``s`` and sums of squares ``q`` over ``g`` genera."""
    var = np.maximum(q - s * s / g, 0.0) / (g - 1)
    cv = np.sqrt(var) / (s / g) * 100.0
    shares = s / s.sum(axis=-1, keepdims=True)
    return cv.mean(axis=-1) + 100.0 * np.abs(shares - fractions).mean(axis=-1)


# --------------------------------------------------------------------------- input


def _validate_specimens(specimens: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(specimens, pd.DataFrame):
        raise SplitError(f"specimens must be a pandas DataFrame, got {type(specimens).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in specimens.columns]
    if missing:
        raise SplitError(
            f"specimen table lacks column(s) {missing}; it has {list(specimens.columns)}"
        )
    if specimens.empty:
        raise SplitError("specimen table is empty; there is nothing to split")
    df = specimens.drop(columns="split", errors="ignore").reset_index(drop=True)
    for col in ("specimen_id", "species"):
        bad = df[col].isna()
        if bad.any():
            raise SplitError(f"specimen table row {int(bad.idxmax())} has no {col}")
    species_per_id = df.groupby("specimen_id", sort=True)["species"].unique()
    for sid, names in zip(species_per_id.index.tolist(), species_per_id, strict=True):
        if len(names) > 1:
            raise SplitError(
                f"specimen {sid!r} is listed under {len(names)} species: "
                f"{sorted(map(str, names))}; a specimen belongs to one genus"
            )
    dup = df["specimen_id"].duplicated()
    if dup.any():
        sid = df["specimen_id"].tolist()[int(dup.idxmax())]
        n = int((df["specimen_id"] == sid).sum())
        raise SplitError(
            f"specimen {sid!r} appears in {n} rows; the table needs one row per specimen "
            "(sum n_volumes and n_slices of its scans)"
        )
    for col, low in (("n_slices", 1), ("n_volumes", 1)):
        for sid, value in zip(df["specimen_id"].tolist(), df[col].tolist(), strict=True):
            if not _is_whole(value) or value < 0:
                raise SplitError(
                    f"specimen {sid!r}: {col} = {value!r} must be a non-negative integer"
                )
            if value < low:
                why = (
                    "it cannot carry its genus into a split; drop it upstream"
                    if col == "n_slices"
                    else "every specimen has at least one scan"
                )
                raise SplitError(f"specimen {sid!r} has {col} = {value!r}; {why}")
        df[col] = df[col].astype(np.int64)
    if df["species"].nunique() < 2:
        raise SplitError(
            f"only one genus ({df['species'].iloc[0]!r}); the CV of per-genus counts "
            "needs at least 2"
        )
    return df


def _is_whole(value) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and value == int(value)


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class _Genus:
    """Distinct per-split slice-count vectors of one genus and one assignment for each."""

    species: str
    specimen_ids: np.ndarray  # sorted
    counts: np.ndarray  # (m, 3) int64, distinct rows
    labels: np.ndarray  # (m, n) int8: split index of each specimen
    n_assignments: int  # assignments enumerated (or sampled) before de-duplication
    sampled: bool


def _combos(n: int, k: int) -> np.ndarray:
    flat = np.fromiter(
        (i for c in combinations(range(n), k) for i in c), dtype=np.intp, count=math.comb(n, k) * k
    )
    return flat.reshape(-1, k)


def _enumerate_labels(n: int, alloc: tuple[int, int, int]) -> np.ndarray:
    """Every labelling of ``n`` items with ``alloc`` items per split, lexicographic order."""
    k0, k1, _ = alloc
    train = _combos(n, k0)  # (C0, k0)
    in_train = np.zeros((len(train), n), dtype=bool)
    np.put_along_axis(in_train, train, True, axis=1)
    rest = np.argsort(in_train, axis=1, kind="stable")[:, : n - k0]  # ascending, not in train
    val = rest[:, _combos(n - k0, k1)]  # (C0, C1, k1)
    c0, c1 = val.shape[:2]
    labels = np.full((c0, c1, n), 2, dtype=np.int8)
    labels[np.repeat(np.arange(c0), k0), :, train.ravel()] = 0
    np.put_along_axis(labels, val, np.int8(1), axis=2)
    return labels.reshape(c0 * c1, n)


def _sample_labels(n: int, alloc, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.repeat(np.arange(len(SPLITS), dtype=np.int8), alloc)
    return rng.permuted(np.tile(base, (size, 1)), axis=1)


def _genus_candidates(species, group, fractions, max_assignments, rng) -> _Genus:
    group = group.sort_values("specimen_id", kind="stable")
    slices = group["n_slices"].to_numpy(np.int64)
    n = len(slices)
    alloc = allocate_specimens(n, fractions, species=species)
    total = math.factorial(n) // math.prod(math.factorial(k) for k in alloc)
    sampled = total > max_assignments
    if sampled:
        labels = _sample_labels(n, alloc, max_assignments, rng)
    else:
        labels = _enumerate_labels(n, alloc)
    counts = np.stack([(labels == j) @ slices for j in range(len(SPLITS))], axis=1)
    key = counts[:, 0] * (slices.sum() + 1) + counts[:, 1]
    _, first = np.unique(key, return_index=True)  # first occurrence = deterministic pick
    first.sort()
    return _Genus(
        species=species,
        specimen_ids=group["specimen_id"].to_numpy(),
        counts=counts[first],
        labels=labels[first],
        n_assignments=len(labels),
        sampled=sampled,
    )


# --------------------------------------------------------------------------- search


@dataclass(frozen=True, eq=False)
class SplitResult:
    """Outcome of :func:`search_split`.

    Attributes
    ----------
    assignment : DataFrame
        The input rows plus a ``split`` column (``"train"``, ``"val"``, ``"test"``),
        sorted by species then specimen_id.
    objective : float
        :func:`split_objective` of the chosen split (lower is better).
    method : str
        ``"exhaustive"`` (the true optimum) or ``"coordinate-descent"``.
    n_candidates : int
        Joint assignments (one candidate per genus) whose objective was evaluated.
    seconds : float
        Wall time of the search.
    seed : int
    fractions : tuple of float
    """

    assignment: pd.DataFrame
    objective: float
    method: str
    n_candidates: int
    seconds: float
    seed: int
    fractions: tuple

    @property
    def cv(self) -> dict[str, float]:
        """CV (%) of per-genus slice counts, per split."""
        t3 = table3(self.assignment)
        return dict(zip(SPLITS, t3["CV (%)"].astype(float), strict=True))


def _exhaustive(genera: list[_Genus], fractions: np.ndarray) -> tuple[np.ndarray, int]:
    shape = tuple(len(g.counts) for g in genera)
    n_total = math.prod(shape)
    best_value, best_flat = np.inf, 0
    for start in range(0, n_total, _CHUNK):
        flat = np.arange(start, min(start + _CHUNK, n_total))
        idx = np.unravel_index(flat, shape)
        counts = np.stack([g.counts[i] for g, i in zip(genera, idx, strict=True)], axis=1)
        values = _objective(counts.astype(float), fractions)
        k = int(np.argmin(values))
        if values[k] < best_value:
            best_value, best_flat = values[k], int(flat[k])
    return np.array(np.unravel_index(best_flat, shape)), n_total


def _closest_start(genera: list[_Genus], fractions: np.ndarray) -> np.ndarray:
    picks = []
    for g in genera:
        target = g.counts[0].sum() * fractions
        picks.append(int(np.argmin(((g.counts - target) ** 2).sum(axis=1))))
    return np.array(picks)


def _descend(genera, choice: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Re-optimise one genus at a time until a full pass improves nothing."""
    n_genera = len(genera)
    x = np.stack([g.counts[c] for g, c in zip(genera, choice, strict=True)]).astype(float)
    s, q = x.sum(axis=0), (x * x).sum(axis=0)
    current = float(_objective_from_sums(s, q, n_genera, fractions))
    evaluated = 1
    improved = True
    while improved:
        improved = False
        for gi, g in enumerate(genera):
            cand = g.counts.astype(float)
            s_new = s - x[gi] + cand
            q_new = q - x[gi] ** 2 + cand**2
            values = _objective_from_sums(s_new, q_new, n_genera, fractions)
            evaluated += len(values)
            k = int(np.argmin(values))  # ties: lowest candidate index
            if values[k] < current - 1e-9:
                choice[gi], current, improved = k, float(values[k]), True
                s, q, x[gi] = s_new[k], q_new[k], cand[k]
    return choice, current, evaluated


def _coordinate_descent(genera, fractions, restarts: int, rng) -> tuple[np.ndarray, int]:
    starts = [_closest_start(genera, fractions)]
    for _ in range(restarts - 1):
        starts.append(np.array([rng.integers(len(g.counts)) for g in genera]))
    best, best_value, total = None, np.inf, 0
    for start in starts:
        choice, value, evaluated = _descend(genera, start.copy(), fractions)
        total += evaluated
        if value < best_value - 1e-9:
            best, best_value = choice, value
    return best, total


def search_split(
    specimens: pd.DataFrame,
    fractions=(0.4, 0.13, 0.47),
    *,
    seed: int = 0,
    max_exhaustive: int = 200_000,
    restarts: int = 20,
    max_genus_assignments: int = 2_000_000,
) -> SplitResult:
    """Assign whole specimens to train/val/test, balancing per-genus slice counts.

    Per genus, :func:`allocate_specimens` fixes the number of specimens per split. All
    assignments consistent with it are enumerated (``itertools.combinations``) and
    reduced to the distinct per-split slice-count vectors, keeping the first assignment
    (in lexicographic order of the specimen ids) of each vector. One vector per genus is
    then chosen to minimise :func:`split_objective`: the mean CV (%) of the per-genus
    slice counts over the three splits, plus ``100 x`` the mean absolute gap between
    each split's share of all slices and its target fraction.

    * **exhaustive** -- if the product of the per-genus candidate counts is at most
      `max_exhaustive`, every joint choice is scored (vectorised, in chunks): the true
      optimum; ties go to the lowest index (genera sorted by name).
    * **coordinate-descent** (fallback) -- otherwise, from `restarts` starts (the first
      takes for each genus the candidate closest (Euclidean) to its target slice counts
      ``total x fractions``; the others a random candidate per genus drawn from `seed`),
      each genus in turn (sorted by name) is re-optimised with the others fixed, until a
      full pass improves nothing; the best local optimum is kept. A local optimum is
      not guaranteed to be the global one, but the result is never worse than the
      closest-to-target start, and it is deterministic for a given `seed`.

    A genus with more than `max_genus_assignments` consistent assignments (about 18+
    specimens) is not enumerated: a seeded random sample of that many assignments is
    used instead, and the search is coordinate descent.

    Parameters
    ----------
    specimens : DataFrame
        One row per specimen: ``specimen_id``, ``species``, ``n_volumes`` (its scan
        files) and ``n_slices`` (usable slices of all its scans). Other columns are
        carried along.
    fractions : sequence of 3 floats
        Target share of specimens and slices for train, val, test (sum 1). The default
        is the paper's Table 2 split (44,103 / 14,046 / 51,468 slices).
    seed : int
        Seeds the random restarts (and sampling, if any).
    max_exhaustive : int
        Largest joint search space scored exhaustively.
    restarts : int
        Starts of the coordinate descent (>= 1).
    max_genus_assignments : int
        Largest per-genus enumeration (see above).

    Returns
    -------
    SplitResult

    Raises
    ------
    SplitError
        Missing columns, duplicate specimen ids, a specimen under two species, a
        non-integer, negative or zero ``n_slices``, a single genus, or a genus with
        fewer than 3 specimens.

    Examples
    --------
    >>> import pandas as pd
    >>> specimens = pd.DataFrame({
    ...     "specimen_id": ["a1", "a2", "a3", "b1", "b2", "b3"],
    ...     "species": ["Alpha"] * 3 + ["Beta"] * 3,
    ...     "n_volumes": 1,
    ...     "n_slices": [40, 15, 50, 45, 12, 48],
    ... })
    >>> r = search_split(specimens)
    >>> r.assignment["split"].tolist()
    ['train', 'val', 'test', 'train', 'val', 'test']
    >>> r.cv  # per-split CV (%) of the two genera's slice counts
    {'train': 8.32, 'val': 15.71, 'test': 2.89}
    """
    t0 = time.perf_counter()
    f = np.array(validate_fractions(fractions))
    for name, value, low in (
        ("seed", seed, 0),
        ("max_exhaustive", max_exhaustive, 0),
        ("restarts", restarts, 1),
        ("max_genus_assignments", max_genus_assignments, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise SplitError(f"{name} = {value!r} must be an integer >= {low}")
    df = _validate_specimens(specimens)
    rng = np.random.default_rng(seed)
    genera = [
        _genus_candidates(species, group, f, max_genus_assignments, rng)
        for species, group in df.groupby("species", sort=True)
    ]
    space = math.prod(len(g.counts) for g in genera)
    if space <= max_exhaustive and not any(g.sampled for g in genera):
        choice, n_candidates = _exhaustive(genera, f)
        method = "exhaustive"
    else:
        choice, n_candidates = _coordinate_descent(genera, f, restarts, rng)
        method = "coordinate-descent"

    split_of = {}
    for g, c in zip(genera, choice, strict=True):
        for sid, label in zip(g.specimen_ids, g.labels[c], strict=True):
            split_of[sid] = SPLITS[label]
    out = df.assign(split=df["specimen_id"].map(split_of))
    out = out.sort_values(["species", "specimen_id"], kind="stable").reset_index(drop=True)
    counts = np.stack([g.counts[c] for g, c in zip(genera, choice, strict=True)])
    return SplitResult(
        assignment=out,
        objective=split_objective(counts, f),
        method=method,
        n_candidates=int(n_candidates),
        seconds=time.perf_counter() - t0,
        seed=int(seed),
        fractions=tuple(float(v) for v in f),
    )


# --------------------------------------------------------------------------- tables


def _split_counts(assignment: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("species", "n_slices", "split") if c not in assignment.columns]
    if missing:
        raise SplitError(f"assignment lacks column(s) {missing}")
    unknown = sorted(set(assignment["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise SplitError(f"assignment has unknown split name(s) {unknown}; expected {SPLITS}")
    counts = assignment.pivot_table(
        index="species", columns="split", values="n_slices", aggfunc="sum", fill_value=0
    )
    return counts.reindex(columns=list(SPLITS), fill_value=0).astype(np.int64)


def table2(assignment: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2: specimens' slices per genus and split, plus a TOTAL row.

    Rows are ordered by 3D models (the sum of ``n_volumes``) descending, then name.

    Examples
    --------
    >>> a = pd.DataFrame({"species": ["A", "A", "A", "B", "B", "B"],
    ...                   "n_volumes": [1, 1, 1, 2, 1, 1],
    ...                   "n_slices": [5, 2, 6, 4, 1, 5],
    ...                   "split": ["train", "val", "test"] * 2})
    >>> table2(a)["Species"].tolist(), table2(a)["Total Slices"].tolist()
    (['B', 'A', 'TOTAL'], [10, 13, 23])
    """
    if "n_volumes" not in assignment.columns:
        raise SplitError("assignment lacks column(s) ['n_volumes']")
    counts = _split_counts(assignment)
    models = assignment.groupby("species")["n_volumes"].sum().astype(np.int64)
    t = pd.DataFrame(
        {
            "Species": counts.index.astype(str),
            "3D Models": models.reindex(counts.index).to_numpy(),
            **{SPLIT_NAMES[s]: counts[s].to_numpy() for s in SPLITS},
        }
    )
    t["Total Slices"] = t[[SPLIT_NAMES[s] for s in SPLITS]].sum(axis=1)
    t = t.sort_values(["3D Models", "Species"], ascending=[False, True], kind="stable")
    total = t.drop(columns="Species").sum().to_dict()
    t = pd.concat([t, pd.DataFrame([{"Species": "TOTAL", **total}])], ignore_index=True)
    return t.astype({c: np.int64 for c in t.columns if c != "Species"})


def table3(assignment: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 3: total slices, CV (%) over genera and balance label per split.

    The label is :func:`balance_quality` of the CV rounded to 2 decimals, as shown.

    Examples
    --------
    >>> a = pd.DataFrame({"species": ["A", "A", "A", "B", "B", "B"],
    ...                   "n_slices": [5, 2, 6, 4, 1, 5],
    ...                   "split": ["train", "val", "test"] * 2})
    >>> table3(a)["Total Images"].tolist()
    [9, 3, 11]
    """
    counts = _split_counts(assignment)
    rows = []
    for s in SPLITS:
        cv = round(coefficient_of_variation(counts[s].to_numpy()), 2)
        rows.append((SPLIT_NAMES[s], int(counts[s].sum()), cv, balance_quality(cv)))
    return pd.DataFrame(rows, columns=["Split", "Total Images", "CV (%)", "Balance Quality"])


def split_slices(index: pd.DataFrame, assignment: pd.DataFrame) -> pd.DataFrame:
    """Add each slice's ``split`` to a per-slice index, by its ``specimen_id``.

    Row order and index are kept; an existing ``split`` column is replaced.

    Raises
    ------
    SplitError
        A slice whose specimen has no assignment, or (when both tables have a
        ``species`` column) whose species differs from its specimen's.

    Examples
    --------
    >>> a = pd.DataFrame({"specimen_id": ["s1", "s2"], "split": ["train", "test"]})
    >>> idx = pd.DataFrame({"specimen_id": ["s2", "s1", "s2"], "slice": [0, 0, 1]})
    >>> split_slices(idx, a)["split"].tolist()
    ['test', 'train', 'test']
    """
    for name, table in (("index", index), ("assignment", assignment)):
        need = ["specimen_id"] + (["split"] if name == "assignment" else [])
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise SplitError(f"{name} lacks column(s) {missing}")
    split_of = assignment.drop_duplicates("specimen_id").set_index("specimen_id")["split"]
    split = index["specimen_id"].map(split_of)
    if split.isna().any():
        absent = pd.unique(index.loc[split.isna(), "specimen_id"])
        shown = ", ".join(repr(s) for s in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise SplitError(
            f"slices of specimen(s) {shown}{more} have no split assignment; "
            "rerun the split stage on the current slice index"
        )
    if "species" in index.columns and "species" in assignment.columns:
        species_of = assignment.drop_duplicates("specimen_id").set_index("specimen_id")["species"]
        wrong = index["species"].to_numpy() != index["specimen_id"].map(species_of).to_numpy()
        if wrong.any():
            row = index.loc[wrong].iloc[0]
            raise SplitError(
                f"specimen {row['specimen_id']!r}: slice species {row['species']!r} differs "
                f"from the split table's {species_of[row['specimen_id']]!r}"
            )
    return index.assign(split=split.to_numpy())


def add_training_reserve(index: pd.DataFrame, reserve: pd.DataFrame | None) -> pd.DataFrame:
    """Append the training specimens' reserve sections to a split slice index.

    The slice stage can cut a *training reserve* (``slice.train_factor``): more
    sections of every volume, drawn apart from the ordinary ones. Only the reserve of
    specimens assigned to ``train`` joins, as training slices; validation and test keep
    their ordinary slices, and the split itself was searched on those alone.

    Parameters
    ----------
    index : DataFrame
        The ordinary slices with their ``split`` (:func:`split_slices`).
    reserve : DataFrame or None
        The reserve's index (:func:`foramlib.dataset.slicing.load_reserve`); None
        returns `index` unchanged.

    Raises
    ------
    SplitError
        A reserve slice whose specimen has no split, or a slice id in both tables.

    Examples
    --------
    >>> idx = pd.DataFrame({"slice_id": ["a:0", "b:0"], "specimen_id": ["A", "B"],
    ...                     "split": ["train", "test"]})
    >>> res = pd.DataFrame({"slice_id": ["a.r:0", "b.r:0"], "specimen_id": ["A", "B"]})
    >>> add_training_reserve(idx, res)[["slice_id", "split"]].values.tolist()
    [['a:0', 'train'], ['b:0', 'test'], ['a.r:0', 'train']]
    """
    if reserve is None:
        return index
    if "split" not in index.columns:
        raise SplitError("index lacks column(s) ['split']")
    assignment = index[["specimen_id", "split"]].drop_duplicates("specimen_id")
    missing = sorted(set(reserve["specimen_id"]) - set(assignment["specimen_id"]))
    if missing:
        raise SplitError(
            f"the training reserve has slices of specimen(s) {missing[:5]} that have no "
            "ordinary slice; re-run the slice stage"
        )
    reserve = split_slices(reserve, assignment)
    reserve = reserve[reserve["split"] == "train"]
    clash = set(reserve["slice_id"]) & set(index["slice_id"])
    if clash:
        raise SplitError(f"slice id(s) {sorted(clash)[:3]} are both ordinary and reserve slices")
    return pd.concat([index, reserve[list(index.columns)]], ignore_index=True)


def specimen_table(index: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Per specimen: species, scan files (from the manifest) and usable slices (index).

    The input of :func:`search_split`. A specimen of the manifest without any slice
    gets ``n_slices = 0`` (which :func:`search_split` refuses, naming it).

    Examples
    --------
    >>> m = pd.DataFrame({"file": ["a", "a2", "b"], "specimen_id": ["A", "A", "B"],
    ...                   "species": ["X", "X", "Y"]})
    >>> idx = pd.DataFrame({"specimen_id": ["A", "A", "B"], "species": ["X", "X", "Y"]})
    >>> specimen_table(idx, m).to_dict("records")
    [{'specimen_id': 'A', 'species': 'X', 'n_volumes': 2, 'n_slices': 2}, \
{'specimen_id': 'B', 'species': 'Y', 'n_volumes': 1, 'n_slices': 1}]
    """
    vols = manifest.groupby("specimen_id").agg(
        species=("species", "first"), n_volumes=("file", "count")
    )
    slices = index.groupby("specimen_id").size().rename("n_slices")
    table = vols.join(slices, how="left").fillna({"n_slices": 0})
    table["n_slices"] = table["n_slices"].astype(int)
    return table.reset_index()[["specimen_id", "species", "n_volumes", "n_slices"]]
