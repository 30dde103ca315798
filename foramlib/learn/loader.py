"""Reading slice arrays for Keras training and inference, on any Keras backend.

The ``slice`` stage stores one uint8 array per volume (``data/slices/<volume>.npy``,
shape ``(n, S, S)``) and the ``split`` stage adds a ``split`` column to its index
(``data/split/index.csv``). This module turns one split of that index into batches:

* :class:`SliceBatches` is a :class:`keras.utils.PyDataset` of ``(x, y)`` batches,
  ``x`` float32 ``(B, S, S, 1)`` in [0, 255] and ``y`` one-hot float32 ``(B, C)``. It is
  plain NumPy/OpenCV (no ``tf.data``), so it works with ``KERAS_BACKEND`` tensorflow,
  jax or torch. Every batch is a pure function of (seed, epoch, batch number): threads or
  processes (``workers``) give the same batches as a single worker.
* :func:`check_splits` refuses a split table that cannot train a model (empty split,
  class missing from a split, unknown species) before any time is spent.
* :func:`class_names` fixes the class order of every model: the sorted species of the
  training rows; :func:`save_class_names` / :func:`load_class_names` carry it between
  stages and :func:`check_class_lists` compares two of them.

Examples
--------
>>> import numpy as np, pandas as pd
>>> arrays = {"v1.npy": np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)}
>>> index = pd.DataFrame({"slice_id": ["v1:0", "v1:1", "v1:2"], "array": "v1.npy",
...                       "row": [0, 1, 2], "species": ["Beta", "Alpha", "Beta"],
...                       "split": "val"})
>>> ds = SliceBatches(index, arrays, ["Alpha", "Beta"], batch_size=2)
>>> len(ds), ds.n_images
(2, 3)
>>> x, y = ds[0]
>>> x.shape, x.dtype.name, float(x[1, 0, 0, 0]), y.tolist()
((2, 4, 4, 1), 'float32', 16.0, [[0.0, 1.0], [1.0, 0.0]])
>>> ds.labels().tolist(), ds.slice_ids()
([1, 0, 1], ['v1:0', 'v1:1', 'v1:2'])
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from foramlib.dataset.preprocess import resize_slice
from foramlib.dataset.split import SPLITS
from foramlib.io.atomic import write_text

__all__ = [
    "DataError",
    "class_names",
    "save_class_names",
    "load_class_names",
    "check_class_lists",
    "check_splits",
    "one_hot",
    "class_weights",
    "SliceBatches",
    "make_datasets",
    "load_split_index",
]

#: Columns a split index must have for :func:`load_split_index`.
SPLIT_INDEX_COLUMNS = ("slice_id", "species", "array", "row", "split")

MixFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


class DataError(ValueError):
    """A slice index, store or class list that cannot feed a model as asked."""


# --------------------------------------------------------------------------- helpers


def _show(items, limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_names(names, what: str = "class list") -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence | np.ndarray | pd.Index):
        raise DataError(f"{what} must be a list of class names, got {type(names).__name__}")
    out = list(names)
    if not out:
        raise DataError(f"{what} is empty")
    bad = [n for n in out if not isinstance(n, str) or not n]
    if bad:
        raise DataError(f"{what} holds non-string or empty name(s): {_show(bad)}")
    dupes = sorted({n for n in out if out.count(n) > 1})
    if dupes:
        raise DataError(f"{what} repeats class name(s) {_show(dupes)}")
    return out


def _require_columns(index: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}")


# --------------------------------------------------------------------------- classes


def class_names(index: pd.DataFrame) -> list[str]:
    """The class order of every model: sorted unique species of the training rows.

    Parameters
    ----------
    index : DataFrame
        Slice index with ``species`` and ``split`` columns.

    Returns
    -------
    list of str

    Raises
    ------
    DataError
        A missing column or no ``train`` rows.

    Examples
    --------
    >>> import pandas as pd
    >>> idx = pd.DataFrame({"species": ["B", "A", "C", "B"],
    ...                     "split": ["train", "train", "test", "val"]})
    >>> class_names(idx)
    ['A', 'B']
    """
    _require_columns(index, ["species", "split"], "slice index")
    train = index.loc[index["split"] == "train", "species"]
    if train.empty:
        raise DataError("the 'train' split is empty: no training rows to take the classes from")
    if train.isna().any():
        raise DataError(f"{int(train.isna().sum())} training row(s) have no species")
    return sorted(str(s) for s in pd.unique(train))


def save_class_names(names, path) -> Path:
    """Write the class list as a JSON list, atomically; return the path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "classes.json"
    >>> _ = save_class_names(["Alpha", "Beta"], p)
    >>> load_class_names(p)
    ['Alpha', 'Beta']
    """
    names = _check_names(names)
    return write_text(path, json.dumps(names, indent=2) + "\n")


def load_class_names(path) -> list[str]:
    """Read a class list written by :func:`save_class_names`.

    Raises
    ------
    DataError
        The file is missing, not JSON, or not a non-empty list of distinct strings.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list {path} does not exist; rerun the stage that writes it")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"class list {path} is not valid JSON: {exc}") from None
    if not isinstance(names, list):
        raise DataError(f"class list {path} must hold a JSON list, got {type(names).__name__}")
    return _check_names(names, what=f"class list {path}")


