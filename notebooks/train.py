# %% [markdown]
# # Train: one backbone, two-phase transfer learning
#
# Paper §2.2–2.3: phase 1 trains the classifier head on a frozen backbone, phase 2
# fine-tunes the whole network (BatchNorm layers stay frozen) with cosine warm restarts;
# AdamW, label smoothing, early stopping on the validation loss. Augmentation runs inside
# the model (rotation, scaling, flips, brightness/contrast; active only while training)
# and CutMix/MixUp mix whole batches. The validation and test slices are then predicted, each
# as the mean over `tta_views` symmetric views of the slice (rotations by 90° and mirror
# images: `foramlib.learn.tta`; not in the paper). The test split is only predicted here, never
# used to choose anything.

# %% tags=["parameters"]
# Parameters: papermill injects them (see dvc.yaml); the settings come from params.yaml.
params_file: str = "params.yaml"  # train.*, train.backbones.<backbone>.input_size, seed
backbone: str = "tiny_cnn"  # the stage's backbone (train@<backbone>)
split_index: str = "data/split/index.csv"  # the split stage's slice index
slices: str = "data/slices"  # the slice store
out_dir: str = "models/tiny_cnn"  # model.keras, history, predictions, summary
history_figure: str = "results/figures/history_tiny_cnn.png"
live_dir: str = "results/training/tiny_cnn"  # DVCLive: every epoch, for dvc plots / exp show

# %%
from IPython.display import Image

from foramlib import config
from foramlib.pipeline import train as stage

cfg = stage.TrainStageConfig.from_params(
    config.load_params(params_file),
    backbone=backbone,
    split_index=split_index,
    slices=slices,
    out_dir=out_dir,
    history_figure=history_figure,
    live_dir=live_dir,
)
cfg.train

# %%
result = stage.run(cfg)
result.result.summary

# %% [markdown]
# ## Learning curves

# %%
Image(str(result.history_figure))

# %%
result.result.history
