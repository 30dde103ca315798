"""The ``curate`` stage: check every listed volume and keep the well-represented taxa.

Examples
--------
>>> cfg = CurateStageConfig.from_params(
...     {"data": {"source": "virtual", "raw_dir": "raw", "manifest": "raw/manifest.csv",
...               "max_side": 512},
...      "curate": {"min_models": 4}})
>>> cfg.min_models, cfg.max_side, cfg.out_dir
(4, 512, 'data/curated')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.pipeline._config import StageConfig, params_field

__all__ = ["CurateStageConfig", "CurateStageResult", "run"]


@dataclass(frozen=True)
class CurateStageConfig(StageConfig):
    """What the ``curate`` stage reads and writes.

    Parameters
    ----------
    source : str
        ``data.source``: labels the figure (virtual data is always labelled virtual).
    raw_dir, manifest : str
        The folder of the volumes and the manifest CSV listing them.
    min_models : int
        Keep taxa with at least this many distinct specimens (paper: 4).
    max_side : int
        ``data.max_side``: larger volumes are binned as they are read.
    out_dir, taxa_table, figure : str
        The curated manifest and per-volume checks; the per-taxon counts; a
        Figure-2-like overview of the kept taxa.
    """

    stage = "curate"
    source: str = params_field("data.source", default="virtual")
    raw_dir: str = params_field("data.raw_dir", default="data/virtual")
    manifest: str = params_field("data.manifest", default="data/virtual/manifest.csv")
    min_models: int = params_field("curate.min_models", default=4)
    max_side: int = params_field("data.max_side", default=512)
    out_dir: str = "data/curated"
    taxa_table: str = "results/tables/taxa.csv"
    figure: str = "results/figures/figure2_collection.png"


@dataclass(frozen=True)
class CurateStageResult:
    """The stage's outputs, for display."""

    summary: str  # one line: listed and kept volumes, specimens, taxa
    taxa: pd.DataFrame  # per-taxon counts and the kept flag
    checks: pd.DataFrame  # one row of measurements per listed volume
    figure: Path


def run(config: CurateStageConfig) -> CurateStageResult:
    """Read the manifest, inspect every volume, keep the taxa with enough specimens,
    and write the curated manifest, the checks, the taxa table and the figure."""
    from foramlib.dataset import curation
    from foramlib.io import volumes
    from foramlib.io.atomic import write_csv
    from foramlib.viz import plots

    listed, checks = curation.check_collection(
        config.manifest, config.raw_dir, max_side=config.max_side
    )
    curated, taxa = curation.curate(listed, min_models=config.min_models)
    summary = (
        f"{len(listed)} volumes of {listed['specimen_id'].nunique()} specimens over "
        f"{listed['species'].nunique()} taxa; kept {int(taxa['kept'].sum())} taxa "
        f"({len(curated)} volumes, {curated['specimen_id'].nunique()} specimens)."
    )
    write_csv(curated.drop(columns=["path"]), Path(config.out_dir) / "manifest.csv")
    write_csv(checks, Path(config.out_dir) / "volumes.csv")
    write_csv(taxa, config.taxa_table)

    examples = curation.one_scan_per_taxon(curated, taxa)
    views = []
    for row in examples.itertuples():  # one volume in memory at a time, not one per taxon
        volume = volumes.read_volume(
            row.path, volumes.manifest_voxel_size(row), max_side=config.max_side
        ).data
        views.append([np.array(view) for view in plots.orthogonal_views(volume)])  # copies
        del volume
    fig = plots.collection_figure(
        views,
        examples["species"].tolist(),
        title=plots.data_label(config.source) + ": projection and central sections per taxon",
    )
    plots.save_figure(fig, config.figure)
    return CurateStageResult(summary=summary, taxa=taxa, checks=checks, figure=Path(config.figure))
