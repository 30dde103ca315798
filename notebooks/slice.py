# %% [markdown]
# # Slice: 2D sections of every curated volume
#
# As in the paper (§2.1), each 3D scan becomes many 2D slices: sections along planes of
# **any orientation** (the three axis directions jittered by a few degrees plus an even
# spread over the hemisphere), cut directly from the volume by trilinear interpolation.
# Sections with too little fossil (Otsu-based content filter) are dropped; the rest are
# segmented (fossil silhouette, background removed), cropped to the silhouette, resized
# with padding and stored as uint8 arrays with their provenance (specimen, plane normal,
# offset, in-plane angle). Each taxon gets the same budget of sections, shared by its
# scans, so genera with few scans are not under-represented (cf. the paper's Table 2).

# %% tags=["parameters"]
# Parameters: papermill injects them (see dvc.yaml); the settings come from params.yaml.
params_file: str = "params.yaml"  # seed, data.raw_dir, data.source, slice.*
curated: str = "data/curated/manifest.csv"  # the curated manifest (curate stage)
out_dir: str = "data/slices"  # slice store: <volume>.npy + index.csv + slicing.json
gallery: str = "results/figures/slice_gallery.png"  # sample slices per taxon

# %%
from IPython.display import Image

from foramlib import config
from foramlib.pipeline import slice as stage

cfg = stage.SliceStageConfig.from_params(
    config.load_params(params_file), curated=curated, out_dir=out_dir, gallery=gallery
)
cfg.slicing

# %%
result = stage.run(cfg)

# %% [markdown]
# ## What was kept

# %%
print(result.summary)
result.per_taxon

# %% [markdown]
# ## Sample slices per taxon, spread over orientations (polar angle of the plane normal)

# %%
Image(result.gallery)
