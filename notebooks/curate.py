# %% [markdown]
# # Curate: check the collection and keep well-represented taxa
#
# Every volume listed in the manifest is read and checked (readable, 3-D, finite,
# non-constant, voxel size known); all problems are reported together. Then, as in the
# paper (§2.1), only taxa with at least `min_models` **distinct specimens** are kept:
# repeat scans of one specimen do not count twice.

# %% tags=["parameters"]
# Parameters: papermill injects the values of params.yaml (see dvc.yaml).
source: str = "virtual"  # data.source: "virtual" or "manifest"
raw_dir: str = "data/virtual"  # data.raw_dir: folder with the volumes
manifest: str = "data/virtual/manifest.csv"  # data.manifest: the manifest CSV
min_models: int = 4  # curate.min_models: specimens per kept taxon
out_dir: str = "data/curated"  # curated manifest + per-volume checks
taxa_table: str = "results/tables/taxa.csv"  # per-taxon counts and the kept flag
figure: str = "results/figures/figure2_collection.png"  # Figure-2-like overview
max_side: int = 512  # data.max_side: larger volumes are binned as they are read

# %%
from IPython.display import Image

from foramlib.pipeline import curate as stage

cfg = stage.CurateStageConfig(
    source=source,
    raw_dir=raw_dir,
    manifest=manifest,
    min_models=min_models,
    max_side=max_side,
    out_dir=out_dir,
    taxa_table=taxa_table,
    figure=figure,
)

# %%
result = stage.run(cfg)  # the curated manifest, the checks, the taxa table, the figure
print(result.summary)
result.taxa

# %%
result.checks.describe()

# %% [markdown]
# ## The kept taxa, one specimen each (like the paper's Figure 2)

# %%
Image(result.figure)
