"""Top-k voting and PatchEnsemble, decided on validation data only.

Every choice an ensemble needs (which members, in what order; the main model, its
"weak" classes and the patch model of the PatchEnsemble) is made here from the members'
VALIDATION probabilities and recorded in an :class:`EnsembleSpec`. Applying a spec to test
slices (or to a new slice) uses only the recorded choices, so the test set is touched once,
in evaluation. The choosing functions take validation predictions only; none accepts test
data.

The PatchEnsemble is the rule of the authors' released code, kept general: for a slice
whose main-model top-1 is a weak class, take the patch model's distribution when its
maximum probability is higher than the main model's. The authors fixed main
(ConvNeXt-Large), patch (EfficientNetV2-S) and the weak classes (Baculogypsina,
Orbitoides) by looking at results; :func:`choose_patch` picks all three on validation.

Examples
--------
>>> import numpy as np
>>> main = np.array([[0.6, 0.4, 0.0], [0.1, 0.5, 0.4]])
>>> patch = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8]])
>>> PatchEnsemble("m", "p", weak=("B",), names=("A", "B", "C")).apply(main, patch).tolist()
[[0.6, 0.4, 0.0], [0.0, 0.2, 0.8]]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from foramlib.evaluation.metrics import Predictions, align, report_from_probs
from foramlib.evaluation.reports import OVERALL_KEYS, Report
from foramlib.io.atomic import write_text

__all__ = [
    "EnsembleError",
    "rank_members",
    "soft_vote",
    "majority_vote",
    "PatchEnsemble",
    "choose_patch",
    "EnsembleSpec",
    "check_members",
    "top_k_specs",
    "build_ensembles",
    "save_ensembles",
    "load_ensembles",
    "evaluate_spec",
    "choose_final",
]

KINDS = ("top_k", "patch")
MODES = ("soft", "majority")
TIE_WEIGHT = 1e-6  # weight of the soft mean in majority_vote: orders vote ties only


class EnsembleError(ValueError):
    """An ensemble that cannot be chosen, stored, loaded or applied as asked."""


# --------------------------------------------------------------------------- helpers


def _members(val: Mapping[str, Predictions], at_least: int = 1) -> list[Predictions]:
    if len(val) < at_least:
        raise EnsembleError(
            f"need at least {at_least} member(s) with validation predictions, "
            f"got {len(val)}: {sorted(val)}"
        )
    members = list(val.values())
    align(members)
    return members


def _reports(val: Mapping[str, Predictions]) -> dict[str, Report]:
    return {
        name: report_from_probs(name, p.y_true, p.probs, p.names, p.source)
        for name, p in val.items()
    }


def _stack(probs_list: Sequence[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(p, dtype=np.float64) for p in probs_list]
    if not arrays:
        raise EnsembleError("no member probabilities to combine")
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise EnsembleError(
            f"member probabilities must be 2-D arrays of one shape, "
            f"got shapes {[a.shape for a in arrays]}"
        )
    return np.stack(arrays)


# --------------------------------------------------------------------------- voting


def rank_members(val: Mapping[str, Predictions], metric: str = "macro_f1") -> list[str]:
    """Member names, best validation `metric` first (ties by name).

    Examples
    --------
    >>> a = Predictions.from_arrays("a", [[0.9, 0.1], [0.6, 0.4]], [0, 1], ["A", "B"])
    >>> b = Predictions.from_arrays("b", [[0.9, 0.1], [0.4, 0.6]], [0, 1], ["A", "B"])
    >>> rank_members({"a": a, "b": b})
    ['b', 'a']
    """
    if metric not in OVERALL_KEYS or metric == "n":
        raise EnsembleError(
            f"unknown ranking metric {metric!r}; use one of {[k for k in OVERALL_KEYS if k != 'n']}"
        )
    _members(val)
    scores = {}
    for name, report in _reports(val).items():
        value = report.metric(metric)
        if value is None:
            raise EnsembleError(f"member {name!r}: validation {metric} is undefined")
        scores[name] = value
    return sorted(scores, key=lambda n: (-scores[n], n))


def soft_vote(
    probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """Weighted mean of the members' probabilities (equal weights by default).

    Examples
    --------
    >>> soft_vote([[[0.8, 0.2]], [[0.2, 0.8]]], weights=[3, 1]).round(3).tolist()
    [[0.65, 0.35]]
    """
    stack = _stack(probs_list)
    if weights is None:
        return stack.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise EnsembleError(
            f"weights must be {len(stack)} finite non-negative numbers with a "
            f"positive sum, got {list(np.atleast_1d(weights))}"
        )
    return np.tensordot(w / w.sum(), stack, axes=1)


def majority_vote(probs_list: Sequence[np.ndarray]) -> np.ndarray:
    """Share of the members voting for each class (each member votes its top-1).

    Ties in the vote are broken by the soft mean: the result is
    ``(votes + 1e-6 * soft_mean) / (1 + 1e-6)``, whose rows sum to 1, stay within 1e-6
    of the vote shares, and rank classes by vote share first and by mean probability
    among classes with equal votes (which also orders top-3 and ROC). Should the soft
    means tie too, the first class in class order wins.

    Examples
    --------
    >>> p = majority_vote([[[0.6, 0.4, 0.0]], [[0.0, 0.3, 0.7]]])
    >>> p.round(3).tolist(), int(p.argmax())
    ([[0.5, 0.0, 0.5]], 2)
    """
    stack = _stack(probs_list)
    n_classes = stack.shape[2]
    votes = np.eye(n_classes)[stack.argmax(axis=2)].mean(axis=0)
    return (votes + TIE_WEIGHT * stack.mean(axis=0)) / (1.0 + TIE_WEIGHT)


# --------------------------------------------------------------------------- patch


@dataclass(frozen=True)
class PatchEnsemble:
    """The released PatchEnsemble rule for any main model, patch model and weak classes.

    Parameters
    ----------
    main, patch : str
        Member names (for the record).
    weak : tuple of str
        Class names whose top-1 predictions by the main model may be overridden.
    names : tuple of str
        The class order of both models' probability columns.
    """

    main: str
    patch: str
    weak: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "weak", tuple(self.weak))
        object.__setattr__(self, "names", tuple(self.names))
        if self.main == self.patch:
            raise EnsembleError(f"PatchEnsemble: main and patch are the same model {self.main!r}")
        unknown = [w for w in self.weak if w not in self.names]
        if unknown:
            raise EnsembleError(
                f"PatchEnsemble: weak class(es) {unknown} are not among the "
                f"classes {list(self.names)}"
            )

    def _check(self, main_probs, patch_probs) -> tuple[np.ndarray, np.ndarray]:
        main_probs = np.asarray(main_probs, dtype=np.float64)
        patch_probs = np.asarray(patch_probs, dtype=np.float64)
        shape = (len(main_probs), len(self.names))
        if main_probs.shape != shape or patch_probs.shape != shape:
            raise EnsembleError(
                f"PatchEnsemble {self.main!r}+{self.patch!r}: probabilities must both have "
                f"shape (n, {len(self.names)}), got {main_probs.shape} and {patch_probs.shape}"
            )
        return main_probs, patch_probs

    def switched(self, main_probs, patch_probs) -> np.ndarray:
        """Rows that take the patch model's distribution: the main model's top-1 is weak
        AND the patch model's maximum probability is strictly higher than the main's."""
        main_probs, patch_probs = self._check(main_probs, patch_probs)
        weak_idx = [self.names.index(w) for w in self.weak]
        weak_top1 = np.isin(main_probs.argmax(axis=1), weak_idx)
        return weak_top1 & (patch_probs.max(axis=1) > main_probs.max(axis=1))

    def apply(self, main_probs, patch_probs) -> np.ndarray:
        """Main model's rows, with :meth:`switched` rows taken from the patch model."""
        main_probs, patch_probs = self._check(main_probs, patch_probs)
        mask = self.switched(main_probs, patch_probs)
        return np.where(mask[:, None], patch_probs, main_probs)


