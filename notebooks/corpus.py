# %% [markdown]
# # Corpus: generic shells for offline pretraining
#
# The paper fine-tunes backbones pretrained on ImageNet. Offline, this stage builds an
# honest stand-in: a corpus of **other** shells (virtual pseudo-taxa, each a random
# combination of outer form, coiling, septa, partitions, concentric layers, chamberlets
# and pillars; no genus builder and no specimen of the collection), scanned with the same
# simulated micro-CT artefacts and cut with the same slicer and preprocessing as the
# collection. The `pretrain` stages teach each backbone to tell these pseudo-taxa apart;
# the collection's genera are only seen in `train`.

# %% tags=["parameters"]
# Parameters: papermill injects them (see dvc.yaml); the settings come from params.yaml.
params_file: str = "params.yaml"  # seed, pretrain.corpus.*, slice.*, train.weights/backbones
manifest: str = "data/curated/manifest.csv"  # the curated collection: checked disjoint
out_dir: str = "data/pretrain"  # corpus store: <specimen>.npy + index.csv + corpus.json

# %%
import matplotlib.pyplot as plt
from IPython.display import display

from foramlib import config
from foramlib.learn import pretraining
from foramlib.pipeline import corpus as stage
from foramlib.viz import plots

cfg = stage.CorpusStageConfig.from_params(
    config.load_params(params_file), manifest=manifest, out_dir=out_dir
)
result = stage.run(cfg)
result.summary

# %% [markdown]
# ## What the corpus looks like
#
# Sections of a few pseudo-taxa, preprocessed exactly like the collection's slices. The
# corpus shares no taxon and no specimen with the collection (checked above).

# %%
if not result.skipped:
    index, arrays = pretraining.load_corpus(out_dir)
    shown = sorted(index["species"].unique())[:8]
    fig = plots.slice_gallery(
        index[index["species"].isin(shown)],
        arrays,
        per_taxon=6,
        title="Pretraining corpus (virtual generic shells, not the collection): sections",
    )
    plt.show()

# %%
if not result.skipped:
    display(result.recipes[["outer", "size", "aspect", "wall_type", "features"]].head(12))
