"""The ``index`` stage: the 3D matching index of the curated collection, with one
example query (a random oblique section of an indexed specimen) matched and drawn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foramlib.pipeline._config import StageConfig, params_field

__all__ = ["IndexStageConfig", "IndexStageResult", "run"]


@dataclass(frozen=True)
class IndexStageConfig(StageConfig):
    """What the ``index`` stage reads and writes.

    Parameters
    ----------
    seed : int
        Seeds the example queries' poses.
    raw_dir, source : str
        ``data.raw_dir`` (the volumes) and ``data.source`` (labels the figure).
    n_orientations, n_offsets, size, descriptor_size : int
        ``match.*``: the lattice of candidate sections and their sizes.
    smooth_sigma, dense_factor : float
        ``slice.*``: the volume preparation, the same as for the slice dataset.
    max_side : int
        ``data.max_side``: larger volumes are binned as they are read (recorded in
        ``index.json``, so that matching reads them the same way).
    curated, out_dir, figure : str
        The curated manifest in; the index folder and the example figure out.

    Examples
    --------
    >>> params = {"seed": 0, "data": {"raw_dir": "raw", "source": "virtual", "max_side": 512},
    ...           "match": {"n_orientations": 20, "n_offsets": 3, "size": 32,
    ...                     "descriptor_size": 16},
    ...           "slice": {"smooth_sigma": 0.5, "dense_factor": None}}
    >>> IndexStageConfig.from_params(params).index_config().n_orientations
    20
    """

    stage = "index"
    seed: int = params_field("seed", default=0)
    raw_dir: str = params_field("data.raw_dir", default="data/virtual")
    source: str = params_field("data.source", default="virtual")
    n_orientations: int = params_field("match.n_orientations", default=200)
    n_offsets: int = params_field("match.n_offsets", default=7)
    size: int = params_field("match.size", default=64)
    descriptor_size: int = params_field("match.descriptor_size", default=32)
    smooth_sigma: float = params_field("slice.smooth_sigma", default=0.8)
    dense_factor: float | None = params_field("slice.dense_factor", default=2.2)
    max_side: int = params_field("data.max_side", default=512)
    curated: str = "data/curated/manifest.csv"
    out_dir: str = "data/index"
    figure: str = "results/figures/match_example.png"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.index_config()  # IndexConfig checks every value, naming the bad one

    def index_config(self):
        """The :class:`foramlib.matching.search.IndexConfig` these settings describe."""
        from foramlib.dataset.preprocess import PreprocessConfig
        from foramlib.matching.search import IndexConfig

        return IndexConfig(
            n_orientations=self.n_orientations,
            n_offsets=self.n_offsets,
            descriptor_size=self.descriptor_size,
            preprocess=PreprocessConfig(size=self.size),
            smooth_sigma=self.smooth_sigma,
            dense_factor=self.dense_factor,
        )


@dataclass(frozen=True)
class IndexStageResult:
    """The stage's outputs, for display."""

    meta: dict  # index.json
    build_seconds: float
    per_genus: pd.DataFrame  # specimens and candidate sections per genus
    example_line: str  # the example query and its best match
    matches: pd.DataFrame  # the example's top 5
    figure: Path
    repeat_lines: list[str]  # a repeat scan matched against the index (if any)


def _matches_frame(found, truth_normal) -> pd.DataFrame:
    from foramlib.matching.search import plane_error

    return pd.DataFrame(
        [
            dict(
                specimen=m.specimen_id,
                genus=m.species,
                normal=np.round(m.normal, 3).tolist(),
                offset=round(m.offset, 1),
                angle=round(m.angle_deg, 1),
                normal_error_deg=round(plane_error(m.normal, truth_normal)[0], 1),
                **{k: round(v, 3) for k, v in m.scores.items()},
            )
            for m in found
        ],
        index=pd.RangeIndex(1, len(found) + 1, name="rank"),
    )


