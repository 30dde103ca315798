# %% [markdown]
# # Index: candidate sections of every specimen, for 3D slice matching
#
# Where does a 2D section sit inside a specimen? To answer quickly, every curated
# specimen (one scan each; repeat scans would only duplicate it) is cut along many
# planes: normals spread evenly over the hemisphere (a Fibonacci lattice) times
# parallel offsets across the specimen. Each candidate section goes through the same
# preprocessing as the slice dataset and is summarised by descriptors that do not
# change when the section is turned or mirrored in its plane, plus its silhouette's
# geometry. A query is then matched coarse to fine: the index proposes start poses,
# which are registered to the specimen volumes themselves (see the book chapter
# *3D slice matching*, `foramlib.matching.search` and `foramlib.matching.registration`).

# %% tags=["parameters"]
# Parameters: papermill injects the values of params.yaml (see dvc.yaml).
seed: int = 0  # seed: the example queries' poses
raw_dir: str = "data/virtual"  # data.raw_dir: folder with the volumes
source: str = "virtual"  # data.source: labels figures (virtual or manifest)
curated: str = "data/curated/manifest.csv"  # the curated manifest (curate stage)
out_dir: str = "data/index"  # index folder: index.npz + specimens.csv + index.json
figure: str = "results/figures/match_example.png"  # the example match in 3D
n_orientations: int = 300  # match.n_orientations: plane normals per specimen
n_offsets: int = 9  # match.n_offsets: parallel planes per normal
size: int = 64  # match.size: stored section edge (pixels)
descriptor_size: int = 32  # match.descriptor_size: coarse-stage silhouette side
smooth_sigma: float = 0.8  # slice.smooth_sigma: volume denoising, as for slicing
dense_factor: float = 2.2  # slice.dense_factor (None keeps dense inclusions)
max_side: int = 512  # data.max_side: larger volumes are binned as they are read

# %%
from IPython.display import Image

from foramlib.pipeline import index as stage
from foramlib.tools.stages import progress_printer

cfg = stage.IndexStageConfig(
    seed=seed,
    raw_dir=raw_dir,
    source=source,
    n_orientations=n_orientations,
    n_offsets=n_offsets,
    size=size,
    descriptor_size=descriptor_size,
    smooth_sigma=smooth_sigma,
    dense_factor=dense_factor,
    max_side=max_side,
    curated=curated,
    out_dir=out_dir,
    figure=figure,
)

# %%
progress = progress_printer()  # a line about every 10 % of the work, and at the end
result = stage.run(cfg, progress=progress)

# %% [markdown]
# ## What was indexed

# %%
meta = result.meta
print(
    f"{meta['candidates']} candidate sections of {size}x{size} px from {meta['specimens']} "
    f"specimens in {result.build_seconds:.0f} s; index file {meta['index_bytes'] / 1e6:.1f} MB "
    f"({meta['index_bytes'] / meta['candidates'] / 1e3:.1f} kB per section)."
)
print(f"repeat scans not indexed: {', '.join(meta['repeat_scans_skipped']) or 'none'}")
result.per_genus

# %% [markdown]
# ## An example: a section at an oblique pose
#
# A query cut from an indexed specimen along a random oblique plane (not one of the
# index's candidate planes), with a random in-plane rotation. The matcher should name
# the specimen and recover the plane: the angle between the true and the found normal
# (a plane and its flipped normal are the same plane) and the offset error in voxels.

# %%
print(result.example_line)
result.matches

# %% [markdown]
# The best match's plane inside its specimen (left), the query and the matched
# section (the specimen sampled along that plane in the query's frame, then
# preprocessed; right).

# %%
Image(result.figure)

# %% [markdown]
# ## A repeat scan as the query
#
# A repeat scan is the same fossil scanned again, differently placed and with its own
# noise; it is not in the index. A section of it should still find its specimen (its
# pose is in the repeat scan's own frame, so only the specimen and genus can be
# checked).

# %%
print("\n".join(result.repeat_lines) or "this collection has no repeat scans")
