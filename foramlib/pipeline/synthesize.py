"""The ``synthesize`` stage: the seeded virtual micro-CT collection (or nothing).

With ``data.source: virtual`` it generates the embedded collection (one ``.nii.gz`` per
scan and ``manifest.csv``); with ``data.source: manifest`` the pipeline reads the
user's scans and this stage only leaves a note saying the virtual collection is unused.

Examples
--------
>>> cfg = SynthesizeStageConfig.from_params(
...     {"seed": 3, "data": {"source": "virtual"},
...      "virtual": {"preset": "tiny", "shape": 48, "supersample": 1, "n_jobs": 1}})
>>> cfg.preset, cfg.shape, cfg.out_dir
('tiny', 48, 'data/virtual')
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from foramlib.pipeline._config import StageConfig, params_field

__all__ = ["SynthesizeStageConfig", "SynthesizeStageResult", "run"]


@dataclass(frozen=True)
class SynthesizeStageConfig(StageConfig):
    """What the ``synthesize`` stage reads and writes.

    Parameters
    ----------
    seed : int
        The same seed gives byte-identical volumes.
    source : str
        ``data.source``: ``"virtual"`` generates; ``"manifest"`` skips the stage.
    preset : str
        ``virtual.preset``: ``"paper"`` (97 volumes, 27 taxa) or ``"tiny"``.
    shape, supersample : int
        Voxels along each edge; build resolution factor (partial volume).
    n_jobs : int
        Worker processes.
    out_dir : str
        The volumes and ``manifest.csv`` (the folder is replaced as a whole).
    """

    stage = "synthesize"
    seed: int = params_field("seed", default=0)
    source: str = params_field("data.source", default="virtual")
    preset: str = params_field("virtual.preset", default="paper")
    shape: int = params_field("virtual.shape", default=128)
    supersample: int = params_field("virtual.supersample", default=2)
    n_jobs: int = params_field("virtual.n_jobs", default=1)
    out_dir: str = "data/virtual"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("virtual", "manifest"):
            raise ValueError(
                f"data.source = {self.source!r} is invalid: expected 'virtual' or 'manifest'"
            )


@dataclass(frozen=True)
class SynthesizeStageResult:
    """The stage's outputs, for display."""

    summary: str  # one line: what was generated (or why nothing was)
    taxa: pd.DataFrame  # per taxon: volumes, specimens, voxel sizes (empty when skipped)


def run(
    config: SynthesizeStageConfig, *, progress: Callable[[str], None] | None = print
) -> SynthesizeStageResult:
    """Generate the virtual collection into ``out_dir``, or leave the unused note."""
    from foramlib.virtual import collection as virtual

    if config.source != "virtual":
        virtual.write_unused_marker(config.out_dir, config.source)
        return SynthesizeStageResult(
            summary=f"data.source = {config.source!r}: no virtual collection generated.",
            taxa=pd.DataFrame(),
        )
    t0 = time.perf_counter()
    manifest = virtual.synthesize_collection(
        config.out_dir,
        virtual.taxa_preset(config.preset),
        seed=config.seed,
        shape=config.shape,
        supersample=config.supersample,
        n_jobs=config.n_jobs,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    record = json.loads((Path(config.out_dir) / "collection.json").read_text())
    summary = (
        f"{record['n_volumes']} virtual volumes of {record['shape']}^3 voxels over "
        f"{record['n_taxa']} taxa in {seconds:.0f} s ({config.n_jobs} worker(s))."
    )
    return SynthesizeStageResult(summary=summary, taxa=virtual.describe_collection(manifest))
