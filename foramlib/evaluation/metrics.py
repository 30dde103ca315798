"""Per-slice predictions and the metrics computed from them.

Every trained backbone writes its class probabilities for the validation and test slices
(``models/<backbone>/predictions_val.csv`` and ``predictions_test.csv``, see
:func:`foramlib.learn.training.predictions_frame`). This module reads those files back with
strict checks (:func:`load_predictions`, :func:`align`), turns probabilities into the
shared :class:`~foramlib.evaluation.reports.Report` (:func:`report_from_probs`: the paper's
per-class precision/recall/F1, accuracy, macro and weighted averages, top-3 accuracy and
one-vs-rest ROC AUC), and provides the confusion matrix, ROC curves and a per-specimen
vote (:func:`specimen_accuracy`) that the paper does not report.

Pure NumPy / pandas / scikit-learn: nothing here imports Keras.

Examples
--------
>>> import numpy as np
>>> probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
>>> r = report_from_probs("m", [0, 1, 2, 1], probs, ["A", "B", "C"])
>>> r.overall["accuracy"], float(r.per_class.loc["B", "recall"])
(0.75, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    auc,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

from foramlib.evaluation.reports import Report

__all__ = [
    "PredictionError",
    "Predictions",
    "load_predictions",
    "load_model_predictions",
    "align",
    "report_from_probs",
    "confusion",
    "roc_curves",
    "specimen_votes",
    "specimen_accuracy",
    "specimen_confusion",
]

ROW_SUM_TOLERANCE = 1e-3
_ID_COLUMNS = ("slice_id", "specimen_id", "split", "true", "predicted")


class PredictionError(ValueError):
    """A prediction file or probability array that cannot be evaluated as asked."""


def _show(items, limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True, eq=False)
class Predictions:
    """One model's class probabilities for the slices of one split.

    Parameters
    ----------
    name : str
        Model name (by default the folder the file lies in, e.g. ``"convnext_large"``).
    frame : DataFrame
        The rows of the prediction file (``slice_id``, optionally ``specimen_id``,
        ``split``, ``true``, ``predicted``, ``p_<class>`` ...).
    probs : ndarray of float64, shape (n, C)
        Probabilities, columns in the order of `names`.
    y_true : ndarray of int, shape (n,)
        True class indices into `names`.
    names : list of str
        The model's class order.
    source : str
        Where the predictions come from (a file path).

    Examples
    --------
    >>> p = Predictions.from_arrays("m", [[0.9, 0.1], [0.4, 0.6]], [0, 0], ["A", "B"])
    >>> p.y_pred.tolist(), list(p.frame["predicted"])
    ([0, 1], ['A', 'B'])
    """

    name: str
    frame: pd.DataFrame
    probs: np.ndarray
    y_true: np.ndarray
    names: list[str]
    source: str = ""

    @property
    def y_pred(self) -> np.ndarray:
        """Top-1 class index of each row."""
        return self.probs.argmax(axis=1)

    @property
    def slice_ids(self) -> list[str]:
        return [str(s) for s in self.frame["slice_id"]]

    def __len__(self) -> int:
        return len(self.y_true)

    @classmethod
    def from_arrays(
        cls,
        name,
        probs,
        y_true,
        names,
        *,
        slice_ids=None,
        specimen_ids=None,
        split: str = "",
        source: str = "arrays",
    ) -> Predictions:
        """Build predictions from arrays (synthetic data, tests, a model's fresh output).

        The frame gets the columns :func:`foramlib.learn.training.predictions_frame` writes;
        slice ids default to ``"s0", "s1", ...``.
        """
        names = list(names)
        probs = np.asarray(probs, dtype=np.float64)
        y = np.asarray(y_true)
        where = f"predictions {name!r} ({source})"
        _check_probs(probs, len(names), where)
        y = _check_labels(y, len(names), len(probs), where)
        frame = pd.DataFrame(
            {
                "slice_id": list(slice_ids)
                if slice_ids is not None
                else [f"s{i}" for i in range(len(y))],
                "split": split,
                "true": [names[i] for i in y],
                "predicted": [names[i] for i in probs.argmax(axis=1)],
            }
        )
        if specimen_ids is not None:
            frame.insert(1, "specimen_id", [str(s) for s in specimen_ids])
        probs_df = pd.DataFrame(probs, columns=[f"p_{n}" for n in names])
        frame = pd.concat([frame, probs_df], axis=1)
        return cls(str(name), frame, probs, y, names, source)

    def with_probs(self, name, probs, source: str = "") -> Predictions:
        """The same slices (ids, specimens, split, true labels) with other probabilities.

        For an ensemble's probabilities over the slices of its members' files.

        Examples
        --------
        >>> p = Predictions.from_arrays("m", [[0.9, 0.1], [0.4, 0.6]], [0, 0], ["A", "B"],
        ...                             specimen_ids=["x", "x"], split="test")
        >>> q = p.with_probs("ens", [[0.2, 0.8], [0.3, 0.7]])
        >>> q.name, list(q.frame["specimen_id"]), list(q.frame["split"]), q.y_pred.tolist()
        ('ens', ['x', 'x'], ['test', 'test'], [1, 1])
        """
        frame = self.frame
        return Predictions.from_arrays(
            name,
            probs,
            self.y_true,
            self.names,
            slice_ids=self.slice_ids,
            specimen_ids=frame["specimen_id"] if "specimen_id" in frame.columns else None,
            split=str(frame["split"].iloc[0]) if "split" in frame.columns else "",
            source=source or f"{name} over the slices of {self.source or self.name}",
        )


def _check_probs(probs: np.ndarray, n_classes: int, where: str) -> None:
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise PredictionError(
            f"{where}: probabilities must have shape (n, {n_classes}), got {probs.shape}"
        )
    if len(probs) == 0:
        raise PredictionError(f"{where}: no rows")
    bad = ~np.isfinite(probs)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise PredictionError(
            f"{where}: {int(bad.sum())} NaN/infinite probabilities "
            f"in {len(rows)} row(s), first rows {rows[:5].tolist()}"
        )
    if (probs < 0).any():
        rows = np.flatnonzero((probs < 0).any(axis=1))
        raise PredictionError(
            f"{where}: negative probabilities in {len(rows)} row(s), first rows {rows[:5].tolist()}"
        )


def _check_row_sums(probs: np.ndarray, where: str) -> None:
    sums = probs.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if off.size:
        first = off[0]
        raise PredictionError(
            f"{where}: {off.size} row(s) do not sum to 1 (tolerance {ROW_SUM_TOLERANCE}); "
            f"first is row {first} summing to {sums[first]:.6g}"
        )


def _check_labels(y, n_classes: int, n_rows: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_rows:
        raise PredictionError(f"{where}: {n_rows} probability rows but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise PredictionError(f"{where}: labels must be integer class indices, got {y.dtype}")
    bad = np.unique(y[(y < 0) | (y >= n_classes)])
    if bad.size:
        raise PredictionError(f"{where}: label(s) {bad.tolist()} outside 0..{n_classes - 1}")
    return y.astype(np.int64)


def load_predictions(
    path, name: str | None = None, names: Sequence[str] | None = None
) -> Predictions:
    """Read and check a per-slice prediction CSV.

    Parameters
    ----------
    path : path-like
        A file written by the training stage (``slice_id``, ``true``, ``p_<class>`` ...).
    name : str, optional
        Model name; defaults to the name of the folder holding the file.
    names : sequence of str, optional
        The expected class order (e.g. the model's ``class_names.json``). When given, the
        ``p_`` columns must be exactly these classes in this order.

    Returns
    -------
    Predictions

    Raises
    ------
    PredictionError
        Naming the file: it is missing or unreadable; ``slice_id``/``true``/``p_``
        columns are missing; the ``p_`` columns differ from `names` (missing, extra or
        reordered classes); probabilities are NaN/infinite (counted), negative, or a row
        does not sum to 1 within 1e-3; a ``true`` label is not a class; slice ids repeat.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "convnext"
    >>> d.mkdir()
    >>> _ = (d / "predictions_val.csv").write_text(
    ...     "slice_id,true,p_A,p_B\\na:0,A,0.9,0.1\\na:1,B,0.3,0.7\\n")
    >>> p = load_predictions(d / "predictions_val.csv")
    >>> p.name, p.names, p.y_true.tolist()
    ('convnext', ['A', 'B'], [0, 1])
    >>> load_predictions(d / "predictions_val.csv", names=["B", "A"])
    Traceback (most recent call last):
    ...
    foramlib.evaluation.metrics.PredictionError: prediction file .../predictions_val.csv: same classes in a different order: expected ['B', 'A'], found ['A', 'B']
    """  # noqa: E501
    path = Path(path)
    where = f"prediction file {path}"
    if not path.is_file():
        raise PredictionError(f"{where} does not exist; rerun the stage that writes it")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in _ID_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionError(f"{where} cannot be read as CSV: {exc}") from None
    missing = [c for c in ("slice_id", "true") if c not in frame.columns]
    if missing:
        raise PredictionError(f"{where} lacks column(s) {missing}; found {list(frame.columns)}")
    found = [c[2:] for c in frame.columns if c.startswith("p_")]
    if not found:
        raise PredictionError(f"{where} has no probability columns 'p_<class>'")
    if names is not None:
        _check_class_order(list(names), found, where)
    names = found
    try:
        probs = frame[[f"p_{n}" for n in names]].to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise PredictionError(f"{where}: non-numeric probabilities: {exc}") from None
    _check_probs(probs, len(names), where)
    _check_row_sums(probs, where)
    true = frame["true"]
    unknown = sorted({str(t) for t in true if t not in names})
    if unknown:
        raise PredictionError(
            f"{where}: 'true' label(s) {_show(unknown)} not among the classes {names}"
        )
    dupes = frame["slice_id"][frame["slice_id"].duplicated()]
    if len(dupes):
        raise PredictionError(f"{where}: repeated slice id(s) {_show(dupes.unique())}")
    index = {n: i for i, n in enumerate(names)}
    y_true = np.array([index[t] for t in true], dtype=np.int64)
    return Predictions(name or path.parent.name, frame, probs, y_true, names, str(path))


def _check_class_order(expected: list[str], found: list[str], where: str) -> None:
    from foramlib.learn.loader import DataError, check_class_lists

    try:
        check_class_lists(expected, found, what=where)
    except DataError as exc:
        raise PredictionError(str(exc)) from None


def load_model_predictions(model_dir, split: str) -> Predictions:
    """Load ``<model_dir>/predictions_<split>.csv`` checked against its ``class_names.json``.

    The model name is the folder name. Raises :class:`PredictionError` (or
    :class:`foramlib.learn.loader.DataError` for an unreadable class list) naming the file.
    """
    from foramlib.learn.loader import load_class_names

    model_dir = Path(model_dir)
    names = load_class_names(model_dir / "class_names.json")
    return load_predictions(model_dir / f"predictions_{split}.csv", model_dir.name, names)


def align(predictions: Sequence[Predictions]) -> None:
    """Check that several models' predictions describe the same slices the same way.

    Parameters
    ----------
    predictions : sequence of Predictions

    Raises
    ------
    PredictionError
        Naming both files, when class lists (content or order), row counts, slice-id
        order or true labels differ.

    Examples
    --------
    >>> a = Predictions.from_arrays("a", [[0.9, 0.1]], [0], ["A", "B"], source="a.csv")
    >>> b = Predictions.from_arrays("b", [[0.2, 0.8]], [0], ["B", "A"], source="b.csv")
    >>> align([a, b])
    Traceback (most recent call last):
    ...
    foramlib.evaluation.metrics.PredictionError: a.csv and b.csv: class lists differ: ...
    """
    predictions = list(predictions)
    if not predictions:
        return
    first = predictions[0]
    for other in predictions[1:]:
        pair = f"{first.source or first.name} and {other.source or other.name}"
        if list(other.names) != list(first.names):
            raise PredictionError(
                f"{pair}: class lists differ: {list(first.names)} vs {list(other.names)}"
            )
        if len(other) != len(first):
            raise PredictionError(f"{pair}: row counts differ: {len(first)} vs {len(other)}")
        a, b = np.asarray(first.slice_ids), np.asarray(other.slice_ids)
        diff = np.flatnonzero(a != b)
        if diff.size:
            i = diff[0]
            raise PredictionError(
                f"{pair}: slice ids differ at {diff.size} row(s), first at "
                f"row {i}: {str(a[i])!r} vs {str(b[i])!r}"
            )
        diff = np.flatnonzero(first.y_true != other.y_true)
        if diff.size:
            raise PredictionError(
                f"{pair}: true labels differ at {diff.size} row(s), first at row {diff[0]}"
            )


# --------------------------------------------------------------------------- metrics


def _prepare(y_true, probs, names, where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = list(names)
    probs = np.asarray(probs, dtype=np.float64)
    _check_probs(probs, len(names), where)
    y = _check_labels(np.asarray(y_true), len(names), len(probs), where)
    sums = probs.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise PredictionError(f"{where}: {int((sums <= 0).sum())} row(s) of all-zero probabilities")
    return y, probs / sums, names


def _top3(y: np.ndarray, probs: np.ndarray) -> float:
    n_classes = probs.shape[1]
    if n_classes <= 3:
        return 1.0  # the true class is always among the top 3 of at most 3 classes
    return float(top_k_accuracy_score(y, probs, k=3, labels=np.arange(n_classes)))


def _macro_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    n_classes = probs.shape[1]
    present = np.unique(y)
    if present.size < 2:
        return None
    if present.size == n_classes and n_classes > 2:
        return float(
            roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=np.arange(n_classes))
        )
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def report_from_probs(name: str, y_true, probs, names, source: str = "this pipeline") -> Report:
    """Per-class and overall metrics of one model (or ensemble) on one split.

    Parameters
    ----------
    name : str
        Name shown in tables.
    y_true : array of int, shape (n,)
        True class indices.
    probs : array, shape (n, C)
        Class probabilities; rows are renormalised to sum to 1 (they must be finite,
        non-negative and not all zero).
    names : sequence of str
        The C class names, in column order.
    source : str
        Recorded in the report.

    Returns
    -------
    Report
        ``per_class``: precision, recall, F1 (scikit-learn, ``zero_division=0``) and
        support for every class, absent ones included. ``overall``: accuracy; macro and
        weighted precision/recall/F1 over all C classes; ``top3``: top-3 accuracy
        (1.0 when C <= 3, where the true class is always among the top three); ``auc``:
        macro one-vs-rest ROC AUC over all classes when each occurs in `y_true`, else
        the mean of the one-vs-rest AUCs of the classes that do occur, and None when
        fewer than two classes occur; ``n``: number of rows.

    Raises
    ------
    PredictionError
        Shape mismatch, labels outside ``0..C-1``, NaN/inf/negative probabilities.

    Examples
    --------
    >>> r = report_from_probs("m", [0, 1], [[0.7, 0.3], [0.2, 0.8]], ["A", "B"])
    >>> r.overall["macro_f1"], r.overall["auc"], r.overall["n"]
    (1.0, 1.0, 2)
    """
    y, probs, names = _prepare(y_true, probs, names, f"report {name!r}")
    labels = np.arange(len(names))
    y_pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=0)
    per_class = pd.DataFrame(
        {"precision": p, "recall": r, "f1": f, "support": s.astype(int)},
        index=pd.Index(names, name="class"),
    )
    overall = {"accuracy": float(accuracy_score(y, y_pred))}
    for average in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y, y_pred, labels=labels, average=average, zero_division=0
        )
        overall.update(
            {
                f"{average}_precision": float(ap),
                f"{average}_recall": float(ar),
                f"{average}_f1": float(af),
            }
        )
    overall["top3"] = _top3(y, probs)
    overall["auc"] = _macro_auc(y, probs)
    overall["n"] = int(len(y))
    return Report(name, per_class, overall, source)


def confusion(y_true, y_pred, n_classes: int, normalize: bool = True) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class.

    With `normalize`, each row is divided by its true-class count (a class absent from
    `y_true` gives a row of zeros).

    Examples
    --------
    >>> confusion([0, 0, 1, 1], [0, 1, 1, 1], 3).tolist()
    [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    >>> confusion([0, 0, 1], [0, 1, 1], 2, normalize=False).tolist()
    [[1, 1], [0, 1]]
    """
    return confusion_matrix(
        y_true, y_pred, labels=np.arange(n_classes), normalize="true" if normalize else None
    )


def roc_curves(y_true, probs) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve of each class: ``{class index: (fpr, tpr, auc)}``.

    Classes that never occur in `y_true` (or that are the only class present) have no
    defined curve and are left out.

    Examples
    --------
    >>> curves = roc_curves([0, 1, 1], [[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    >>> sorted(curves), curves[1][2]
    ([0, 1], 1.0)
    """
    y = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    curves = {}
    for c in range(probs.shape[1]):
        positives = y == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, c])
        curves[c] = (fpr, tpr, float(auc(fpr, tpr)))
    return curves


# --------------------------------------------------------------------------- specimens


def specimen_votes(predictions: Predictions) -> pd.DataFrame:
    """Vote over all slices of each specimen: the mean probability's top class.

    Returns
    -------
    DataFrame
        One row per ``specimen_id`` (sorted): ``true`` and ``predicted`` class names,
        ``n_slices`` and ``confidence`` (the winning class's mean probability).

    Raises
    ------
    PredictionError
        No ``specimen_id`` column, or a specimen whose slices carry different true
        classes (named, with the file).

    Examples
    --------
    >>> p = Predictions.from_arrays("m", [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 0, 0],
    ...                             ["A", "B"], specimen_ids=["x", "x", "x"])
    >>> specimen_votes(p).round(3).to_dict("records")
    [{'specimen_id': 'x', 'true': 'A', 'predicted': 'A', 'n_slices': 3, 'confidence': 0.567}]
    """
    where = f"predictions {predictions.name!r} ({predictions.source})"
    if "specimen_id" not in predictions.frame.columns:
        raise PredictionError(f"{where} have no 'specimen_id' column")
    specimen = predictions.frame["specimen_id"].astype(str).to_numpy()
    by = pd.DataFrame(predictions.probs).groupby(specimen, sort=True)
    mean = by.mean()
    truth = pd.Series(predictions.y_true).groupby(specimen, sort=True)
    mixed = truth.nunique()
    mixed = mixed[mixed > 1]
    if len(mixed):
        raise PredictionError(
            f"{where}: specimen(s) {_show(mixed.index)} have slices of more than one true class"
        )
    names = predictions.names
    winner = mean.to_numpy().argmax(axis=1)
    return pd.DataFrame(
        {
            "specimen_id": mean.index.astype(str),
            "true": [names[i] for i in truth.first().to_numpy()],
            "predicted": [names[i] for i in winner],
            "n_slices": by.size().to_numpy().astype(int),
            "confidence": mean.to_numpy().max(axis=1),
        }
    )


def specimen_accuracy(predictions: Predictions) -> float:
    """Fraction of specimens whose slice vote (:func:`specimen_votes`) is right.

    Not a metric of the paper, which reports per-slice results only.

    Examples
    --------
    >>> p = Predictions.from_arrays("m", [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], [0, 0, 1],
    ...                             ["A", "B"], specimen_ids=["x", "x", "y"])
    >>> specimen_accuracy(p)
    1.0
    """
    votes = specimen_votes(predictions)
    return float((votes["true"] == votes["predicted"]).mean())


def specimen_confusion(votes: pd.DataFrame, names, normalize: bool = True) -> np.ndarray:
    """Confusion matrix of specimen votes (:func:`specimen_votes`), rows = true class.

    Raises
    ------
    PredictionError
        A ``true`` or ``predicted`` name that is not in `names`.

    Examples
    --------
    >>> votes = pd.DataFrame({"true": ["A", "A", "B"], "predicted": ["A", "B", "B"]})
    >>> specimen_confusion(votes, ["A", "B"], normalize=False).tolist()
    [[1, 1], [0, 1]]
    """
    names = list(names)
    unknown = sorted({str(v) for v in [*votes["true"], *votes["predicted"]]} - set(names))
    if unknown:
        raise PredictionError(f"specimen votes name class(es) {_show(unknown)} not in {names}")
    index = {n: i for i, n in enumerate(names)}
    y_true = [index[t] for t in votes["true"]]
    y_pred = [index[p] for p in votes["predicted"]]
    return confusion(y_true, y_pred, len(names), normalize=normalize)
