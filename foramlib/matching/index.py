"""The collection's 3D matching index on disk, and the specimen volumes behind it.

The ``index`` stage indexes every curated specimen once with
:func:`foramlib.matching.search.build_index` and writes one folder (``data/index``):

- ``index.npz``: the candidate sections and their descriptors
  (:meth:`foramlib.matching.search.MatchIndex.save`);
- ``specimens.csv``: one row per indexed specimen: ``specimen_id``, ``species``,
  ``file`` (the volume's path as the stage saw it, relative to the workspace, so the
  folder can be moved with the workspace), ``voxel_size_um`` and ``candidates``;
- ``index.json``: the index configuration, counts and the index size in bytes. No
  timings: a rerun on the same inputs writes the same bytes.

Only the **first listed scan of each specimen** is indexed. A repeat scan
(``<specimen>_scan2``) shows the same fossil, so indexing it would double that
specimen's candidates and crowd the top matches with near-duplicates; its file is
listed under ``repeat_scans_skipped`` in ``index.json`` (and makes a fair query).

:func:`load_collection` reads the folder back into a :class:`Collection`, whose
volumes are read lazily (and a few kept in memory) for refinement and 3D views.

Examples
--------
Reading an image file (or its bytes) as a query; anything that is not an image is a
clear error:

>>> import cv2
>>> ok, png = cv2.imencode(".png", (np.arange(256) * 257).astype(np.uint16).reshape(16, 16))
>>> img = read_image(png.tobytes(), name="upload.png")
>>> img.dtype, img.shape
(dtype('uint16'), (16, 16))
>>> try:
...     read_image(b"not an image", name="notes.txt")
... except ImageError as err:
...     print(err)
notes.txt: not a readable image (expected PNG, JPEG, TIFF, BMP, ...)
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.dataset.curation import read_curated
from foramlib.io.atomic import atomic_dir, write_csv, write_text
from foramlib.io.environment import positive_number
from foramlib.io.volumes import manifest_voxel_size, read_volume
from foramlib.matching.search import (
    IndexConfig,
    MatchError,
    MatchIndex,
    PreparedVolume,
    index_from_parts,
    index_volume,
    prepare_volume,
)
from foramlib.workers import volume_pool

__all__ = [
    "INDEX_FILE",
    "SPECIMENS_FILE",
    "META_FILE",
    "CollectionError",
    "ImageError",
    "build_collection_index",
    "Collection",
    "load_collection",
    "cache_budget_bytes",
    "CACHE_MB",
    "read_image",
]

INDEX_FILE = "index.npz"
SPECIMENS_FILE = "specimens.csv"
META_FILE = "index.json"
SPECIMEN_COLUMNS = ("specimen_id", "species", "file", "voxel_size_um", "candidates")
RAW_CACHE = 3  # raw volumes kept by a Collection (3D views of the last matches)
#: memory a Collection's prepared volumes may hold unless ``FORAM_MATCH_CACHE_MB`` says
#: otherwise: the virtual collection's 71 specimens (128³) take about 600 MB, while 96
#: real scans read at 512³ would take 48 GB; past the budget the least recently used
#: volumes are dropped and read again when a search reaches them
CACHE_MB = 3072


class CollectionError(ValueError):
    """An index folder that is missing, incomplete or inconsistent with its volumes."""


class ImageError(ValueError):
    """A query file that cannot be read as an image."""


def _relative_file(raw_dir, file: str) -> str:
    """The volume path as the stage sees it: `raw_dir`/`file`, or `file` if absolute."""
    path = Path(file)
    return path.as_posix() if path.is_absolute() else (Path(raw_dir) / path).as_posix()


def _index_volume_file(path, voxel_size_um, max_side, specimen_id, species, config):
    """Read one volume and index its sections; the part and the read's block size."""
    vol = read_volume(path, voxel_size_um=voxel_size_um, max_side=max_side)
    try:
        return index_volume(specimen_id, species, vol.data, config), vol.binned
    except MatchError as exc:  # the specimen's file, as the manifest names it
        raise MatchError(f"{Path(path).name} ({exc})") from None


