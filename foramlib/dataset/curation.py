"""Curation: check every listed volume, then keep the taxa with enough specimens.

The paper keeps the 12 of 27 species that have at least four 3D models. A repeat
scan of one specimen is not an independent model, so the threshold counts distinct
``specimen_id`` values, not files.

Examples
--------
>>> import pandas as pd
>>> m = pd.DataFrame({"file": ["a1", "a2", "a3", "b1"],
...                   "specimen_id": ["A1", "A2", "A2", "B1"],
...                   "species": ["Alpha", "Alpha", "Alpha", "Beta"]})
>>> curated, taxa = curate(m, min_models=2)
>>> sorted(curated["species"].unique()), taxa["kept"].tolist()
(['Alpha'], [True, False])
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from foramlib.io.volumes import (
    ManifestWarning,
    VolumeError,
    check_manifest,
    is_volume_path,
    manifest_voxel_size,
    read_manifest,
    read_volume,
)

__all__ = [
    "CurationError",
    "CollectionError",
    "MIN_EDGE_VOXELS",
    "summarize_taxa",
    "curate",
    "check_collection",
    "volume_checks",
    "inspect_volumes",
    "one_scan_per_taxon",
    "read_curated",
]


#: voxels a volume needs along every axis (after isotropic resampling): the 3D index
#: and the slicer's segmentation need at least this much of a specimen
MIN_EDGE_VOXELS = 8


class CurationError(ValueError):
    """Curation cannot produce a usable collection."""


class CollectionError(CurationError):
    """A collection with problems in its manifest, its volumes or both, all listed.

    Attributes
    ----------
    manifest : str
        The manifest's path.
    manifest_problems, volume_problems : list of str
    """

    def __init__(self, manifest, manifest_problems, volume_problems, n_volumes: int):
        self.manifest = str(manifest)
        self.manifest_problems = list(manifest_problems)
        self.volume_problems = list(volume_problems)
        total = len(self.manifest_problems) + len(self.volume_problems)
        parts = [f"collection of manifest {self.manifest} has {total} problem(s)"]
        if self.manifest_problems:
            parts.append(f"in the manifest ({len(self.manifest_problems)}):")
            parts += [f"  - {p}" for p in self.manifest_problems]
        if self.volume_problems:
            parts.append(f"in the volumes ({len(self.volume_problems)} of {n_volumes} read):")
            parts += [f"  - {p}" for p in self.volume_problems]
        super().__init__("\n".join(parts))
        self.n_volumes = n_volumes

    def __reduce__(self):
        return (
            type(self),
            (self.manifest, self.manifest_problems, self.volume_problems, self.n_volumes),
        )


def summarize_taxa(manifest: pd.DataFrame, min_models: int) -> pd.DataFrame:
    """Per taxon: number of volumes, distinct specimens, repeat scans, and whether kept.

    Rows are ordered like the paper's Table 2: most specimens first.
    """
    if not isinstance(min_models, int) or isinstance(min_models, bool) or min_models < 1:
        raise ValueError(f"min_models must be an integer >= 1, got {min_models!r}")
    missing = {"file", "specimen_id", "species"} - set(manifest.columns)
    if missing:
        raise ValueError(f"manifest lacks column(s) {sorted(missing)}")
    grouped = manifest.groupby("species", sort=False)
    taxa = pd.DataFrame(
        {
            "n_volumes": grouped["file"].count(),
            "n_specimens": grouped["specimen_id"].nunique(),
        }
    )
    taxa["repeat_scans"] = taxa["n_volumes"] - taxa["n_specimens"]
    taxa["kept"] = taxa["n_specimens"] >= min_models
    taxa = taxa.reset_index().sort_values(
        ["kept", "n_specimens", "n_volumes", "species"],
        ascending=[False, False, False, True],
        kind="stable",
    )
    return taxa.reset_index(drop=True)


def curate(manifest: pd.DataFrame, min_models: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep taxa with at least `min_models` distinct specimens.

    Returns
    -------
    curated : DataFrame
        The manifest rows of the kept taxa, order preserved.
    taxa : DataFrame
        :func:`summarize_taxa` of the whole manifest.

    Raises
    ------
    CurationError
        If no taxon reaches the threshold.
    """
    taxa = summarize_taxa(manifest, min_models)
    kept = taxa.loc[taxa["kept"], "species"]
    if kept.empty:
        best = taxa.iloc[0]
        raise CurationError(
            f"no taxon has >= {min_models} distinct specimens (min_models); the best is "
            f"{best['species']!r} with {best['n_specimens']}. Lower curate.min_models or add scans."
        )
    curated = manifest[manifest["species"].isin(kept)].reset_index(drop=True)
    return curated, taxa


