"""A classical baseline: HOG features and a logistic regression, on the same slices.

The deep pipeline is only worth its cost if it clearly beats a classical classifier
trained on the same slices and split. This module provides that yardstick:

* :func:`hog_features`: histograms of oriented gradients (:func:`skimage.feature.hog`)
  of each slice, after the resize the training stage uses (so every image has the same
  side and the same number of cells);
* :func:`fit_baseline`: a :class:`~sklearn.preprocessing.StandardScaler` +
  :class:`~sklearn.linear_model.LogisticRegression` pipeline, its regularisation ``C``
  chosen on the **validation** split (the test split is never seen here);
* :func:`run_baseline` / :func:`baseline_predictions`: the whole thing on a split index
  and slice store, giving validation and test predictions in exactly the format the
  training stage writes (:func:`foramlib.learn.training.predictions_frame`), so the metrics
  and table code reads them like any backbone's;
* :func:`compare_to_baseline`: the final model's margin over the baseline, in points.

Pure NumPy / OpenCV / scikit-image / scikit-learn: nothing here imports a deep-learning
framework beyond what :mod:`foramlib.learn.loader` imports.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> bars = np.zeros((20, 24, 24), np.uint8)
>>> bars[:10, :, 10:14] = 255              # vertical bars: class 0
>>> bars[10:, 10:14, :] = 255              # horizontal bars: class 1
>>> x = hog_features(bars + rng.normal(0, 20, bars.shape))
>>> x.shape
(20, 1764)
>>> y = np.repeat([0, 1], 10)
>>> fit = fit_baseline(x[::2], y[::2], x[1::2], y[1::2], Cs=(0.1, 1.0))
>>> fit.C, fit.val_accuracy
(0.1, 1.0)
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.feature import hog
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from foramlib.dataset.preprocess import resize_slice
from foramlib.evaluation.reports import Report
from foramlib.io.atomic import write_csv
from foramlib.learn.loader import check_splits, class_names

__all__ = [
    "BASELINE_NAME",
    "BASELINE_FILE",
    "DEFAULT_CS",
    "BaselineFit",
    "BaselineRun",
    "hog_features",
    "split_images",
    "fit_baseline",
    "predict_proba",
    "run_baseline",
    "baseline_predictions",
    "write_predictions",
    "compare_to_baseline",
    "comparison_table",
    "summary",
]

#: How the baseline is labelled in every table and figure.
BASELINE_NAME = "HOG + logistic regression (classical baseline)"
#: Stem of its prediction files: ``<predictions_dir>/baseline_hog_lr_<split>.csv``.
BASELINE_FILE = "baseline_hog_lr"
#: Inverse regularisation strengths tried on the validation split.
DEFAULT_CS = (0.001, 0.01, 0.1, 1.0)
#: HOG geometry at the reference side of 96 px: 12 x 12 px cells, i.e. 8 x 8 cells.
REFERENCE_SIDE = 96
REFERENCE_CELL = 12


# --------------------------------------------------------------------------- features


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def hog_features(
    images,
    *,
    size: int | None = None,
    orientations: int = 9,
    pixels_per_cell: int | None = None,
    cells_per_block: int = 2,
) -> np.ndarray:
    """HOG descriptor of each image, one row per image.

    Parameters
    ----------
    images : array_like, shape (n, H, W)
        Grey images (uint8 or float); a memory map is read one image at a time.
    size : int, optional
        Resize every image to ``size x size`` first, with the training stage's resize
        (:func:`foramlib.dataset.preprocess.resize_slice`); default: keep the images as they are
        (they must then all be square of one side, which the slice store guarantees).
    orientations : int, default 9
        Number of gradient-orientation bins.
    pixels_per_cell : int, optional
        Side of a (square) cell in pixels. Default: 12 px at a side of 96 px, scaled to
        the image side (``round(12 * side / 96)``), so every image has 8 x 8 cells.
    cells_per_block : int, default 2
        Side of a (square) normalisation block, in cells.

    Returns
    -------
    ndarray of float32, shape (n, n_features)
        ``n_features = orientations * cells_per_block**2 * (k - cells_per_block + 1)**2``
        with ``k = side // pixels_per_cell`` cells per row.

    Raises
    ------
    ValueError
        `images` not a non-empty stack of 2-D images, non-finite pixels, images of
        different shapes without `size`, a non-positive parameter, or cells and
        blocks that do not fit in the image.

    Examples
    --------
    >>> import numpy as np
    >>> hog_features(np.zeros((3, 96, 96), np.uint8)).shape
    (3, 1764)
    >>> hog_features(np.zeros((2, 50, 40)), size=48).shape  # 6 px cells at 48 px
    (2, 1764)
    >>> hog_features(np.zeros((96, 96)))
    Traceback (most recent call last):
    ...
    ValueError: images must be a stack of 2-D images of shape (n, H, W), got shape (96, 96)
    """
    shape = np.shape(images)
    if len(shape) != 3:
        raise ValueError(
            f"images must be a stack of 2-D images of shape (n, H, W), got shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"images is empty: got shape {shape}")
    orientations = _positive_int(orientations, "orientations")
    cells_per_block = _positive_int(cells_per_block, "cells_per_block")
    if size is not None:
        side = _positive_int(size, "size", minimum=2)
    elif shape[1] != shape[2]:
        raise ValueError(f"images must be square unless size is given, got {shape[1]}x{shape[2]}")
    else:
        side = int(shape[1])
    if pixels_per_cell is None:
        cell = max(1, round(REFERENCE_CELL * side / REFERENCE_SIDE))
    else:
        cell = _positive_int(pixels_per_cell, "pixels_per_cell")
    if side // cell < cells_per_block:
        raise ValueError(
            f"a {cells_per_block}x{cells_per_block} block of {cell} px cells does not fit "
            f"in a {side} px image; lower pixels_per_cell ({pixels_per_cell!r}) or "
            f"cells_per_block ({cells_per_block!r}), or raise size ({size!r})"
        )
    rows = []
    for i in range(shape[0]):
        image = np.asarray(images[i])
        if not np.isfinite(image).all():
            raise ValueError(f"image {i} holds NaN or infinite pixels")
        if size is not None:
            image = resize_slice(image, side)
        rows.append(
            hog(
                image,
                orientations=orientations,
                pixels_per_cell=(cell, cell),
                cells_per_block=(cells_per_block, cells_per_block),
                block_norm="L2-Hys",
                feature_vector=True,
            )
        )
    return np.asarray(rows, dtype=np.float32)


def split_images(index: pd.DataFrame, arrays: Mapping[str, np.ndarray], split: str):
    """The images of one split, in index order, and their rows of the index.

    Parameters
    ----------
    index : DataFrame
        A split index (``array``, ``row``, ``split`` columns).
    arrays : mapping of str to array
        The slice store's arrays by file name (see :func:`foramlib.dataset.slicing.load_slices`).
    split : str
        ``"train"``, ``"val"`` or ``"test"``.

    Returns
    -------
    images : ndarray, shape (n, S, S)
    rows : DataFrame
        The index rows of `split`, renumbered from 0.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> arrays = {"a.npy": np.arange(3)[:, None, None] * np.ones((3, 2, 2), np.uint8)}
    >>> index = pd.DataFrame({"array": "a.npy", "row": [2, 0, 1],
    ...                       "split": ["test", "test", "val"]})
    >>> images, rows = split_images(index, arrays, "test")
    >>> images[:, 0, 0].tolist(), rows["row"].tolist()
    ([2, 0], [2, 0])
    """
    rows = index[index["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"the {split!r} split has no slices")
    missing = sorted(set(rows["array"]) - set(arrays))
    if missing:
        raise ValueError(f"slice array(s) {missing} of the {split!r} split are not in the store")
    first = arrays[rows["array"].iloc[0]]
    images = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
    for name, group in rows.groupby("array", sort=False):
        images[group.index.to_numpy()] = np.asarray(arrays[name])[group["row"].to_numpy()]
    return images, rows


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, eq=False)
class BaselineFit:
    """A fitted baseline and how its ``C`` was chosen.

    Attributes
    ----------
    pipeline : sklearn Pipeline
        StandardScaler + LogisticRegression, fitted on the training split with `C`.
    C : float
        The chosen inverse regularisation strength.
    scores : DataFrame
        One row per candidate: ``C``, ``val_accuracy``, ``train_accuracy``, ``chosen``.
    """

    pipeline: Pipeline
    C: float
    scores: pd.DataFrame

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy of the chosen ``C``."""
        return float(self.scores.loc[self.scores["chosen"], "val_accuracy"].iloc[0])