def check_class_lists(expected, found, what: str = "class list") -> None:
    """Refuse two class lists that differ in content or order.

    Parameters
    ----------
    expected, found : sequence of str
        E.g. the classes a model was trained on and those of the data it is given.
    what : str
        What `found` is, for the message (e.g. ``"model models/x.keras"``).

    Raises
    ------
    DataError
        Naming the classes missing from `found`, those extra in it, or saying that the
        order differs.

    Examples
    --------
    >>> check_class_lists(["A", "B"], ["A", "B"])
    >>> check_class_lists(["A", "B"], ["B", "A"], what="test dataset")
    Traceback (most recent call last):
    ...
    foramlib.learn.loader.DataError: test dataset: same classes in a different order: expected ['A', 'B'], found ['B', 'A']
    """  # noqa: E501
    expected, found = list(expected), list(found)
    if expected == found:
        return
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    problems = []
    if missing:
        problems.append(f"missing class(es) {_show(missing)}")
    if extra:
        problems.append(f"extra class(es) {_show(extra)}")
    if problems:
        raise DataError(f"{what}: " + "; ".join(problems) + f" (expected {len(expected)} classes)")
    if len(expected) != len(found):
        raise DataError(f"{what}: repeated class names: expected {expected}, found {found}")
    raise DataError(
        f"{what}: same classes in a different order: expected {expected}, found {found}"
    )