def run(
    config: IndexStageConfig, progress: Callable[[float, str], None] | None = None
) -> IndexStageResult:
    """Build the index (replaced atomically), then match one example query.

    `progress` receives ``(fraction, message)`` while the index is built.
    """
    from foramlib.dataset.curation import read_curated
    from foramlib.dataset.slicing import Plane, extract_slice
    from foramlib.io.volumes import manifest_voxel_size, read_volume
    from foramlib.matching import index as indexing
    from foramlib.matching import search as matching
    from foramlib.viz import plots, view3d

    t0 = time.perf_counter()
    indexing.build_collection_index(
        config.curated,
        config.raw_dir,
        config.out_dir,
        config.index_config(),
        max_side=config.max_side,
        progress=progress,
    )
    build_s = time.perf_counter() - t0
    meta = json.loads((Path(config.out_dir) / indexing.META_FILE).read_text())
    collection = indexing.load_collection(config.out_dir)
    per_genus = collection.specimens.groupby("species").agg(
        specimens=("specimen_id", "count"), candidates=("candidates", "sum")
    )

    # an example query: a random oblique section through a random indexed specimen
    rng = np.random.default_rng(config.seed)
    specimens = collection.specimens["specimen_id"]
    specimen = specimens.iloc[int(rng.integers(len(specimens)))]
    volume = collection.volume(specimen)
    prepared = collection.prepared(specimen)
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    rel = prepared.points - prepared.centre
    offset = float(np.percentile(rel @ normal, rng.uniform(35, 65)))
    truth = Plane(tuple(normal), offset, float(rng.uniform(0, 360)))
    query = extract_slice(volume, truth, prepared.window)  # a field of view around the fossil
    collection.preload()  # read and prepare the volumes first: the time below is the search's
    t0 = time.perf_counter()
    found = matching.match(collection.index, query, top_k=5, volumes=collection.volumes)
    match_s = time.perf_counter() - t0
    best = found[0]
    angle, offset_error = matching.plane_error(best.normal, truth.normal, best.offset, offset)
    example_line = (
        f"query: {specimen}, normal {np.round(truth.normal, 3).tolist()}, offset {offset:.1f} "
        f"vx; matched in {match_s:.2f} s (registration included)\n"
        f"best match: {best.specimen_id}, normal error {angle:.1f}°, "
        f"offset error {offset_error:.1f} vx"
    )
    fig = view3d.plane_figure(
        collection.volume(best.specimen_id),
        Plane(best.normal, best.offset, best.angle_deg),
        title=f"{plots.data_label(config.source)}: best match {best.specimen_id} ({best.species})",
        section=[("query", query), ("matched section (preprocessed)", best.image)],
    )
    plots.save_figure(fig, config.figure)

    # a repeat scan (not indexed) should find its own specimen first
    manifest = read_curated(config.curated, config.raw_dir)
    repeats = manifest[manifest["file"].isin(meta["repeat_scans_skipped"])]
    repeat_lines = []
    if not repeats.empty:
        row = repeats.iloc[0]
        rep = read_volume(
            row["path"], voxel_size_um=manifest_voxel_size(row), max_side=config.max_side
        ).data
        n = rng.normal(size=3)
        # a square inside the volume's inscribed sphere: a section with no padding
        # outside the field of view, as a user's image would be
        side = int(min(rep.shape) / np.sqrt(2))
        q2 = extract_slice(rep, Plane(tuple(n), 0.0, float(rng.uniform(0, 360))), size=side)
        hits = matching.match(collection.index, q2, top_k=5, volumes=collection.volumes)
        repeat_lines.append(f"query: a section of {row['file']} (specimen {row['specimen_id']})")
        repeat_lines += [
            f"{rank}. {m.specimen_id:<12} {m.species:<16} combined {m.scores['combined']:.3f}"
            for rank, m in enumerate(hits, start=1)
        ]
    return IndexStageResult(
        meta=meta,
        build_seconds=build_s,
        per_genus=per_genus,
        example_line=example_line,
        matches=_matches_frame(found, truth.normal),
        figure=Path(config.figure),
        repeat_lines=repeat_lines,
    )
