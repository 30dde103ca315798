"""The ``slice`` stage: 2D sections of every curated volume (paper §2.1).

Each scan is cut along planes of any orientation, low-content sections are dropped,
the rest are segmented, cropped and stored as uint8 arrays with their provenance.
The slicing settings are ``params.yaml``'s ``slice`` section, read by
:meth:`foramlib.dataset.slicing.SlicingConfig.from_params` (the same reader as the
pretraining corpus's, so both are cut and preprocessed alike).

Examples
--------
>>> keys = SliceStageConfig.params_keys()
>>> keys["slicing.jitter_deg"], keys["slicing.preprocess.size"], keys["n_jobs"]
('slice.jitter_deg', 'slice.size', 'slice.n_jobs')
>>> SliceStageConfig().out_dir
'data/slices'
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from foramlib.dataset.slicing import SlicingConfig
from foramlib.pipeline._config import StageConfig, nested_field, params_field

__all__ = ["SliceStageConfig", "SliceStageResult", "run"]


@dataclass(frozen=True)
class SliceStageConfig(StageConfig):
    """What the ``slice`` stage reads and writes.

    Parameters
    ----------
    seed : int
        Plane sampling.
    raw_dir : str
        ``data.raw_dir``: the folder the curated manifest's files are in.
    source : str
        ``data.source``: labels the gallery (virtual data is always labelled virtual).
    slicing : SlicingConfig
        ``slice.*``: sections per taxon, orientations, preprocessing.
    n_jobs : int
        ``slice.n_jobs``: worker processes.
    max_side : int
        ``data.max_side``: larger volumes are binned as they are read.
    train_factor : int
        ``slice.train_factor``: with F > 1 each volume is also cut into a training
        reserve of F - 1 times its sections, which the split stage adds to the training
        split for the training specimens (1: none).
    curated, out_dir, gallery : str
        The curated manifest in; the slice store (``<volume>.npy``, ``index.csv``,
        ``slicing.json``) and a gallery of sample slices per taxon out.
    """

    stage = "slice"
    seed: int = params_field("seed", default=0)
    raw_dir: str = params_field("data.raw_dir", default="data/virtual")
    source: str = params_field("data.source", default="virtual")
    slicing: SlicingConfig = nested_field(SlicingConfig)
    n_jobs: int = params_field("slice.n_jobs", default=1)
    max_side: int = params_field("data.max_side", default=512)
    train_factor: int = params_field("slice.train_factor", default=1)
    curated: str = "data/curated/manifest.csv"
    out_dir: str = "data/slices"
    gallery: str = "results/figures/slice_gallery.png"


@dataclass(frozen=True)
class SliceStageResult:
    """The stage's outputs, for display."""

    summary: str  # one line: slices kept of the candidates, time
    index: pd.DataFrame  # one row per stored slice
    per_taxon: pd.DataFrame  # volumes, slices and median fossil fraction per taxon
    gallery: Path


def run(
    config: SliceStageConfig, *, progress: Callable[[str], None] | None = print
) -> SliceStageResult:
    """Cut, preprocess and store the slices of every curated volume (the store is
    replaced atomically), and draw the gallery."""
    from foramlib.dataset import curation, slicing
    from foramlib.viz import plots

    manifest = curation.read_curated(config.curated, config.raw_dir)
    t0 = time.perf_counter()
    index = slicing.build_slice_store(
        manifest,
        config.out_dir,
        config.slicing,
        seed=config.seed,
        n_jobs=config.n_jobs,
        max_side=config.max_side,
        train_factor=config.train_factor,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    record = json.loads((Path(config.out_dir) / "slicing.json").read_text())
    candidates = sum(v["candidates"] for v in record["volumes"].values())
    size = config.slicing.preprocess.size
    summary = (
        f"{len(index)} slices of {size}x{size} px kept from {candidates} candidate "
        f"sections of {len(manifest)} volumes in {seconds:.0f} s ({config.n_jobs} worker(s))."
    )
    if "n_reserve" in record:
        summary += (
            f" Training reserve (slice.train_factor = {record['train_factor']}): "
            f"{record['n_reserve']} more sections, for the training specimens."
        )
    per_taxon = index.groupby("species").agg(
        volumes=("file", "nunique"),
        slices=("slice_id", "count"),
        median_fossil_fraction=("fossil_fraction", "median"),
    )
    _, arrays = slicing.load_slices(config.out_dir, index)
    fig = plots.slice_gallery(
        index,
        arrays,
        per_taxon=8,
        order=manifest["species"].unique(),
        title=plots.data_label(config.source) + ": preprocessed slices",
    )
    plots.save_figure(fig, config.gallery)
    return SliceStageResult(
        summary=summary, index=index, per_taxon=per_taxon, gallery=Path(config.gallery)
    )