def choose_patch(
    val: Mapping[str, Predictions], *, main: str | None = None, n_weak: int = 2
) -> tuple[PatchEnsemble, dict]:
    """Choose main model, weak classes and patch model on VALIDATION predictions.

    Parameters
    ----------
    val : mapping of member name to validation Predictions
        At least two members, aligned (same slices, same class order).
    main : str, optional
        The main model; by default the member with the best validation macro-F1
        (ties by name).
    n_weak : int
        How many classes count as weak: those with the lowest validation F1 of the main
        model (ties by class order), listed worst first.

    Returns
    -------
    (PatchEnsemble, dict)
        The choice, and the evidence for the record: each member's validation macro-F1,
        the main model's per-class F1, the weak classes' F1, and per candidate patch the
        patched validation macro-F1, mean weak-class F1 and number of switched slices.
        The patch is the candidate with the best patched macro-F1 (ties: better mean
        weak-class F1, then name).

    Raises
    ------
    EnsembleError
        Fewer than two members, an unknown `main` (named, with the available members),
        or `n_weak` not in ``1..C-1``.
    foramlib.evaluation.metrics.PredictionError
        Members that do not align.

    Examples
    --------
    >>> names = ["A", "B", "C"]
    >>> y = [0, 1, 2, 2]
    >>> m = Predictions.from_arrays("m", [[.8, .1, .1], [.1, .8, .1], [.1, .2, .7],
    ...                                   [.1, .5, .4]], y, names)
    >>> p = Predictions.from_arrays("p", [[.8, .1, .1], [.4, .5, .1], [.1, .1, .8],
    ...                                   [.1, .1, .8]], y, names)
    >>> choice, evidence = choose_patch({"m": m, "p": p}, main="m", n_weak=1)
    >>> choice.main, choice.patch, choice.weak, evidence["candidates"]["p"]["macro_f1"]
    ('m', 'p', ('B',), 1.0)
    """
    _members(val, at_least=2)
    reports = _reports(val)
    macro = {n: reports[n].overall["macro_f1"] for n in reports}
    if main is None:
        main = sorted(macro, key=lambda n: (-macro[n], n))[0]
    elif main not in val:
        raise EnsembleError(
            f"main model {main!r} has no validation predictions; available members: {sorted(val)}"
        )
    names = list(val[main].names)
    if not isinstance(n_weak, int | np.integer) or not 1 <= n_weak < len(names):
        raise EnsembleError(f"n_weak must be an integer in 1..{len(names) - 1}, got {n_weak!r}")
    f1 = reports[main].per_class["f1"]
    order = sorted(range(len(names)), key=lambda i: (float(f1.iloc[i]), i))
    weak = tuple(names[i] for i in order[:n_weak])
    candidates = {}
    for name in sorted(val):
        if name == main:
            continue
        rule = PatchEnsemble(main, name, weak, tuple(names))
        probs = rule.apply(val[main].probs, val[name].probs)
        report = report_from_probs(f"{main}+{name}", val[main].y_true, probs, names)
        candidates[name] = {
            "macro_f1": report.overall["macro_f1"],
            "weak_mean_f1": float(report.per_class.loc[list(weak), "f1"].mean()),
            "switched": int(rule.switched(val[main].probs, val[name].probs).sum()),
        }
    patch = sorted(
        candidates, key=lambda n: (-candidates[n]["macro_f1"], -candidates[n]["weak_mean_f1"], n)
    )[0]
    evidence = {
        "chosen_on": "validation",
        "n_slices": len(val[main]),
        "member_macro_f1": {n: float(macro[n]) for n in sorted(macro)},
        "main_f1_per_class": {c: float(f1[c]) for c in names},
        "weak_f1": {c: float(f1[c]) for c in weak},
        "candidates": candidates,
    }
    return PatchEnsemble(main, patch, weak, tuple(names)), evidence