def build_collection_index(
    curated_manifest,
    raw_dir,
    out_dir,
    config: IndexConfig,
    *,
    max_side: int | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> Path:
    """Index one scan of every curated specimen and write the index folder atomically.

    A volume with a side over `max_side` is binned as it is read
    (:func:`foramlib.io.volumes.read_volume`); ``index.json`` then records `max_side`
    (``read_max_side``) and each binned specimen's block size, and the
    :class:`Collection` reads the volumes the same way, so that its planes fall where
    the index's were cut.

    Parameters
    ----------
    curated_manifest : path-like
        The curated manifest (``data/curated/manifest.csv``), read with
        :func:`foramlib.dataset.curation.read_curated`.
    raw_dir : path-like
        Folder holding the volumes, as given (relative to the workspace root); the
        ``file`` column of ``specimens.csv`` is ``raw_dir/file``.
    out_dir : path-like
        The index folder; replaced as a whole only once everything is written.
    config : IndexConfig
    max_side : int, optional
    progress : callable, optional
        ``progress(fraction, message)`` before each volume and at the end.

    Returns
    -------
    Path
        `out_dir`.

    Raises
    ------
    ManifestError, VolumeError, MatchError
        For an unreadable manifest or volume, or a volume without a usable section.
    """
    report = progress or (lambda fraction, message: None)
    manifest = read_curated(curated_manifest, raw_dir)
    first = manifest.drop_duplicates("specimen_id", keep="first").reset_index(drop=True)
    skipped = manifest.loc[manifest.duplicated("specimen_id", keep="first"), "file"].tolist()
    n = len(first)
    jobs = [
        (row.path, manifest_voxel_size(row), max_side, row.specimen_id, row.species, config)
        for row in first.itertuples(index=False)
    ]
    parts, binned = [], {}
    # each volume is read and cut where its job runs (a fresh local process, or a Dask
    # worker: foramlib.workers), so only its small descriptors come back; joined in
    # order. Portable: numpy's and OpenCV's CPU-specific kernels would change the bytes
    with volume_pool(1, portable=True) as pool:
        futures = [pool.submit(_index_volume_file, *job) for job in jobs]
        for i, (job, future) in enumerate(zip(jobs, futures, strict=True)):
            report(i / n, f"indexing {job[3]} ({i + 1}/{n})")
            part, block = future.result()
            parts.append(part)
            if block > 1:
                binned[job[3]] = block
    index = index_from_parts(parts, config)
    counts = pd.Series(index.specimen).value_counts()
    specimens = pd.DataFrame(
        {
            "specimen_id": first["specimen_id"],
            "species": first["species"],
            "file": [_relative_file(raw_dir, f) for f in first["file"]],
            "voxel_size_um": first["voxel_size_um"],
            "candidates": [int(counts.get(s, 0)) for s in first["specimen_id"]],
        }
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        index.save(tmp / INDEX_FILE)
        write_csv(specimens, tmp / SPECIMENS_FILE)
        meta = {
            "config": config.as_dict(),
            "candidates": len(index),
            "specimens": n,
            "species": sorted(specimens["species"].unique().tolist()),
            "index_bytes": (tmp / INDEX_FILE).stat().st_size,
            "repeat_scans_skipped": skipped,
        }
        if binned:  # only then: an index of volumes read as they are stays as it was
            meta.update(read_max_side=int(max_side), binned=binned)
        write_text(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    report(1.0, f"{len(index)} candidate sections of {n} specimens")
    return out_dir


def cache_budget_bytes() -> int:
    """Bytes a :class:`Collection` keeps in prepared volumes: ``FORAM_MATCH_CACHE_MB``
    megabytes, else :data:`CACHE_MB`.

    Raises
    ------
    ValueError
        If ``FORAM_MATCH_CACHE_MB`` is not a positive number.
    """
    return int(positive_number("FORAM_MATCH_CACHE_MB", CACHE_MB, "megabytes") * 2**20)


@dataclass
class _LRU:
    """A small thread-safe least-recently-used cache of at most `maxsize` items and,
    with `max_bytes`, items whose ``nbytes`` sum to at most that (the newest item is
    kept whatever its size)."""

    maxsize: int
    max_bytes: int | None = None
    items: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    evicted: int = 0

    @property
    def nbytes(self) -> int:
        with self.lock:
            return sum(int(getattr(v, "nbytes", 0)) for v in self.items.values())

    def _over(self) -> bool:
        if len(self.items) > self.maxsize:
            return True
        if self.max_bytes is None or len(self.items) <= 1:
            return False
        return sum(int(getattr(v, "nbytes", 0)) for v in self.items.values()) > self.max_bytes

    def get(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while self._over():
                self.items.popitem(last=False)
                self.evicted += 1
        return value


class _PreparedVolumes(Mapping):
    """specimen_id → PreparedVolume, read and prepared on first access (for ``match``)."""

    def __init__(self, collection: Collection):
        self._c = collection

    def __getitem__(self, specimen_id):
        if specimen_id not in self._c._rows:
            raise KeyError(specimen_id)
        return self._c.prepared(specimen_id)

    def __iter__(self):
        return iter(self._c.specimens["specimen_id"].tolist())

    def __len__(self) -> int:
        return len(self._c.specimens)

    def __contains__(self, specimen_id) -> bool:
        return specimen_id in self._c._rows


@dataclass
class Collection:
    """An index with the specimen volumes it was built from.

    Attributes
    ----------
    index : MatchIndex
    specimens : DataFrame
        ``specimens.csv``: specimen_id, species, file, voxel_size_um, candidates.
    workspace : Path
        Folder that the ``file`` entries are relative to.
    cache_size : int
        Prepared volumes kept in memory (about 8 MB each at 128³). A match compares
        the query with sections of most specimens, so keep it at least the number of
        specimens when memory allows (the default collection's 71 fit in ~600 MB);
        raw volumes (for 3D views) are kept for the last few.
    cache_bytes : int, optional
        ... and at most this much memory in them (default :func:`cache_budget_bytes`):
        the least recently used are dropped first.
    max_side : int or None
        The `max_side` the index read its volumes with (``index.json``'s
        ``read_max_side``): the volumes are read the same way here.
    """

    index: MatchIndex
    specimens: pd.DataFrame
    workspace: Path = Path(".")
    cache_size: int = 96
    max_side: int | None = None
    cache_bytes: int | None = None
    _raw: _LRU = field(init=False, repr=False)
    _prep: _LRU = field(init=False, repr=False)
    _rows: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace)
        if not isinstance(self.cache_size, int) or self.cache_size < 1:
            raise ValueError(f"cache_size must be an integer >= 1, got {self.cache_size!r}")
        if self.cache_bytes is None:
            self.cache_bytes = cache_budget_bytes()
        if (
            isinstance(self.cache_bytes, bool)
            or not isinstance(self.cache_bytes, int)
            or (self.cache_bytes < 1)
        ):
            raise ValueError(f"cache_bytes must be an integer >= 1, got {self.cache_bytes!r}")
        self._raw = _LRU(min(self.cache_size, RAW_CACHE))
        self._prep = _LRU(self.cache_size, self.cache_bytes)
        self._rows = {r.specimen_id: r for r in self.specimens.itertuples(index=False)}

    @property
    def genera(self) -> list[str]:
        """The indexed genera (the manifest's ``species`` column), sorted."""
        return sorted(self.specimens["species"].unique().tolist())

    def path(self, specimen_id: str) -> Path:
        """Where the specimen's volume is read from."""
        row = self._row(specimen_id)
        file = Path(row.file)
        return file if file.is_absolute() else self.workspace / file

    def _row(self, specimen_id: str):
        try:
            return self._rows[specimen_id]
        except KeyError:
            raise CollectionError(
                f"specimen {specimen_id!r} is not in the index "
                f"({len(self._rows)} specimens, e.g. {next(iter(self._rows), None)!r})"
            ) from None

    def volume(self, specimen_id: str) -> np.ndarray:
        """The specimen's volume as indexed (float32, isotropic), read on first use."""
        row = self._row(specimen_id)

        def read():
            path = self.path(specimen_id)
            return read_volume(path, manifest_voxel_size(row), max_side=self.max_side).data

        return self._raw.get(specimen_id, read)

    def prepared(self, specimen_id: str) -> PreparedVolume:
        """The volume prepared for cutting with the index's settings (for refinement)."""
        return self._prep.get(
            specimen_id,
            lambda: prepare_volume(self.volume(specimen_id), self.index.config, specimen_id),
        )

    def preload(self, specimens=None, progress: Callable[[float, str], None] | None = None):
        """Read and prepare volumes now (up to `cache_size` and `cache_bytes`), so that
        matches are fast.

        Parameters
        ----------
        specimens : sequence of str, optional
            Which ones (default: all, in ``specimens.csv`` order).
        progress : callable, optional
            ``progress(fraction, message)`` before each volume and at the end.
        """
        ids = list(self.specimens["specimen_id"] if specimens is None else specimens)
        ids = ids[: self.cache_size]
        evicted, ready = self._prep.evicted, len(ids)
        for i, sid in enumerate(ids):
            if progress:
                progress(i / len(ids), f"reading {sid} ({i + 1}/{len(ids)})")
            self.prepared(sid)
            if self._prep.evicted > evicted:  # the memory budget is full: stop here
                ready = len(self._prep.items)
                break
        if progress:
            progress(1.0, f"{ready} volumes ready")

    @property
    def volumes(self) -> Mapping:
        """A lazy mapping specimen_id → PreparedVolume, for ``match(volumes=...)``."""
        return _PreparedVolumes(self)


def load_collection(
    index_dir="data/index", workspace=".", *, cache_size: int = 96, cache_bytes: int | None = None
) -> Collection:
    """Read an index folder written by :func:`build_collection_index`.

    Raises
    ------
    CollectionError
        If a file of the folder is missing (naming it) or ``specimens.csv`` does not
        list the index's specimens.
    MatchError
        If the index was built with another preprocessing version (rebuild it).
    """
    index_dir = Path(index_dir)
    for name in (INDEX_FILE, SPECIMENS_FILE):
        if not (index_dir / name).is_file():
            raise CollectionError(
                f"{(index_dir / name).as_posix()} is missing: run `dvc repro index` first "
                "(or `foram index`)"
            )
    index = MatchIndex.load(index_dir / INDEX_FILE)
    specimens = pd.read_csv(
        index_dir / SPECIMENS_FILE,
        dtype={"specimen_id": str, "species": str, "file": str},
        keep_default_na=False,
        na_values={"voxel_size_um": [""]},
    )
    missing = [c for c in SPECIMEN_COLUMNS if c not in specimens.columns]
    if missing:
        raise CollectionError(f"{index_dir / SPECIMENS_FILE}: lacks column(s) {missing}")
    listed, indexed = set(specimens["specimen_id"]), set(np.unique(index.specimen).tolist())
    if not indexed <= listed:
        raise CollectionError(
            f"{index_dir / SPECIMENS_FILE} does not list indexed specimen(s) "
            f"{sorted(indexed - listed)[:5]}; rebuild the index (`dvc repro index`)"
        )
    meta = index_dir / META_FILE
    max_side = json.loads(meta.read_text("utf-8")).get("read_max_side") if meta.is_file() else None
    return Collection(index, specimens, Path(workspace), cache_size, max_side, cache_bytes)


def read_image(source, name: str | None = None) -> np.ndarray:
    """Read a query image from a path or from its bytes, keeping its pixel type.

    Decoded by :func:`foramlib.io.uploads.decode_upload`, as the dashboard's uploads are
    (tifffile for TIFF, OpenCV ``IMREAD_UNCHANGED`` for the rest); colour comes back in
    RGB(A) order.

    Raises
    ------
    ImageError
        If the file is missing, its content is not an image, or it has more pixels than
        :func:`foramlib.io.uploads.image_pixel_limit` allows.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), name or "image"
    else:
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise ImageError(f"{name}: file not found")
        data = path.read_bytes()
    # the dashboard's decoder: one reader of image bytes for uploads and the CLI
    from foramlib.io.uploads import ImageTooLarge, UploadError, VolumeUpload, decode_upload

    try:
        image = decode_upload(name, data)
    except ImageTooLarge as exc:  # readable, but refused: say why
        raise ImageError(str(exc)) from None
    except UploadError:
        image = None
    if image is None:
        raise ImageError(f"{name}: not a readable image (expected PNG, JPEG, TIFF, BMP, ...)")
    if isinstance(image, VolumeUpload):
        raise ImageError(
            f"{name}: holds a volume of shape {image.data.shape}, not a section; "
            "cut one section from it first"
        )
    return np.asarray(image)
