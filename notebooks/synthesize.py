# %% [markdown]
# # Synthesize: the virtual micro-CT collection
#
# The paper's micro-CT scans are not public, so by default the pipeline runs on a
# **virtual collection**: seeded, procedurally generated 3D foraminifera for the paper's
# 12 genera plus rarer taxa that curation must drop (see *About the virtual collection*).
# Everything shown downstream of this stage is computed on **virtual data**.
#
# When `data.source` is `manifest`, this stage generates nothing and the pipeline reads
# your own collection instead.

# %% tags=["parameters"]
# Parameters: papermill injects the values of params.yaml (see dvc.yaml).
seed: int = 0  # seed: the same seed gives byte-identical volumes
source: str = "virtual"  # data.source: "virtual" generates; "manifest" skips this stage
preset: str = "tiny"  # virtual.preset: "paper" (97 volumes, 27 taxa) or "tiny"
shape: int = 48  # virtual.shape: voxels along each edge of a volume
supersample: int = 1  # virtual.supersample: build resolution for partial volume
n_jobs: int = 1  # virtual.n_jobs: worker processes
out_dir: str = "data/virtual"  # where the volumes and manifest.csv go

# %%
from foramlib.pipeline import synthesize as stage

cfg = stage.SynthesizeStageConfig(
    seed=seed,
    source=source,
    preset=preset,
    shape=shape,
    supersample=supersample,
    n_jobs=n_jobs,
    out_dir=out_dir,
)
result = stage.run(cfg)

# %% [markdown]
# ## What was generated

# %%
print(result.summary)
result.taxa