# --------------------------------------------------------------------------- specs

_FIELDS = (
    "kind",
    "members",
    "names",
    "mode",
    "k",
    "main",
    "patch",
    "weak",
    "chosen_on",
    "evidence",
)


@dataclass
class EnsembleSpec:
    """A recorded ensemble: everything needed to apply it, and why it was chosen.

    Parameters
    ----------
    kind : {"top_k", "patch"}
    members : tuple of str
        Member names; for ``top_k`` best first, for ``patch`` ``(main, patch)``.
    names : tuple of str
        The class order of every member's probabilities.
    mode : {"soft", "majority"}
        How ``top_k`` combines members (ignored for ``patch``).
    k : int, optional
        Number of members of a ``top_k`` ensemble.
    main, patch : str, optional
        The PatchEnsemble's models.
    weak : tuple of str
        The PatchEnsemble's weak classes.
    chosen_on : str
        Which data the choices were made on (always ``"validation"``).
    evidence : dict
        Validation scores behind the choice, for the record.

    Examples
    --------
    >>> spec = EnsembleSpec("top_k", ("a", "b"), ("A", "B"), k=2)
    >>> EnsembleSpec.from_json(spec.to_json()) == spec
    True
    >>> spec.apply({"a": [[0.9, 0.1]], "b": [[0.5, 0.5]]}).tolist()
    [[0.7, 0.3]]
    """

    kind: str
    members: tuple[str, ...]
    names: tuple[str, ...]
    mode: str = "soft"
    k: int | None = None
    main: str | None = None
    patch: str | None = None
    weak: tuple[str, ...] = ()
    chosen_on: str = "validation"
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = _strings(self.members, "members")
        self.names = _strings(self.names, "names")
        self.weak = _strings(self.weak, "weak")
        if not self.names or len(set(self.names)) != len(self.names):
            raise EnsembleError(
                f"ensemble class names must be distinct and non-empty, got {list(self.names)}"
            )
        if self.kind not in KINDS:
            raise EnsembleError(f"unknown ensemble kind {self.kind!r}; use one of {KINDS}")
        if not self.members or len(set(self.members)) != len(self.members):
            raise EnsembleError(
                f"ensemble members must be distinct and non-empty, got {list(self.members)}"
            )
        if self.kind == "top_k":
            if self.mode not in MODES:
                raise EnsembleError(f"unknown top_k mode {self.mode!r}; use one of {MODES}")
            if self.k != len(self.members):
                raise EnsembleError(
                    f"top_k ensemble with k={self.k!r} lists "
                    f"{len(self.members)} members: {list(self.members)}"
                )
        else:
            if self.members != (self.main, self.patch):
                raise EnsembleError(
                    f"patch ensemble members must be (main, patch) = "
                    f"{(self.main, self.patch)}, got {list(self.members)}"
                )
            self.rule()  # checks the weak classes

    def rule(self) -> PatchEnsemble:
        """The :class:`PatchEnsemble` of a ``patch`` spec."""
        if self.kind != "patch":
            raise EnsembleError(f"a {self.kind} ensemble has no patch rule")
        return PatchEnsemble(self.main, self.patch, self.weak, self.names)

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        d = asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d, source: str = "ensemble spec") -> EnsembleSpec:
        if not isinstance(d, dict):
            raise EnsembleError(f"{source}: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELDS))
        missing = [key for key in ("kind", "members", "names") if key not in d]
        if unknown or missing:
            raise EnsembleError(f"{source}: unknown key(s) {unknown}, missing key(s) {missing}")
        try:
            return cls(**d)
        except EnsembleError as exc:
            raise EnsembleError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise EnsembleError(f"{source}: malformed ensemble spec: {exc}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "ensemble spec") -> EnsembleSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EnsembleError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(d, source)

    def save(self, path) -> Path:
        """Write the spec as JSON, atomically; return the path."""
        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path) -> EnsembleSpec:
        """Read a spec written by :meth:`save` (EnsembleError naming the file if bad)."""
        return cls.from_json(_read(path), source=f"ensemble file {path}")

    # ------------------------------------------------------------------ use
    def apply(self, probs_by_member: Mapping[str, np.ndarray | Predictions]) -> np.ndarray:
        """Combine the members' probabilities with the recorded choices.

        Parameters
        ----------
        probs_by_member : mapping of member name to (n, C) array or Predictions
            Extra entries are ignored. Predictions are also checked for the spec's class
            order and aligned with each other.

        Raises
        ------
        EnsembleError
            A member is missing (named, with those available), or the arrays do not all
            have shape (n, C).
        """
        check_members(self, probs_by_member)
        values = [probs_by_member[m] for m in self.members]
        preds = [v for v in values if isinstance(v, Predictions)]
        for p in preds:
            if tuple(p.names) != self.names:
                raise EnsembleError(
                    f"member {p.name!r} ({p.source}) has classes "
                    f"{list(p.names)}, the ensemble expects {list(self.names)}"
                )
        align(preds)
        arrays = [
            v.probs if isinstance(v, Predictions) else np.asarray(v, dtype=np.float64)
            for v in values
        ]
        stack = _stack(arrays)
        if stack.shape[2] != len(self.names):
            raise EnsembleError(
                f"member probabilities have {stack.shape[2]} columns, the "
                f"ensemble has {len(self.names)} classes"
            )
        if self.kind == "patch":
            return self.rule().apply(stack[0], stack[1])
        return soft_vote(stack) if self.mode == "soft" else majority_vote(stack)


def _strings(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise EnsembleError(f"ensemble {what} must be a list of names, got {value!r}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise EnsembleError(f"ensemble {what} must be strings, got {bad}")
    return tuple(value)


def _read(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"ensemble file {path} does not exist; rerun the ensemble stage")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EnsembleError(f"ensemble file {path} is not text: {exc}") from None


def check_members(spec: EnsembleSpec, available) -> None:
    """Refuse a spec whose members are not all available (trained / predicted).

    Examples
    --------
    >>> spec = EnsembleSpec("top_k", ("a", "b"), ("A", "B"), k=2)
    >>> check_members(spec, ["a"])
    Traceback (most recent call last):
    ...
    foramlib.evaluation.ensemble.EnsembleError: ensemble member(s) ['b'] not available; ...
    """
    missing = [m for m in spec.members if m not in available]
    if missing:
        raise EnsembleError(
            f"ensemble member(s) {missing} not available; available: {sorted(available)}"
        )


# --------------------------------------------------------------------------- building


def _top_k(
    val: Mapping[str, Predictions], ranking: list[str], k: int, mode: str, scores: dict
) -> EnsembleSpec:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise EnsembleError(f"k must be a positive integer, got {k!r}")
    if k > len(ranking):
        raise EnsembleError(
            f"Top-{k} needs {k} members but only {len(ranking)} have "
            f"validation predictions: {ranking}"
        )
    members = tuple(ranking[:k])
    names = tuple(val[members[0]].names)
    spec = EnsembleSpec("top_k", members, names, mode=mode, k=int(k))
    probs = spec.apply({m: val[m].probs for m in members})
    report = report_from_probs(f"Top-{k}", val[members[0]].y_true, probs, names)
    spec.evidence = {
        "chosen_on": "validation",
        "ranking_metric": "macro_f1",
        "member_macro_f1": scores,
        "ranking": list(ranking),
        "ensemble_macro_f1": report.overall["macro_f1"],
    }
    return spec


def top_k_specs(
    val: Mapping[str, Predictions], ks: Sequence[int] = (2, 3, 4), mode: str = "soft"
) -> dict[str, EnsembleSpec]:
    """``{"Top-k": spec}``: the k best members by validation macro-F1, combined by `mode`.

    Raises
    ------
    EnsembleError
        A k larger than the number of members, or below 1; an unknown mode.

    Examples
    --------
    >>> a = Predictions.from_arrays("a", [[0.9, 0.1], [0.6, 0.4]], [0, 1], ["A", "B"])
    >>> b = Predictions.from_arrays("b", [[0.9, 0.1], [0.4, 0.6]], [0, 1], ["A", "B"])
    >>> top_k_specs({"a": a, "b": b}, ks=(2,))["Top-2"].members
    ('b', 'a')
    """
    if mode not in MODES:
        raise EnsembleError(f"unknown top_k mode {mode!r}; use one of {MODES}")
    ranking = rank_members(val)
    reports = _reports(val)
    scores = {n: float(reports[n].overall["macro_f1"]) for n in ranking}
    return {f"Top-{k}": _top_k(val, ranking, k, mode, scores) for k in ks}


def build_ensembles(
    val: Mapping[str, Predictions],
    *,
    ks: Sequence[int] = (2, 3, 4),
    mode: str = "soft",
    main: str | None = None,
    n_weak: int = 2,
) -> dict[str, EnsembleSpec]:
    """All ensembles of the paper, chosen on validation predictions.

    Returns ``{"Top-2": ..., "Top-3": ..., "Top-4": ..., "PatchEnsemble": ...}``; a Top-k
    needing more members than there are is skipped, and every returned spec's evidence
    lists the skipped ones under ``"skipped"``.

    Raises
    ------
    EnsembleError
        Fewer than two members (no ensemble can be built), or the errors of
        :func:`top_k_specs` and :func:`choose_patch`.

    Examples
    --------
    >>> a = Predictions.from_arrays("a", [[0.9, 0.1], [0.6, 0.4]], [0, 1], ["A", "B"])
    >>> b = Predictions.from_arrays("b", [[0.9, 0.1], [0.4, 0.6]], [0, 1], ["A", "B"])
    >>> specs = build_ensembles({"a": a, "b": b}, n_weak=1)
    >>> list(specs), specs["Top-2"].evidence["skipped"]
    (['Top-2', 'PatchEnsemble'], ['Top-3 needs 3 members, 2 available', 'Top-4 needs 4 members, 2 available'])
    """  # noqa: E501
    _members(val, at_least=2)
    usable = [k for k in ks if not (isinstance(k, int | np.integer) and k > len(val))]
    skipped = [f"Top-{k} needs {k} members, {len(val)} available" for k in ks if k not in usable]
    specs = top_k_specs(val, ks=usable, mode=mode)
    choice, evidence = choose_patch(val, main=main, n_weak=n_weak)
    specs["PatchEnsemble"] = EnsembleSpec(
        "patch",
        (choice.main, choice.patch),
        choice.names,
        main=choice.main,
        patch=choice.patch,
        weak=choice.weak,
        evidence=evidence,
    )
    for spec in specs.values():
        spec.evidence["skipped"] = skipped
    return specs


def save_ensembles(specs: Mapping[str, EnsembleSpec], path) -> Path:
    """Write named specs (e.g. :func:`build_ensembles`' result) to one JSON file, atomically.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "ensemble.json"
    >>> specs = {"Top-2": EnsembleSpec("top_k", ("a", "b"), ("A", "B"), k=2)}
    >>> load_ensembles(save_ensembles(specs, f)) == specs
    True
    """
    payload = {"ensembles": {name: spec.to_dict() for name, spec in specs.items()}}
    return write_text(path, json.dumps(payload, indent=2) + "\n")


def load_ensembles(path) -> dict[str, EnsembleSpec]:
    """Read a file written by :func:`save_ensembles` (EnsembleError naming the file if bad)."""
    source = f"ensemble file {path}"
    try:
        payload = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise EnsembleError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("ensembles"), dict):
        raise EnsembleError(f"{source} must hold a JSON object with an 'ensembles' object")
    return {
        name: EnsembleSpec.from_dict(d, f"{source}, ensemble {name!r}")
        for name, d in payload["ensembles"].items()
    }


def evaluate_spec(name: str, spec: EnsembleSpec, predictions: Mapping[str, Predictions]) -> Report:
    """Apply a recorded spec to one split's member predictions and report the result.

    Examples
    --------
    >>> a = Predictions.from_arrays("a", [[0.9, 0.1], [0.6, 0.4]], [0, 1], ["A", "B"])
    >>> b = Predictions.from_arrays("b", [[0.9, 0.1], [0.2, 0.8]], [0, 1], ["A", "B"])
    >>> spec = EnsembleSpec("top_k", ("b", "a"), ("A", "B"), k=2)
    >>> evaluate_spec("Top-2", spec, {"a": a, "b": b}).overall["accuracy"]
    1.0
    """
    probs = spec.apply(predictions)
    first = predictions[spec.members[0]]
    return report_from_probs(
        name,
        first.y_true,
        probs,
        spec.names,
        source=f"{spec.kind} ensemble of {list(spec.members)}",
    )


def choose_final(
    specs: Mapping[str, EnsembleSpec], val: Mapping[str, Predictions], metric: str = "accuracy"
) -> tuple[str, EnsembleSpec]:
    """The final model: the ensemble with the best VALIDATION `metric`.

    The paper reports its PatchEnsemble as final; here the choice among the built
    ensembles is made on validation predictions, like every other choice, so the test
    split only measures it. Ties go to the PatchEnsemble, then to the order of `specs`.

    Examples
    --------
    >>> a = Predictions.from_arrays("a", [[0.9, 0.1], [0.6, 0.4]], [0, 1], ["A", "B"])
    >>> b = Predictions.from_arrays("b", [[0.9, 0.1], [0.2, 0.8]], [0, 1], ["A", "B"])
    >>> name, spec = choose_final(build_ensembles({"a": a, "b": b}, n_weak=1), {"a": a, "b": b})
    >>> name
    'PatchEnsemble'
    """
    if not specs:
        raise EnsembleError("no ensembles to choose the final model from")
    scores = {n: evaluate_spec(n, s, val).overall[metric] for n, s in specs.items()}
    order = sorted(specs, key=lambda n: (-scores[n], n != "PatchEnsemble", list(specs).index(n)))
    return order[0], specs[order[0]]