def check_splits(index: pd.DataFrame, names=None) -> dict[str, dict[str, int]]:
    """Refuse a split table that cannot train and evaluate a classifier.

    Parameters
    ----------
    index : DataFrame
        Slice index with ``species`` and ``split`` columns.
    names : list of str, optional
        The model's classes; default :func:`class_names` of `index`.

    Returns
    -------
    dict
        ``{split: {class: number of slices}}`` for ``train``, ``val``, ``test``.

    Raises
    ------
    DataError
        A missing ``split`` column, an unknown split value, an empty split (named), a
        class absent from a split (class and split named), a validation/test species
        that is not a training class, or a training species not in `names`.

    Examples
    --------
    >>> import pandas as pd
    >>> idx = pd.DataFrame({"species": ["A", "B"] * 3,
    ...                     "split": ["train"] * 2 + ["val"] * 2 + ["test"] * 2})
    >>> check_splits(idx)["val"]
    {'A': 1, 'B': 1}
    """
    if "split" not in index.columns:
        raise DataError(
            "the slice index has no 'split' column; use the split stage's "
            "data/split/index.csv, not the slice store's index"
        )
    _require_columns(index, ["species"], "slice index")
    split = index["split"]
    if split.isna().any():
        raise DataError(f"{int(split.isna().sum())} slice(s) have no split value")
    unknown = sorted(set(split.astype(str)) - set(SPLITS))
    if unknown:
        raise DataError(f"unknown split value(s) {_show(unknown)}; expected one of {list(SPLITS)}")
    for s in SPLITS:
        if not (split == s).any():
            raise DataError(f"the {s!r} split is empty: no slices are assigned to it")
    if index["species"].isna().any():
        raise DataError(f"{int(index['species'].isna().sum())} slice(s) have no species")
    names = class_names(index) if names is None else _check_names(names)
    species = index["species"].astype(str)
    problems = []
    for s in SPLITS:
        present = pd.unique(species[split == s])
        stray = sorted(set(present) - set(names))
        if stray:
            why = "not in the class list" if s == "train" else "not a training class"
            problems.append(f"species {_show(stray)} in the {s!r} split: {why}")
    counts = {}
    for s in SPLITS:
        per_class = species[split == s].value_counts()
        counts[s] = {c: int(per_class.get(c, 0)) for c in names}
    for c in names:
        absent = [s for s in SPLITS if counts[s][c] == 0]
        if absent:
            problems.append(f"class {c!r} has no slices in the {_show(absent)} split(s)")
    if problems:
        raise DataError(
            "the split cannot train and evaluate a classifier:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return counts


def one_hot(labels, n_classes: int) -> np.ndarray:
    """One-hot float32 rows for integer `labels` in ``[0, n_classes)``.

    Examples
    --------
    >>> one_hot(np.array([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    labels = np.asarray(labels)
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes!r}")
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    out = np.zeros((labels.size, int(n_classes)), np.float32)
    out[np.arange(labels.size), labels.astype(np.intp)] = 1.0
    return out


def class_weights(index: pd.DataFrame, names) -> dict[int, float]:
    """Balanced class weights ``n / (C * n_c)`` from the training rows' counts.

    Parameters
    ----------
    index : DataFrame
        Slice index; only rows with ``split == "train"`` count (all rows when there is
        no ``split`` column, e.g. the training dataset's own index).
    names : list of str
        Class order; the keys of the result are positions in it.

    Raises
    ------
    DataError
        A class with no training rows, or a training species not in `names`.

    Examples
    --------
    >>> import pandas as pd
    >>> idx = pd.DataFrame({"species": ["A", "A", "A", "B"], "split": "train"})
    >>> class_weights(idx, ["A", "B"])
    {0: 0.6666666666666666, 1: 2.0}
    """
    names = _check_names(names)
    _require_columns(index, ["species"], "slice index")
    rows = index[index["split"] == "train"] if "split" in index.columns else index
    species = rows["species"].astype(str)
    stray = sorted(set(species) - set(names))
    if stray:
        raise DataError(f"training species {_show(stray)} not in the class list")
    counts = species.value_counts()
    absent = [c for c in names if c not in counts.index]
    if absent:
        raise DataError(f"class(es) {_show(absent)} have no training slices; cannot weight them")
    n = float(len(species))
    return {i: n / (len(names) * float(counts[c])) for i, c in enumerate(names)}


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class _MemmapRef:
    """A read-only memory map, pickled as its file reference instead of its data."""

    filename: str
    dtype: str
    shape: tuple
    offset: int
    order: str

    def open(self) -> np.memmap:
        return np.memmap(
            self.filename,
            dtype=self.dtype,
            mode="r",
            offset=self.offset,
            shape=self.shape,
            order=self.order,
        )


def _portable(array):
    # Only a whole map (its base is the mmap itself) can be reopened from file + offset.
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        return _MemmapRef(
            str(array.filename), array.dtype.str, array.shape, int(array.offset), order
        )
    return array


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False)
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)


class SliceBatches(keras.utils.PyDataset):
    """Batches ``(x, y)`` of one split's slices for ``fit``/``evaluate``/``predict``.

    Parameters
    ----------
    index : DataFrame
        The rows of ONE split: ``species``, ``array`` (file name of the store array),
        ``row`` (position in it) and preferably ``slice_id``.
    arrays : mapping of str to array
        Store arrays by name, shape ``(n, H, W)``, uint8 (memory maps are read lazily).
    names : list of str
        Class order of the model; ``y[:, k]`` is ``names[k]``.
    batch_size : int
        Images per batch; the last batch holds the remainder.
    shuffle : bool
        Reorder the slices at construction and after every epoch, seeded by
        ``seed`` and the epoch counter.
    seed : int
        Non-negative seed of the shuffling and of `mix`.
    mix : callable, optional
        ``mix(images, onehot, rng) -> (images, soft_labels)`` applied to each batch
        (e.g. :func:`foramlib.learn.augment.mix_batch` for CutMix/MixUp); `rng` is a
        :class:`numpy.random.Generator` seeded by (seed, epoch, batch number).
    input_size : int, optional
        Edge length of the returned images; stored images of another size are resized
        on the host with OpenCV (``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when
        enlarging).
    workers, use_multiprocessing, max_queue_size
        Passed to :class:`keras.utils.PyDataset`: how ``fit`` parallelises loading.
        Batches do not depend on them.

    Attributes
    ----------
    index : DataFrame
        `index` with a fresh 0..n-1 index, in the given (unshuffled) order.
    names : list of str
    epoch : int
        Number of ``on_epoch_end`` calls. Keras makes one at the start of ``fit`` and
        one after every pass (training epoch, ``evaluate``, ``predict``), the same on
        every backend; order and `mix` draws follow this counter.

    Notes
    -----
    ``labels()`` and ``slice_ids()`` give the order of the current epoch. Predict on
    unshuffled datasets (as :func:`make_datasets` builds ``val``/``test``): ``predict``
    ends with an ``on_epoch_end`` call, which reorders a shuffled dataset.

    Raises
    ------
    DataError
        An empty index, a species not in `names`, an array missing from `arrays`, a
        row beyond its array, or arrays that are not 3-D uint8 of one image size.
    ValueError
        ``batch_size < 1``, a negative seed, a bad `input_size` or a non-callable `mix`.
    """

    def __init__(
        self,
        index: pd.DataFrame,
        arrays: Mapping[str, np.ndarray],
        names,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        mix: MixFn | None = None,
        input_size: int | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise ValueError(f"batch_size must be an integer, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if input_size is not None and (
            isinstance(input_size, bool)
            or not isinstance(input_size, int | np.integer)
            or input_size < 1
        ):
            raise ValueError(f"input_size must be a positive integer or None, got {input_size!r}")
        if mix is not None and not callable(mix):
            raise ValueError(f"mix must be callable or None, got {type(mix).__name__}")
        self.names = _check_names(names)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.mix = mix
        self.input_size = None if input_size is None else int(input_size)
        self.epoch = 0

        where = "the dataset's index"
        if "split" in index.columns and index["split"].nunique() == 1:
            self.split = str(index["split"].iloc[0])
            where = f"the {self.split!r} split"
        else:
            self.split = None
        if len(index) == 0:
            raise DataError(f"{where} is empty: no slices to batch")
        _require_columns(index, ["species", "array", "row"], where)
        self.index = index.reset_index(drop=True)

        species = self.index["species"].astype(str)
        stray = sorted(set(species) - set(self.names))
        if stray:
            raise DataError(f"species {_show(stray)} in {where} not in the class list")
        lookup = {n: i for i, n in enumerate(self.names)}
        self._labels = species.map(lookup).to_numpy(np.intp)

        array_names = self.index["array"].astype(str)
        self._array_names = sorted(pd.unique(array_names))
        missing = [a for a in self._array_names if a not in arrays]
        if missing:
            raise DataError(f"array(s) {_show(missing)} used by {where} are not in the store")
        self._arrays = [arrays[a] for a in self._array_names]
        codes = {a: i for i, a in enumerate(self._array_names)}
        self._codes = array_names.map(codes).to_numpy(np.intp)
        self._rows = self.index["row"].to_numpy()
        if not np.issubdtype(self._rows.dtype, np.integer):
            raise DataError(f"column 'row' of {where} must hold integers, got {self._rows.dtype}")
        shapes = set()
        for code, (name, arr) in enumerate(zip(self._array_names, self._arrays, strict=True)):
            if arr.ndim != 3 or arr.dtype != np.uint8:
                raise DataError(
                    f"array {name} must be uint8 of shape (n, H, W), got {arr.dtype} {arr.shape}"
                )
            rows = self._rows[self._codes == code]
            if rows.min() < 0 or rows.max() >= len(arr):
                raise DataError(
                    f"array {name} has {len(arr)} slices but {where} asks for row "
                    f"{rows.max() if rows.max() >= len(arr) else rows.min()}"
                )
            shapes.add(arr.shape[1:])
        if self.input_size is None and len(shapes) > 1:
            raise DataError(
                f"arrays of {where} hold different image sizes {sorted(shapes)}; "
                "give input_size to resize them to one"
            )
        self._size = next(iter(shapes)) if self.input_size is None else (self.input_size,) * 2
        if "slice_id" in self.index.columns:
            self._ids = self.index["slice_id"].astype(str).to_numpy()
        else:
            self._ids = array_names.str.removesuffix(".npy") + ":" + self.index["row"].astype(str)
            self._ids = self._ids.to_numpy()
        self._order = self._permutation(0)

    # ------------------------------------------------------------------ Keras protocol
    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self.batch_size)

    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"batch {i} out of range for {n} batches")
        i = int(i) % n
        positions = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self._read(positions).astype(np.float32)[..., None]
        y = one_hot(self._labels[positions], len(self.names))
        if self.mix is not None:
            rng = np.random.default_rng(
                np.random.SeedSequence(self.seed, spawn_key=(1, self.epoch, i))
            )
            mixed_x, mixed_y = self.mix(x, y, rng)
            mixed_x, mixed_y = _to_numpy(mixed_x), _to_numpy(mixed_y)
            if mixed_x.shape != x.shape or mixed_y.shape != y.shape:
                raise DataError(
                    f"mix returned shapes {mixed_x.shape}, {mixed_y.shape}; expected "
                    f"{x.shape}, {y.shape}"
                )
            x, y = mixed_x, mixed_y
        return x, y

    def on_epoch_end(self) -> None:
        """Count the epoch; draw the next order when shuffling."""
        self.epoch += 1
        if self.shuffle:
            self._order = self._permutation(self.epoch)

    # ------------------------------------------------------------------ inspection
    @property
    def n_images(self) -> int:
        """Number of slices (all batches together)."""
        return len(self._labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, 1)`` of one returned image."""
        return (*self._size, 1)

    def labels(self) -> np.ndarray:
        """Integer labels in the order batches serve them this epoch (index order unshuffled)."""
        return self._labels[self._order].copy()

    def slice_ids(self) -> list[str]:
        """Slice ids in the order batches serve them this epoch (index order unshuffled)."""
        return [str(s) for s in self._ids[self._order]]

    # ------------------------------------------------------------------ internals
    def _permutation(self, epoch: int) -> np.ndarray:
        n = len(self._labels)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0, epoch)))
        return rng.permutation(n)

    def _read(self, positions: np.ndarray) -> np.ndarray:
        """Images of `positions` in that order, read array by array in sorted rows."""
        codes, rows = self._codes[positions], self._rows[positions]
        out = np.empty((len(positions), *self._size), np.uint8)
        for code in np.unique(codes):
            sel = np.flatnonzero(codes == code)
            wanted, back = np.unique(rows[sel], return_inverse=True)
            block = np.asarray(self._arrays[code][wanted])
            if block.shape[1:] != self._size:
                block = np.stack([resize_slice(img, self.input_size) for img in block])
            out[sel] = block[back]
        return out

    def __getstate__(self):
        # Worker processes get file references, not copies of the memory-mapped data.
        state = self.__dict__.copy()
        state["_arrays"] = [_portable(a) for a in self._arrays]
        return state

    def __setstate__(self, state):
        state["_arrays"] = [a.open() if isinstance(a, _MemmapRef) else a for a in state["_arrays"]]
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"SliceBatches(split={self.split!r}, n_images={self.n_images}, "
            f"batches={len(self)}x{self.batch_size}, image_shape={self.image_shape}, "
            f"classes={len(self.names)}, shuffle={self.shuffle}, mix={self.mix is not None})"
        )


