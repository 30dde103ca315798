# %% [markdown]
# # Ensemble: Top-k voting and PatchEnsemble, chosen on validation data
#
# Paper §2.4 and §3.2: conventional ensembles vote over the best backbones (Top-2, Top-3,
# Top-4); the PatchEnsemble keeps the best model's answer unless its top-1 class is one of
# the *weak* classes and a "patch" model is more confident, in which case the patch
# model's distribution is used (the authors' released rule). The authors picked the weak
# classes (Baculogypsina, Orbitoides) and the patch model by looking at results; here
# every choice — member ranking, weak classes, patch model — is made on the **validation**
# predictions. The test split is not read by this stage.

# %% tags=["parameters"]
# Parameters: papermill injects the values of params.yaml (see dvc.yaml).
params_file: str = "params.yaml"  # the trained backbones are the keys of train.backbones
max_k: int = 4  # ensemble.max_k: Top-2 ... Top-max_k
mode: str = "soft"  # ensemble.mode: soft or majority voting
main: str = None  # ensemble.main: PatchEnsemble main model (None: best)
n_weak: int = 2  # ensemble.n_weak
models_dir: str = "models"  # models/<backbone>/predictions_val.csv
out_dir: str = "results/ensemble"  # one JSON description per ensemble

# %%
from foramlib import config
from foramlib.pipeline import ensemble as stage

cfg = stage.EnsembleStageConfig.from_params(
    config.load_params(params_file),
    max_k=max_k,
    mode=mode,
    main=main,
    n_weak=n_weak,
    models_dir=models_dir,
    out_dir=out_dir,
)
print("trained backbones:", list(cfg.backbones))

# %%
result = stage.run(cfg)
result.members  # validation metrics of each backbone, best first

# %%
for name, spec in result.specs.items():
    print(
        f"{name}: {spec.kind}, members {spec.members}"
        + (
            f", weak classes {list(spec.weak)} (patch: {spec.patch})"
            if spec.kind == "patch"
            else ""
        )
    )

# %% [markdown]
# ## Validation results of the ensembles (what the choices were based on)

# %%
result.ensembles
