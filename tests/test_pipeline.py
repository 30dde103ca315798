"""End to end: `dvc repro` on a tiny virtual collection in a scratch copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]

QUICK_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "quick.yaml"
# The quick profile, shrunk to a tiny collection: everything else stays as users get it,
# so every key a stage reads is present.
OVERRIDES = {
    "profile": "custom",
    "seed": 3,
    "virtual": {"preset": "tiny", "shape": 32, "supersample": 1, "n_jobs": 1},
    "curate": {"min_models": 3},
    "slice": {"slices_per_taxon": 24, "offsets_per_orientation": 3, "size": 32, "n_jobs": 1},
    "split": {"restarts": 5},
    "pretrain": {
        "corpus": {
            "n_taxa": 3,
            "specimens_per_taxon": 2,
            "slices_per_specimen": 6,
            "shape": 32,
            "supersample": 1,
            "n_jobs": 1,
        },
        "epochs": 1,
        "max_steps_per_epoch": 2,
    },
    "train": {
        "backbones": {"tiny_cnn": {"input_size": 32}, "mobilenetv3_small": {"input_size": 32}},
        # the offline pretraining path end to end: corpus -> pretrain@ -> train@
        "weights": "models/pretrain/{backbone}/backbone.weights.h5",
        "batch_size": 8,
        "phase1_epochs": 1,
        "phase2_epochs": 1,
        "restart_epochs": 1,
        "max_steps_per_epoch": 2,
    },
    "ensemble": {"max_k": 2},
    "match": {"n_orientations": 20, "n_offsets": 3, "size": 32, "descriptor_size": 16},
    "match_check": {"queries": 12},
}


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "backbones":
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


TINY = _merge(yaml.safe_load(QUICK_PROFILE.read_text()), OVERRIDES)


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scratch_repo(repo_root, tmp_path_factory):
    """A git repo holding the project's tracked files (as in a clean clone) + tiny params."""
    dest = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = repo_root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # reuse the MathJax copy if this checkout already has one (saves an npm install)
    mathjax = repo_root / "book" / "_static" / "mathjax"
    if (mathjax / "tex-chtml.js").exists():
        shutil.copytree(mathjax, dest / "book" / "_static" / "mathjax")
    (dest / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        _run(cmd, dest, env)
    return dest, env


def test_dvc_repro_runs_every_stage_then_nothing(scratch_repo):
    repo, env = scratch_repo
    first = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    for stage in (
        "synthesize",
        "curate",
        "slice",
        "split",
        "corpus",
        "pretrain@tiny_cnn",
        "pretrain@mobilenetv3_small",
        "train@tiny_cnn",
        "train@mobilenetv3_small",
        "ensemble",
        "evaluate",
        "index",
        "calibrate_match",
        "book",
    ):
        assert f"Running stage '{stage}'" in first
    assert len(list((repo / "data" / "virtual").glob("*.nii.gz"))) == 14
    taxa = (repo / "results" / "tables" / "taxa.csv").read_text()
    assert "Dictyoconus,1,1,0,False" in taxa
    index = (repo / "book" / "_build" / "html" / "index.html").read_text()
    assert "figure2_collection.png" in index
    assert "virtual" in index.lower()
    meta = json.loads((repo / "data" / "index" / "index.json").read_text())
    assert meta["specimens"] == 12 and meta["repeat_scans_skipped"] == ["V-CHRY-01_scan2.nii.gz"]
    assert (repo / "results" / "figures" / "match_example.png").exists()
    # the test accuracy by kind of section: by fossil area, and (virtual scans, whose
    # shells' axes the generator knows) by the angle between the plane and the axis
    sections = pd.read_csv(repo / "results" / "tables" / "sections_test.csv")
    per_kind = sections.groupby("by", sort=False)["slices"].sum()
    assert list(per_kind.index) == ["fossil area (share of the slice)", "plane to shell axis"]
    assert per_kind.nunique() == 1  # every test slice counted once by each
    assert (repo / "results" / "figures" / "sections_test.png").exists()
    # the match limit, set on the tiny index's own held-out sections (sections too small
    # to read are left out and counted)
    limit = json.loads((repo / "results" / "match_check.json").read_text())
    assert len(limit["scores"]) + limit["refused"] == 12 and limit["keep"] == 0.95
    # ... and the specimen margin's limit, on the same queries searched among the others
    assert limit["format"] == 2 and len(limit["margins"]) == len(limit["scores"])
    assert min(limit["margins"]) <= limit["margin_threshold"] <= max(limit["margins"])
    # the backbones start from the weights pretrained on the corpus of other shells
    for b in ("tiny_cnn", "mobilenetv3_small"):
        assert (repo / "models" / "pretrain" / b / "backbone.weights.h5").exists()
        config = json.loads((repo / "models" / b / "config.json").read_text())
        assert config["weights"] == "models/pretrain/{backbone}/backbone.weights.h5"
        # every pretraining epoch went through DVCLive, the stage's metrics and plots
        summary = json.loads((repo / "models" / "pretrain" / b / "summary.json").read_text())
        live = json.loads((repo / "results" / "pretraining" / b / "metrics.json").read_text())
        assert live["step"] == summary["epochs_run"] - 1 and "loss" in live["val"]
    for nb in ("synthesize", "curate", "index", "calibrate_match"):
        assert (
            repo / "book" / "_build" / "html" / "_generated" / "reports" / f"{nb}.html"
        ).exists()

    second = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second


def test_changing_a_slice_param_reruns_only_downstream(scratch_repo):
    repo, env = scratch_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["slice"]["sensitivity"] = 0.6
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "Running stage 'synthesize'" not in out and "Running stage 'curate'" not in out
    assert "Running stage 'index'" not in out  # the index reads no slice.sensitivity
    for stage in ("slice", "split", "train@tiny_cnn", "ensemble", "evaluate", "book"):
        assert f"Running stage '{stage}'" in out
    meta = (repo / "data" / "slices" / "slicing.json").read_text()
    assert '"sensitivity": 0.6' in meta
