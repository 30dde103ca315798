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

from foramlib.volumes import (
    ManifestWarning,
    VolumeError,
    manifest_voxel_size,
    read_manifest,
    read_volume,
)

__all__ = [
    "CurationError",
    "summarize_taxa",
    "curate",
    "inspect_volumes",
    "one_scan_per_taxon",
    "read_curated",
]


class CurationError(ValueError):
    """Curation cannot produce a usable collection."""


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


def inspect_volumes(manifest: pd.DataFrame) -> pd.DataFrame:
    """Read every volume the manifest lists and collect its vital statistics.

    Every file is read, so one corrupt scan does not hide another: all failures are
    reported together in one :class:`~foramlib.volumes.VolumeError`.

    Returns
    -------
    DataFrame
        ``file``, ``shape`` (after isotropic resampling), ``voxel_size_um``,
        ``min``, ``max`` and ``median`` intensity.
    """
    rows, problems = [], []
    for row in manifest.itertuples(index=False):
        voxel = manifest_voxel_size(row)
        try:
            vol = read_volume(row.path, voxel_size_um=voxel)
        except VolumeError as exc:
            problems.append(str(exc))
            continue
        data = vol.data
        rows.append(
            dict(
                file=row.file,
                shape="x".join(map(str, data.shape)),
                voxel_size_um=vol.voxel_size_um,
                min=float(data.min()),
                max=float(data.max()),
                median=float(np.median(data)),
            )
        )
    if problems:
        raise VolumeError(
            f"{len(problems)} of {len(manifest)} volume(s) cannot be used:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return pd.DataFrame(rows)


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
    of :func:`~foramlib.volumes.read_manifest` is expected here and silenced; every other
    check still applies.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ManifestWarning)
        return read_manifest(path, raw_dir)
