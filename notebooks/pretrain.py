# %% [markdown]
# # Pretrain: one backbone on the corpus of other shells
#
# The offline stand-in for ImageNet weights (see the `corpus` stage): the backbone is
# trained from scratch to tell the corpus's pseudo-taxa apart, validated on specimens of
# each pseudo-taxon it never saw, and its headless weights are written for
# `train.weights`. Then phase 1 of `train` (head only, frozen backbone) and phase 2
# (fine-tuning) mean what they mean in the paper. Nothing of the collection is read here.

# %% tags=["parameters"]
# Parameters: papermill injects them (see dvc.yaml); the settings come from params.yaml.
params_file: str = "params.yaml"  # seed, pretrain.*, train.weights/batch_size/backbones
backbone: str = "tiny_cnn"  # the stage's backbone (pretrain@<backbone>)
corpus: str = "data/pretrain"  # the corpus stage's store
out_dir: str = "models/pretrain/tiny_cnn"  # backbone.weights.h5, history, summary
live_dir: str = "results/pretraining/tiny_cnn"  # DVCLive: every epoch, for dvc plots / exp show

# %%
from IPython.display import display

from foramlib import config
from foramlib.learn import training
from foramlib.pipeline import pretrain as stage

cfg = stage.PretrainStageConfig.from_params(
    config.load_params(params_file),
    backbone=backbone,
    corpus=corpus,
    out_dir=out_dir,
    live_dir=live_dir,
)
result = stage.run(cfg)
result.summary

# %% [markdown]
# ## Learning curves
#
# Accuracy on held-out specimens of the pseudo-taxa measures what transfers: features
# that tell shells apart across specimens, not one specimen's look.

# %%
if result.history is not None:
    title = f"pretraining {backbone} ({cfg.pretrain.input_size} px)"
    display(training.history_figure(result.history, title))