def _check_xy(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what} features must be a non-empty 2-D array, got shape {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{what} labels must have shape ({len(x)},), got {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} features hold NaN or infinite values")
    return x, y


def fit_baseline(
    train_x,
    train_y,
    val_x,
    val_y,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 2000,
) -> BaselineFit:
    """Fit StandardScaler + LogisticRegression, choosing ``C`` on validation accuracy.

    The scaler is fitted on the training split, then one regression per candidate
    ``C`` (in increasing order, each warm-started from the previous one); the one with
    the highest validation accuracy is kept (a tie goes to the smaller ``C``, the simpler
    model). The function takes no test data, so the test split cannot influence the
    choice.

    Parameters
    ----------
    train_x, val_x : array_like, shape (n, d)
        Features (e.g. :func:`hog_features`).
    train_y, val_y : array_like, shape (n,)
        Class labels (any hashable labels; at least two classes in training).
    Cs : sequence of float, default ``DEFAULT_CS``
        Candidate inverse regularisation strengths, each > 0.
    seed : int, default 0
        ``random_state`` of the logistic regression.
    max_iter : int, default 2000
        Iterations of the lbfgs solver (a model that does not converge is still used;
        its warning is silenced and recorded in ``scores["converged"]``).

    Returns
    -------
    BaselineFit

    Raises
    ------
    ValueError
        Empty or mismatched arrays, non-finite features, different feature counts,
        fewer than two training classes, or an empty / non-positive `Cs`.

    Examples
    --------
    >>> x = [[0.0], [0.2], [1.0], [1.2]]
    >>> fit = fit_baseline(x, [0, 0, 1, 1], [[0.1], [1.1]], [0, 1], Cs=[1.0, 10.0])
    >>> fit.C, fit.scores["val_accuracy"].tolist()
    (1.0, [1.0, 1.0])
    >>> fit_baseline(x, [0, 0, 1, 1], [[0.1]], [0], Cs=[0.0])
    Traceback (most recent call last):
    ...
    ValueError: every C must be a finite number > 0, got [0.0]
    """
    train_x, train_y = _check_xy(train_x, train_y, "training")
    val_x, val_y = _check_xy(val_x, val_y, "validation")
    if train_x.shape[1] != val_x.shape[1]:
        raise ValueError(
            f"training and validation features differ in width: "
            f"{train_x.shape[1]} vs {val_x.shape[1]}"
        )
    if len(np.unique(train_y)) < 2:
        raise ValueError(f"training labels hold fewer than two classes: {np.unique(train_y)}")
    if isinstance(Cs, str | bytes) or not isinstance(Cs, Sequence | np.ndarray):
        raise ValueError(f"Cs must be a sequence of numbers, got {Cs!r}")
    try:
        cs = [float(c) for c in Cs]
    except (TypeError, ValueError):
        raise ValueError(f"Cs must be a sequence of numbers, got {list(Cs)!r}") from None
    if not cs or any(not math.isfinite(c) or c <= 0 for c in cs):
        raise ValueError(f"every C must be a finite number > 0, got {list(Cs)!r}")
    seed = _positive_int(seed, "seed", minimum=0)
    max_iter = _positive_int(max_iter, "max_iter")
    # One scaler for all candidates; the regression is warm-started from the previous
    # (smaller) C, which reaches the same optimum of a convex problem in fewer steps.
    scaler = StandardScaler().fit(train_x)
    train_z, val_z = scaler.transform(train_x), scaler.transform(val_x)
    model = LogisticRegression(max_iter=max_iter, random_state=seed, warm_start=True)
    fitted, rows = {}, []
    for c in sorted(set(cs)):
        model.set_params(C=c)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(train_z, train_y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        fitted[c] = copy.deepcopy(model).set_params(warm_start=False)
        rows.append(
            {
                "C": c,
                "val_accuracy": float(model.score(val_z, val_y)),
                "train_accuracy": float(model.score(train_z, train_y)),
                "converged": converged,
            }
        )
    scores = pd.DataFrame(rows)
    best = int(scores["val_accuracy"].to_numpy().argmax())  # first maximum = smallest C
    scores["chosen"] = np.arange(len(scores)) == best
    chosen = float(scores["C"].iloc[best])
    pipeline = Pipeline([("standardscaler", scaler), ("logisticregression", fitted[chosen])])
    return BaselineFit(pipeline, chosen, scores)


def predict_proba(pipeline: Pipeline, x, names: Sequence) -> np.ndarray:
    """Class probabilities with one column per entry of `names`, in that order.

    A class the model never saw in training gets probability 0.

    Raises
    ------
    ValueError
        The model knows a class that is not in `names`.

    Examples
    --------
    >>> fit = fit_baseline([[0.0], [1.0]], ["b", "c"], [[0.0]], ["b"], Cs=[1.0])
    >>> p = predict_proba(fit.pipeline, [[0.0]], ["a", "b", "c"])
    >>> p.shape, float(p[0, 0]), int(p.argmax()), float(p.sum())
    ((1, 3), 0.0, 1, 1.0)
    """
    names = list(names)
    classes = pipeline.classes_.tolist()
    stray = [c for c in classes if c not in names]
    if stray:
        raise ValueError(f"the model's class(es) {stray} are not in the class list {names}")
    probs = pipeline.predict_proba(np.asarray(x, dtype=np.float64))
    out = np.zeros((len(probs), len(names)), dtype=np.float64)
    out[:, [names.index(c) for c in classes]] = probs
    return out


# --------------------------------------------------------------------------- on a store


@dataclass(frozen=True, eq=False)
class BaselineRun:
    """The baseline fitted on a slice store, and its predictions.

    Attributes
    ----------
    predictions : dict of str to DataFrame
        ``{"val": ..., "test": ...}`` in the training stage's prediction-file format.
    fit : BaselineFit
        The fitted pipeline, its chosen ``C`` and the validation scores.
    names : list of str
        The class order of the ``p_<class>`` columns.
    seconds : dict of str to float
        Wall time of ``features`` (all splits), ``fit`` (every candidate ``C``) and
        ``predict``.
    settings : dict
        The HOG and fitting settings used.
    """

    predictions: dict[str, pd.DataFrame]
    fit: BaselineFit
    names: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _frame(rows: pd.DataFrame, probs: np.ndarray, names: list[str], split: str) -> pd.DataFrame:
    # the columns of foramlib.learn.training.predictions_frame, in its order
    frame = pd.DataFrame(
        {
            "slice_id": rows["slice_id"].astype(str).to_numpy(),
            "split": split,
            "true": rows["species"].astype(str).to_numpy(),
            "predicted": [names[i] for i in probs.argmax(axis=1)],
        }
    )
    if "specimen_id" in rows.columns:
        frame.insert(1, "specimen_id", rows["specimen_id"].astype(str).to_numpy())
    probs_df = pd.DataFrame(probs, columns=[f"p_{n}" for n in names])
    return pd.concat([frame, probs_df], axis=1)


def run_baseline(
    split_index: pd.DataFrame,
    store_dir,
    names: Sequence[str] | None = None,
    *,
    size: int | None = REFERENCE_SIDE,
    orientations: int = 9,
    pixels_per_cell: int | None = None,
    cells_per_block: int = 2,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 2000,
) -> BaselineRun:
    """Fit the HOG + logistic-regression baseline on a split index and predict val/test.

    Parameters
    ----------
    split_index : DataFrame
        The split stage's index (:func:`foramlib.learn.loader.load_split_index`): ``slice_id``,
        ``species``, ``array``, ``row``, ``split`` and preferably ``specimen_id``.
    store_dir : path-like
        The slice store (``data/slices``).
    names : sequence of str, optional
        Class order of the output (use the backbones' order to compare with them);
        default :func:`foramlib.learn.loader.class_names` of the index.
    size, orientations, pixels_per_cell, cells_per_block
        See :func:`hog_features` (default: resize to 96 px, 12 px cells).
    Cs, seed, max_iter
        See :func:`fit_baseline`.

    Returns
    -------
    BaselineRun

    Raises
    ------
    foramlib.learn.loader.DataError
        A split table that cannot train and evaluate a classifier.
    ValueError
        Bad HOG or fitting settings (see :func:`hog_features`, :func:`fit_baseline`).
    """
    from foramlib.dataset.slicing import load_slices

    names = class_names(split_index) if names is None else list(names)
    check_splits(split_index, names)
    _, arrays = load_slices(Path(store_dir), index=split_index, mmap=True)
    hog_kw = {
        "size": size,
        "orientations": orientations,
        "pixels_per_cell": pixels_per_cell,
        "cells_per_block": cells_per_block,
    }
    seconds = {}
    start = time.perf_counter()
    features, rows = {}, {}
    for split in ("train", "val", "test"):
        images, rows[split] = split_images(split_index, arrays, split)
        features[split] = hog_features(images, **hog_kw)
    seconds["features"] = time.perf_counter() - start
    labels = {s: rows[s]["species"].astype(str).to_numpy() for s in rows}
    start = time.perf_counter()
    fit = fit_baseline(
        features["train"],
        labels["train"],
        features["val"],
        labels["val"],
        Cs=Cs,
        seed=seed,
        max_iter=max_iter,
    )
    seconds["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    predictions = {
        s: _frame(rows[s], predict_proba(fit.pipeline, features[s], names), names, s)
        for s in ("val", "test")
    }
    seconds["predict"] = time.perf_counter() - start
    settings = {**hog_kw, "Cs": [float(c) for c in Cs], "seed": seed, "max_iter": max_iter}
    settings["n_features"] = int(features["train"].shape[1])
    return BaselineRun(predictions, fit, names, seconds, settings)


def baseline_predictions(
    split_index: pd.DataFrame, store_dir, names: Sequence[str] | None = None, **kwargs
) -> dict[str, pd.DataFrame]:
    """Validation and test predictions of the baseline: ``{"val": frame, "test": frame}``.

    The frames have the columns of :func:`foramlib.learn.training.predictions_frame`
    (``slice_id``, ``specimen_id``, ``split``, ``true``, ``predicted``, ``p_<class>``
    ...). Keyword arguments go to :func:`run_baseline`, which also returns the chosen
    ``C`` and the timings.
    """
    return run_baseline(split_index, store_dir, names, **kwargs).predictions


def write_predictions(run: BaselineRun, predictions_dir) -> dict[str, Path]:
    """Write ``<predictions_dir>/baseline_hog_lr_<split>.csv`` atomically; return the paths.

    The files read back with :func:`foramlib.evaluation.metrics.load_predictions` like a backbone's.
    """
    paths = {}
    for split, frame in run.predictions.items():
        paths[split] = write_csv(frame, Path(predictions_dir) / f"{BASELINE_FILE}_{split}.csv")
    return paths


# --------------------------------------------------------------------------- comparison


def compare_to_baseline(final: Report, baseline: Report) -> dict:
    """The final model's margin over the baseline, in percentage points.

    Returns
    -------
    dict
        ``{"accuracy": points, "macro_f1": points}``, each ``100 * (final - baseline)``
        rounded to 0.1.

    Examples
    --------
    >>> import pandas as pd
    >>> pc = pd.DataFrame({"precision": [1.0], "recall": [1.0], "f1": [1.0], "support": [1]})
    >>> final = Report("f", pc, {"accuracy": 0.9, "macro_f1": 0.85})
    >>> base = Report("b", pc, {"accuracy": 0.4, "macro_f1": 0.3})
    >>> compare_to_baseline(final, base)
    {'accuracy': 50.0, 'macro_f1': 55.0}
    """
    out = {}
    for key in ("accuracy", "macro_f1"):
        a, b = final.metric(key), baseline.metric(key)
        if a is None or b is None:
            raise ValueError(f"reports {final.name!r} and {baseline.name!r} need {key!r}")
        out[key] = round(100.0 * (float(a) - float(b)), 1)
    return out


def comparison_table(
    final: Report, final_specimens: float, baseline: Report, baseline_specimens: float
) -> pd.DataFrame:
    """The final model beside the baseline (test split), and the margin in points.

    Parameters
    ----------
    final, baseline : Report
        Slice-level reports of the final model and of the baseline.
    final_specimens, baseline_specimens : float
        Their specimen-level accuracies (:func:`foramlib.evaluation.metrics.specimen_accuracy`).

    Returns
    -------
    DataFrame
        Rows: the final model, the baseline, and ``Margin (points)``; columns ``Model``,
        ``Slice accuracy``, ``Macro F1``, ``Specimen accuracy`` (fractions, 3 decimals;
        the margin row in percentage points, 1 decimal).

    Examples
    --------
    >>> import pandas as pd
    >>> pc = pd.DataFrame({"precision": [1.0], "recall": [1.0], "f1": [1.0], "support": [1]})
    >>> final = Report("f", pc, {"accuracy": 0.9, "macro_f1": 0.85})
    >>> base = Report("b", pc, {"accuracy": 0.4, "macro_f1": 0.3})
    >>> comparison_table(final, 1.0, base, 0.5)["Specimen accuracy"].tolist()
    [1.0, 0.5, 50.0]
    """
    margin = compare_to_baseline(final, baseline)
    rows = []
    for name, report, specimens in (
        (f"{final.name} (final)", final, final_specimens),
        (baseline.name, baseline, baseline_specimens),
    ):
        rows.append(
            {
                "Model": name,
                "Slice accuracy": round(float(report.metric("accuracy")), 3),
                "Macro F1": round(float(report.metric("macro_f1")), 3),
                "Specimen accuracy": round(float(specimens), 3),
            }
        )
    rows.append(
        {
            "Model": "Margin (points)",
            "Slice accuracy": margin["accuracy"],
            "Macro F1": margin["macro_f1"],
            "Specimen accuracy": round(100.0 * (final_specimens - baseline_specimens), 1),
        }
    )
    return pd.DataFrame(rows)


def summary(run: BaselineRun, report: Report, specimens: float, final: Report) -> dict:
    """The baseline's entry of ``results/metrics.json``.

    Returns
    -------
    dict
        ``model`` (its name), test ``accuracy`` and ``macro_f1``, ``specimen_accuracy``,
        the chosen ``C`` and its ``val_accuracy``, ``seconds`` (features + fit +
        predict) and ``margin_points`` of `final` over it (:func:`compare_to_baseline`).
    """
    return {
        "model": report.name,
        "accuracy": float(report.metric("accuracy")),
        "macro_f1": float(report.metric("macro_f1")),
        "specimen_accuracy": float(specimens),
        "C": run.fit.C,
        "val_accuracy": run.fit.val_accuracy,
        "seconds": round(sum(run.seconds.values()), 1),
        "margin_points": compare_to_baseline(final, report),
    }
