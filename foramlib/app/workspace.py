"""What the dashboard reads from a pipeline workspace (no widgets here).

A workspace is the folder holding the pipeline's ``models/``, ``results/`` and
``data/``. These functions find it, read its files and never raise for a missing or
unreadable file: the dashboard shows what is there and says what to run for the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "GALLERY_PER_GENUS",
    "GALLERY_COLUMNS",
    "resolve_workspace",
    "max_upload_bytes",
    "read_json",
    "data_source",
    "collection_counts",
    "gallery_table",
    "default_collection_loader",
]


DEFAULT_MAX_UPLOAD_MB = 100


GALLERY_PER_GENUS = 5


GALLERY_COLUMNS = ("slice_id", "specimen_id", "species", "array", "row", "split")


def resolve_workspace(path) -> Path:
    """The workspace folder (holding models/, results/, data/).

    Voila runs a notebook in its own folder, so ``"."`` inside ``dashboard/`` means the
    repository root: a folder named ``dashboard`` without pipeline outputs falls back to
    its parent when that has them.

    >>> resolve_workspace("/tmp").name
    'tmp'
    """
    ws = Path(path).resolve()
    markers = ("params.yaml", "models", "results", "dvc.yaml")
    if ws.name == "dashboard" and not any((ws / m).exists() for m in markers):
        if any((ws.parent / m).exists() for m in markers):
            return ws.parent
    return ws


def max_upload_bytes(env=None) -> tuple[int, str | None]:
    """Upload limit from ``FORAM_MAX_UPLOAD_MB`` (default 100 MB), and a note if invalid.

    >>> max_upload_bytes({"FORAM_MAX_UPLOAD_MB": "2"})
    (2097152, None)
    >>> max_upload_bytes({"FORAM_MAX_UPLOAD_MB": "lots"})[1]
    "FORAM_MAX_UPLOAD_MB='lots' is not a positive number; using 100 MB"
    """
    env = os.environ if env is None else env
    raw = env.get("FORAM_MAX_UPLOAD_MB")
    if raw is None or raw == "":
        return DEFAULT_MAX_UPLOAD_MB * 2**20, None
    try:
        mb = float(raw)
        if not np.isfinite(mb) or mb <= 0:
            raise ValueError
    except ValueError:
        return DEFAULT_MAX_UPLOAD_MB * 2**20, (
            f"FORAM_MAX_UPLOAD_MB={raw!r} is not a positive number; using "
            f"{DEFAULT_MAX_UPLOAD_MB} MB"
        )
    return int(mb * 2**20), None


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_collection_loader(workspace: Path):
    from foramlib.matching.index import load_collection

    index_dir = Path(workspace) / "data" / "index"
    if not index_dir.is_dir():
        raise FileNotFoundError(f"{index_dir} does not exist")
    return load_collection(index_dir=index_dir, workspace=workspace)


def data_source(workspace, metrics: dict | None = None) -> str | None:
    """The run's data source ("virtual", "manifest"...): ``metrics.json``, else params.

    Examples
    --------
    >>> data_source("/nonexistent", {"data_source": "virtual"})
    'virtual'
    >>> data_source("/nonexistent") is None
    True
    """
    if metrics and metrics.get("data_source"):
        return str(metrics["data_source"])
    params = Path(workspace) / "params.yaml"
    if params.is_file():
        import yaml

        try:
            return str(yaml.safe_load(params.read_text(encoding="utf-8"))["data"]["source"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
    return None


def collection_counts(workspace) -> dict | None:
    """Specimens, scans and genera of the curated manifest (None when absent or unreadable).

    Examples
    --------
    >>> collection_counts("/nonexistent") is None
    True
    """
    manifest = Path(workspace) / "data" / "curated" / "manifest.csv"
    if not manifest.is_file():
        return None
    try:
        m = pd.read_csv(manifest, dtype=str)
        return {
            "specimens": int(m["specimen_id"].nunique()),
            "scans": len(m),
            "genera": int(m["species"].nunique()),
        }
    except (OSError, ValueError, KeyError):
        return None


def gallery_table(workspace, per_genus: int = GALLERY_PER_GENUS) -> pd.DataFrame | None:
    """Up to `per_genus` stored TEST slices of each genus, spread over its slices.

    Indexed by ``slice_id`` with the columns of :data:`GALLERY_COLUMNS` that the split
    index has; only slices whose array file exists. None without a split index and a
    slice store.

    Examples
    --------
    >>> gallery_table("/nonexistent") is None
    True
    """
    workspace = Path(workspace)
    index = workspace / "data" / "split" / "index.csv"
    store = workspace / "data" / "slices"
    if not index.is_file() or not store.is_dir():
        return None
    try:
        df = pd.read_csv(
            index,
            dtype={"slice_id": str, "specimen_id": str, "species": str, "array": str},
            usecols=lambda c: c in GALLERY_COLUMNS,
        )
    except (OSError, ValueError):
        return None
    if not {"slice_id", "species", "array", "row", "split"} <= set(df.columns):
        return None
    test = df[df["split"] == "test"]
    picks = []
    for _, rows in test.groupby("species", sort=True):
        k = min(per_genus, len(rows))
        picks.append(rows.iloc[np.linspace(0, len(rows) - 1, k).round().astype(int)])
    if not picks:
        return None
    table = pd.concat(picks).drop_duplicates("slice_id").set_index("slice_id")
    return table[[(store / a).is_file() for a in table["array"]]]
