# %% [markdown]
# # Evaluate: the paper's Tables 4–8 and Figures 3–5, three ways
#
# The test split is used here, once: every backbone and every ensemble chosen on
# validation data is scored on it. The same code then rebuilds Tables 4–8 from the
# authors' released classification reports, and both are shown next to the values
# printed in the paper. Results of this pipeline on the virtual collection say nothing
# about real fossils.
#
# Beside this run's models, every table also shows a **classical baseline** (HOG features
# and a logistic regression, trained on the same training slices, its regularisation
# chosen on the same validation slices), so the deep pipeline's gain is measured rather
# than assumed. The section at the end votes over all slices of each test specimen.

# %% tags=["parameters"]
# Parameters: papermill injects the values of params.yaml (see dvc.yaml).
source: str = "virtual"  # data.source (labels the figures)
params_file: str = "params.yaml"  # the trained backbones are the keys of train.backbones
models_dir: str = "models"  # models/<backbone>/predictions_test.csv
ensembles_dir: str = "results/ensemble"  # the ensemble stage's choices
reference_dir: str = "reference/authors-results"  # the authors' released reports
tables_dir: str = "results/tables"  # table4..8 (+ authors_, paper_ versions)
figures_dir: str = "results/figures"  # figure3..5, confusion, ROC
predictions_dir: str = "results/predictions"  # ensemble test probabilities
metrics_json: str = "results/metrics.json"  # for `dvc metrics show`
split_index: str = "data/split/index.csv"  # the split stage's index: the baseline's split
slices: str = "data/slices"  # the slice store the backbones were trained on
seed: int = 0  # params.yaml seed: the baseline's random_state

# %%
from IPython.display import Image

from foramlib import config
from foramlib.pipeline import evaluate as stage

cfg = stage.EvaluateStageConfig.from_params(
    config.load_params(params_file),
    source=source,
    seed=seed,
    models_dir=models_dir,
    ensembles_dir=ensembles_dir,
    split_index=split_index,
    slices=slices,
    reference_dir=reference_dir,
    tables_dir=tables_dir,
    figures_dir=figures_dir,
    predictions_dir=predictions_dir,
    metrics_json=metrics_json,
)
print("trained backbones:", list(cfg.backbones))

# %%
result = stage.run(cfg)  # every table, figure and metrics.json of this chapter

# %% [markdown]
# ## The classical baseline: HOG + logistic regression on the same slices
#
# Fitted on the training split; its `C` is the candidate with the best validation
# accuracy; then scored once on the test slices the backbones were scored on.

# %%
# the baseline's recipe (96 px, 12 px HOG cells, C chosen on validation) is
# foramlib.evaluation.baseline's own, the one the benchmarks use
print(result.baseline_line)
result.baseline_scores

# %% [markdown]
# ## This pipeline's tables
#
# Every table has a row (Tables 4 and 8) or a column (Tables 5–7) for the
# classical baseline, *HOG + logistic regression (classical baseline)*.

# %%
# the final model is chosen on VALIDATION predictions (the test split only measures it)
print(f"final model (best validation accuracy): {result.final}")
result.tables["table8"]

# %%
result.tables["table5"]

# %% [markdown]
# ## The authors' released reports, through the same code

# %%
for note in result.notes:
    print("-", note)
result.differences

# %% [markdown]
# ## Figures 3–5, confusion matrix and ROC curves

# %%
Image(result.figures["figure3_models.png"])

# %%
Image(result.figures["figure5_weak.png"])

# %%
Image(result.figures["confusion_final.png"])

# %% [markdown]
# ## Specimen-level accuracy (not in the paper): one vote per test specimen
#
# Each specimen's class is the top class of the mean probability over its test slices.
#
# Each vote is also flagged *uncertain* by the rule `foram classify` applies to a whole
# scan: a threshold on the winner's mean probability, calibrated on the validation
# specimens only; the test split shows how the accepted votes fare.

# %%
print(result.specimen_line)
result.comparison

# %%
Image(result.figures["confusion_specimens.png"])

# %%
result.votes

# %% [markdown]
# ## Which sections does it read? (not in the paper)
#
# The test accuracy of the final model and the baseline split by the section's fossil
# area (five bins of equal count) and, for the virtual collection, by the angle between
# the section's plane and the shell's axis (0°: an axial section, 90°: an equatorial or
# transverse one), known because the generator placed each shell in its scan.

# %%
Image(result.figures["sections_test.png"])

# %%
result.sections

# %% [markdown]
# ## Does the input look like a foraminifer section at all? (not in the paper)
#
# The models name one of their genera for any image. `foram classify` and the dashboard
# therefore first ask a separate question, answered by `foramlib.inference.section_check`: a
# Gaussian mixture over 51 cheap descriptors of a cleaned slice (silhouette shape, grey
# levels, local-binary-pattern texture), fitted on the **training** slices, its limit set
# to keep 97 % of the **validation** slices; colour pictures are refused outright
# (micro-CT sections are grey). The table measures it on the test slices and on inputs
# that are not foraminifer sections: noise of five kinds, crops of the pictures bundled
# with scikit-image (photos, text, micrographs, a CT phantom; `colour` counts those the
# colour rule refused) and sections of five unrelated virtual volumes. The check does not
# tell a foraminifer of an unknown genus from a known one: the next check asks that.

# %%
print(result.section_line)
result.section_check

# %% [markdown]
# ## Is it one of these genera? (not in the paper)
#
# A foraminifer of a genus the collection lacks is a foraminifer section and passes the
# check above. `foramlib.inference.genus_check` asks the final model's main member: the
# distance from a section's features (what its softmax reads) to those of the 5th nearest
# **training** slice, its limit set to keep 95 % of the **validation** slices (new
# specimens of the known genera); a scan is flagged when its median section is over the
# limit. The table measures it on the test slices and scans, and on sections of virtual
# pseudo-taxa (random shell body plans that are no genus of the collection, cut by the
# same slicer): how many of those it lets through as "one of these genera".

# %%
print(result.genus_line)
result.genus_check
