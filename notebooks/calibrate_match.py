# %% [markdown]
# # Calibrate match: when is a 3D match reliable?
#
# The matcher always returns its closest sections, even for a section of a fossil that
# is not in the collection or one it misread. This stage sets the limit under which
# `foram match` and the dashboard answer *no reliable match*: held-out sections of
# indexed specimens (random oblique planes that are not the index's candidates,
# rescaled, noisy and cropped, drawn with a seed stream of their own) are matched, and
# the limit is the score that keeps `keep` of them (see
# `foramlib.matching.reliability`). Each query is also searched among the *other*
# specimens: a second limit, on how much better the best specimen fits than any other,
# set the same way, tells "this specimen" from "a look-alike: maybe a specimen not in
# the collection". How often inputs that should be refused still pass is measured by
# `benchmarks/match_check.py`, on other queries.

# %% tags=["parameters"]
# Parameters: papermill injects the values of params.yaml (see dvc.yaml).
seed: int = 0  # seed: the calibration queries
queries: int = 100  # match_check.queries: held-out sections matched
keep: float = 0.95  # match_check.keep: share of them called reliable
index_dir: str = "data/index"  # the index folder (index stage)
out: str = "results/match_check.json"  # the limit, read by foram match and the dashboard

# %%
from foramlib.pipeline import calibrate_match as stage
from foramlib.tools.stages import progress_printer

cfg = stage.CalibrateMatchStageConfig(
    seed=seed, queries=queries, keep=keep, index_dir=index_dir, out=out
)
progress = progress_printer()  # a line about every 10 % of the work, and at the end
result = stage.run(cfg, progress=progress)

# %% [markdown]
# ## The limit

# %%
check = result.check
precision = check.precision()
print(
    f"limit {check.threshold:.3f} on the best match's combined score: "
    f"{check.kept_share():.0%} of {check.n_queries} held-out queries at or above it "
    f"(target {check.keep:.0%}); matched in {result.seconds:.0f} s; "
    f"{check.refused} refused by the matcher (left out).\n"
    f"true specimen and pose among the queries called reliable: "
    + ("n/a" if precision is None else f"{precision:.0%}")
)
if check.margin_threshold is not None:
    print(
        f"specimen margin limit {check.margin_threshold:.3f}: the best specimen fits at "
        f"least this much better than any other in {check.margin_kept_share():.0%} of "
        f"{len(check.margins)} queries; a reliable match under it 'may be a specimen not "
        "in the collection'"
    )

# %% [markdown]
# ## Every calibration query
#
# `recovered`: the best match is the query's own specimen with its plane within 10° and
# 3 voxels of the truth. `runner_up`: the best match among the other specimens;
# `margin`: how much better the best specimen fits than it (`combined`).

# %%
result.queries.sort_values("score")
