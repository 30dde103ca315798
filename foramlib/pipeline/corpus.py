"""The ``corpus`` stage: generic shells for offline pretraining (stand-in for ImageNet).

Built only when ``train.weights`` points at the ``pretrain`` stages' weights; otherwise
the stage writes a ``corpus.json`` saying why and costs nothing. The shells are cut by
the same slicer and preprocessing as the collection (``slice.*``, read by
:meth:`foramlib.dataset.slicing.SlicingConfig.from_params`), and the corpus is checked to share
no taxon and no specimen with the curated collection.

Examples
--------
>>> cfg = CorpusStageConfig()
>>> cfg.corpus.n_volumes, cfg.out_dir
(240, 'data/pretrain')
>>> "slicing.slices_per_taxon" in CorpusStageConfig.params_keys()  # per specimen instead
False
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from foramlib.dataset.slicing import SlicingConfig
from foramlib.learn.pretraining import CorpusConfig
from foramlib.pipeline._config import StageConfig, backbone_names, nested_field, params_field

__all__ = ["CorpusStageConfig", "CorpusStageResult", "run"]


@dataclass(frozen=True)
class CorpusStageConfig(StageConfig):
    """What the ``corpus`` stage reads and writes.

    Parameters
    ----------
    seed : int
        Recipes and specimens (kept apart from the collection's seeds by a fixed tag).
    n_taxa, specimens_per_taxon, slices_per_specimen, shape, supersample : int
        ``pretrain.corpus.*``: see :class:`foramlib.learn.pretraining.CorpusConfig`.
    n_jobs : int
        ``pretrain.corpus.n_jobs``: worker processes.
    slicing : SlicingConfig
        ``slice.*`` but ``slices_per_taxon`` (the corpus cuts ``slices_per_specimen``).
    weights : str or None
        ``train.weights``: the corpus is built only when it uses pretraining.
    backbones : tuple of str
        ``train.backbones``' names (whose pretrain stages would read the corpus).
    manifest, out_dir : str
        The curated collection (checked disjoint) in; the corpus store out.
    """

    stage = "corpus"
    seed: int = params_field("seed", default=0)
    n_taxa: int = params_field("pretrain.corpus.n_taxa", default=48)
    specimens_per_taxon: int = params_field("pretrain.corpus.specimens_per_taxon", default=5)
    slices_per_specimen: int = params_field("pretrain.corpus.slices_per_specimen", default=48)
    shape: int = params_field("pretrain.corpus.shape", default=96)
    supersample: int = params_field("pretrain.corpus.supersample", default=2)
    n_jobs: int = params_field("pretrain.corpus.n_jobs", default=1)
    slicing: SlicingConfig = nested_field(SlicingConfig, skip=("slices_per_taxon",))
    weights: str | None = params_field("train.weights", default=None)
    backbones: tuple[str, ...] = params_field(
        "train.backbones", default=("tiny_cnn",), normalize=backbone_names
    )
    manifest: str = "data/curated/manifest.csv"
    out_dir: str = "data/pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.corpus  # validates the corpus settings now, not when the stage runs

    @property
    def corpus(self) -> CorpusConfig:
        """The corpus's size and seed."""
        return CorpusConfig(
            n_taxa=self.n_taxa,
            specimens_per_taxon=self.specimens_per_taxon,
            slices_per_specimen=self.slices_per_specimen,
            shape=self.shape,
            supersample=self.supersample,
            seed=self.seed,
        )


@dataclass(frozen=True)
class CorpusStageResult:
    """The stage's outputs, for display."""

    summary: dict  # corpus.json: counts and timing, or why the stage was skipped
    skipped: bool
    recipes: pd.DataFrame  # one row per pseudo-taxon (empty when skipped)


def run(config: CorpusStageConfig) -> CorpusStageResult:
    """Build the corpus when ``train.weights`` uses pretraining, else record why not."""
    from foramlib.learn import pretraining

    summary = pretraining.run_corpus_stage(
        config.out_dir,
        config.corpus,
        config.slicing,
        weights=config.weights,
        backbones=list(config.backbones),
        manifest=config.manifest,
        n_jobs=config.n_jobs,
    )
    skipped = "skipped" in summary
    recipes = pd.DataFrame() if skipped else pd.DataFrame(summary.get("recipes", {})).T
    return CorpusStageResult(
        summary={k: v for k, v in summary.items() if k != "recipes"},
        skipped=skipped,
        recipes=recipes,
    )