def _check_volume(path, file: str, voxel, max_side):
    """One volume's statistics (a dict), or the line saying why it is unusable (a str)."""
    try:
        vol = read_volume(path, voxel_size_um=voxel, max_side=max_side)
    except VolumeError as exc:
        return str(exc)
    data = vol.data
    if min(data.shape) < MIN_EDGE_VOXELS:
        return (
            f"{file}: shape {data.shape} (isotropic {vol.voxel_size_um:g} µm voxels) "
            f"has an axis under {MIN_EDGE_VOXELS} voxels; slicing and the 3D index "
            "need more of the specimen (check the file, or its voxel size)"
        )
    return dict(
        file=file,
        shape="x".join(map(str, data.shape)),
        voxel_size_um=vol.voxel_size_um,
        min=float(data.min()),
        max=float(data.max()),
        median=float(np.median(data)),
    )


def volume_checks(
    manifest: pd.DataFrame, max_side: int | None = None, *, n_jobs: int = 1
) -> tuple[pd.DataFrame, list[str]]:
    """Read every volume the manifest lists: its vital statistics, and every problem.

    A volume is a problem when it cannot be read (see
    :func:`~foramlib.io.volumes.read_volume`) or has fewer than :data:`MIN_EDGE_VOXELS`
    voxels along an axis. Every file is read, so one bad scan does not hide another. A
    volume with a side over `max_side` is checked as the later stages read it: binned
    while it is read (``read_volume``'s `max_side`), so memory stays bounded. The reads
    run where :func:`foramlib.workers.volume_pool` puts them (`n_jobs` local
    processes, or a Dask cluster), in the manifest's order.

    Returns
    -------
    checks : DataFrame
        ``file``, ``shape`` (after isotropic resampling), ``voxel_size_um``, ``min``,
        ``max`` and ``median`` intensity of each usable volume.
    problems : list of str
        One line per unusable volume, starting with its file name.
    """
    from foramlib.workers import volume_pool

    jobs = [
        (row.path, row.file, manifest_voxel_size(row), max_side)
        for row in manifest.itertuples(index=False)
    ]
    with volume_pool(n_jobs) as pool:
        outcomes = [f.result() for f in [pool.submit(_check_volume, *job) for job in jobs]]
    rows = [o for o in outcomes if isinstance(o, dict)]
    problems = [o for o in outcomes if isinstance(o, str)]
    columns = ["file", "shape", "voxel_size_um", "min", "max", "median"]
    return pd.DataFrame(rows, columns=columns), problems


def inspect_volumes(manifest: pd.DataFrame) -> pd.DataFrame:
    """Read every volume the manifest lists and collect its vital statistics.

    All failures are reported together in one :class:`~foramlib.io.volumes.VolumeError`
    (see :func:`volume_checks`).

    Returns
    -------
    DataFrame
        ``file``, ``shape`` (after isotropic resampling), ``voxel_size_um``,
        ``min``, ``max`` and ``median`` intensity.
    """
    checks, problems = volume_checks(manifest)
    if problems:
        raise VolumeError(
            f"{len(problems)} of {len(manifest)} volume(s) cannot be used:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return checks


def check_collection(
    manifest, data_dir=None, *, max_side: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check a collection's manifest and every volume it lists, in one pass.

    The volumes of the manifest's readable rows are read even when the manifest has
    problems, so one run reports both kinds (a missing file and a corrupt scan, say).

    Parameters
    ----------
    manifest : path-like
        The manifest CSV (see :func:`foramlib.io.volumes.read_manifest`).
    data_dir : path-like, optional
        Folder that relative ``file`` entries are resolved against.
    max_side : int, optional
        See :func:`volume_checks`.

    Returns
    -------
    listed : DataFrame
        The manifest's rows.
    checks : DataFrame
        :func:`volume_checks` of every volume.

    Raises
    ------
    CollectionError
        Every problem of the manifest and of the volumes, in one message.
    """
    from pathlib import Path

    listed, manifest_problems = check_manifest(manifest, data_dir)
    readable = pd.DataFrame()
    if listed is not None and {"file", "path"} <= set(listed.columns):
        usable = [bool(p) and Path(p).exists() and is_volume_path(p) for p in listed["path"]]
        readable = listed[usable]
    checks, volume_problems = (
        volume_checks(readable, max_side) if len(readable) else (pd.DataFrame(), [])
    )
    if manifest_problems or volume_problems:
        raise CollectionError(manifest, manifest_problems, volume_problems, len(readable))
    return listed, checks


def one_scan_per_taxon(manifest: pd.DataFrame, taxa: pd.DataFrame) -> pd.DataFrame:
    """The first listed scan of each kept taxon, in the order of `taxa` (for figures)."""
    kept = taxa.loc[taxa["kept"], "species"].tolist()
    first = manifest.drop_duplicates("species").set_index("species")
    missing = [s for s in kept if s not in first.index]
    if missing:
        raise ValueError(f"taxa {missing} are marked kept but have no scan in the manifest")
    return first.loc[kept].reset_index()


def read_curated(path, raw_dir) -> pd.DataFrame:
    """Read the curated manifest written by the curate stage, paths resolved in `raw_dir`.

    The raw folder holds the dropped taxa's scans too, so the "unlisted files" warning
    of :func:`~foramlib.io.volumes.read_manifest` is expected here and silenced; every other
    check still applies.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ManifestWarning)
        return read_manifest(path, raw_dir)