# --------------------------------------------------------------------------- stages


def load_split_index(path) -> pd.DataFrame:
    """Read the split stage's slice index (``data/split/index.csv``).

    ``specimen_id`` is read as text, so ids like ``"007"`` survive.

    Raises
    ------
    DataError
        The file is missing or lacks one of ``SPLIT_INDEX_COLUMNS``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split index {path} does not exist; run the split stage first")
    index = pd.read_csv(path, dtype={"specimen_id": str, "slice_id": str, "species": str})
    _require_columns(index, SPLIT_INDEX_COLUMNS, f"split index {path}")
    return index


def make_datasets(
    split_index: pd.DataFrame,
    store_dir,
    names=None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    mix: MixFn | None = None,
    input_size: int | None = None,
    workers: int = 1,
    use_multiprocessing: bool = False,
) -> dict[str, SliceBatches]:
    """Open the slice store and build the ``train``/``val``/``test`` datasets.

    The split table is checked first (:func:`check_splits`). ``train`` is shuffled
    (seeded) and mixed with `mix`; ``val`` and ``test`` keep index order without mixing.

    Parameters
    ----------
    split_index : DataFrame
        The split stage's index (see :func:`load_split_index`).
    store_dir : path-like
        The slice store (``data/slices``).
    names : list of str, optional
        Class order; default :func:`class_names` of `split_index`.

    Returns
    -------
    dict of str to SliceBatches
    """
    from foramlib.dataset.slicing import SliceError, load_slices

    names = class_names(split_index) if names is None else _check_names(names)
    check_splits(split_index, names)
    try:
        _, arrays = load_slices(store_dir, index=split_index, mmap=True)
    except (SliceError, FileNotFoundError, OSError) as exc:
        raise DataError(f"cannot open the slice store {os.fspath(store_dir)}: {exc}") from exc
    common = dict(
        batch_size=batch_size,
        input_size=input_size,
        workers=workers,
        use_multiprocessing=use_multiprocessing,
    )
    out = {}
    for s in SPLITS:
        rows = split_index[split_index["split"] == s]
        train = s == "train"
        out[s] = SliceBatches(
            rows, arrays, names, shuffle=train, seed=seed, mix=mix if train else None, **common
        )
    return out
