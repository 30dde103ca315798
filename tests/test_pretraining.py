"""Offline pretraining: generic shells, the corpus, and the pretrain -> fine-tune round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from foramlib.dataset import slicing
from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.learn import pretraining
from foramlib.virtual import collection as virtual
from foramlib.virtual import shells

SLICING = slicing.SlicingConfig(preprocess=PreprocessConfig(size=32))
TINY = pretraining.CorpusConfig(
    n_taxa=3, specimens_per_taxon=2, slices_per_specimen=6, shape=32, supersample=1, seed=5
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "pretrain"
    pretraining.build_corpus(out, TINY, SLICING, progress=None)
    return out


def test_recipes_are_deterministic_and_varied():
    assert shells.shell_recipe(11) == shells.shell_recipe(11)
    recipes = [shells.shell_recipe(i) for i in range(40)]
    assert len({r["outer"] for r in recipes}) >= 5
    assert all(1 <= len(r["features"]) <= 3 for r in recipes)
    assert all(set(r["features"]) <= set(shells.FEATURES) for r in recipes)


@pytest.mark.parametrize("recipe_id", [0, 1, 2, 3, 4, 5, 6, 7])
def test_a_shell_has_walls_inside_its_body(recipe_id):
    recipe = shells.shell_recipe(recipe_id)
    m = shells.sample_shell(np.random.default_rng(0), recipe)
    ext = np.asarray(m["extent"])
    axes = [np.linspace(-e, e, 48, dtype=np.float32) for e in ext]
    grid = virtual.Grid(*np.meshgrid(*axes, indexing="ij"), vox=float(2 * ext.max() / 48))
    parts = shells.build_shell(grid, m)
    assert parts.wall.any() and parts.solid.any()
    assert not (parts.wall & ~parts.solid).any()
    assert parts.wall.sum() < parts.solid.sum()  # a shell, not a solid block


def test_specimens_of_one_recipe_vary_but_keep_its_form():
    recipe = shells.shell_recipe(3)
    a, b = (shells.sample_shell(np.random.default_rng(s), recipe) for s in (1, 2))
    assert a["outer"] == b["outer"] == recipe["outer"]
    assert set(a["features"]) == set(recipe["features"])
    assert a["radius"] != b["radius"]
    assert abs(a["radius"] / b["radius"] - 1) < 0.4


def test_a_shell_plan_renders_like_a_scan():
    plan = pretraining.corpus_plans(TINY)[0]
    vol, voxel_um = virtual.render_scan(plan, shape=32, supersample=1)
    assert vol.shape == (32, 32, 32) and np.isfinite(vol).all() and voxel_um > 0
    with pytest.raises(ValueError, match="not a generic shell plan"):
        shells._recipe_id("shell-x")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_taxa=1), "n_taxa = 1 is invalid"),
        (dict(specimens_per_taxon=1), "specimens_per_taxon = 1 is invalid"),
        (dict(shape=8), "shape = 8 is invalid"),
    ],
)
def test_corpus_config_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pretraining.CorpusConfig(**kwargs)


def test_corpus_holds_other_taxa_and_holds_out_one_specimen_each(corpus):
    index, arrays = pretraining.load_corpus(corpus)
    assert index["specimen_id"].is_unique is False  # many sections per specimen
    assert index.groupby("species")["specimen_id"].nunique().eq(2).all()
    held_out = index[index["split"] == "val"]["specimen_id"].unique()
    assert sorted(held_out) == [f"P-Shell-00{i}-02" for i in (1, 2, 3)]
    assert all(arrays[a].dtype == np.uint8 and arrays[a].shape[1:] == (32, 32) for a in arrays)
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["n_slices"] == len(index) and "no genus" in summary["what"]
    # never a taxon or specimen of the collection
    collection = pd.DataFrame(
        [(p.specimen_id, p.species) for p in virtual.plan_collection(virtual.paper_taxa(), 2024)],
        columns=["specimen_id", "species"],
    )
    pretraining.check_disjoint(index, collection)


def test_corpus_is_byte_identical_for_a_seed(corpus, tmp_path):
    again = tmp_path / "again"
    pretraining.build_corpus(again, TINY, SLICING, n_jobs=2, progress=None)
    for f in sorted(p.name for p in corpus.glob("*.npy")):
        assert (corpus / f).read_bytes() == (again / f).read_bytes()
    assert (corpus / "index.csv").read_text() == (again / "index.csv").read_text()


def test_check_disjoint_names_a_shared_specimen():
    c = pd.DataFrame({"specimen_id": ["V-ALVE-01"], "species": ["Shell-001"]})
    m = pd.DataFrame({"specimen_id": ["V-ALVE-01"], "species": ["Alveolina"]})
    with pytest.raises(ValueError, match=r"shares specimens .*V-ALVE-01"):
        pretraining.check_disjoint(c, m)


@pytest.mark.slow
def test_pretrain_then_fine_tune_starts_from_the_pretrained_backbone(corpus, tmp_path):
    import keras

    from foramlib.learn import training
    from foramlib.learn.augment import AugmentConfig
    from foramlib.learn.loader import SliceBatches
    from foramlib.learn.models import ModelError, backbone_of, build_model

    out = tmp_path / "pretrain" / "tiny_cnn"
    config = pretraining.PretrainConfig("tiny_cnn", input_size=32, batch_size=8, epochs=2)
    live = tmp_path / "results" / "pretraining" / "tiny_cnn"
    summary = pretraining.pretrain_backbone(config, corpus, out, progress=None, live_dir=live)
    assert summary["pseudo_taxa"] == 3 and summary["epochs_run"] >= 1
    assert 0 <= summary["val_accuracy_held_out_specimens"] <= 1
    # every epoch went through DVCLive, and reads back as the history the stage keeps
    logged = training.read_live_history(live)
    kept = pd.read_csv(out / "history.csv")
    assert len(logged) == summary["epochs_run"] == len(kept)
    np.testing.assert_allclose(logged["val_loss"], kept["val_loss"], rtol=1e-6)
    assert json.loads((live / "metrics.json").read_text())["step"] == len(kept) - 1
    template = str(tmp_path / "pretrain" / "{backbone}" / "backbone.weights.h5")
    assert pretraining.uses_pretraining(template, out, "tiny_cnn")

    # the weights load for another task (12 classes, not 3) and equal the pretrained ones
    model = build_model("tiny_cnn", input_size=32, n_classes=4, weights=template, seed=9)
    fresh = build_model("tiny_cnn", input_size=32, n_classes=4, weights=None, seed=9)
    loaded = backbone_of(model).get_weights()
    assert not all(
        np.array_equal(a, b) for a, b in zip(loaded, backbone_of(fresh).get_weights(), strict=True)
    )

    # phase 1 trains the head on the frozen pretrained backbone: the backbone stays put
    index, arrays = pretraining.load_corpus(corpus)
    names = sorted(index["species"].unique())
    ds = {
        s: SliceBatches(
            index[index["split"] == ("train" if s == "train" else "val")],
            arrays,
            names,
            batch_size=8,
            shuffle=s == "train",
        )
        for s in ("train", "val", "test")
    }
    cfg = training.TrainConfig(
        "tiny_cnn",
        input_size=32,
        batch_size=8,
        weights=template,
        phase1_epochs=1,
        phase2_epochs=0,
        augment=AugmentConfig(enabled=False),
    )
    result = training.train_backbone(cfg, ds, names, tmp_path / "fine", progress=None)
    tuned = keras.saving.load_model(result.model_path, compile=False)
    after = backbone_of(tuned).get_weights()
    assert all(np.allclose(a, b) for a, b in zip(loaded, after, strict=True))

    with pytest.raises(ModelError, match="do not fit backbone 'mobilenetv3_small'"):
        build_model(
            "mobilenetv3_small",
            input_size=32,
            n_classes=3,
            weights=str(out / "backbone.weights.h5"),
        )


def test_the_stage_skips_pretraining_when_weights_point_elsewhere(corpus, tmp_path):
    out = tmp_path / "models" / "pretrain" / "tiny_cnn"
    live = tmp_path / "results" / "pretraining" / "tiny_cnn"
    stale = live / "plots" / "metrics" / "val" / "loss.tsv"  # a log of an earlier run
    stale.parent.mkdir(parents=True)
    stale.write_text("step\tloss\n0\t1.0\n")
    config = pretraining.PretrainConfig("tiny_cnn", input_size=32, epochs=1)
    summary = pretraining.run_pretrain_stage(config, corpus, out, "imagenet", live_dir=live)
    assert "skipped" in summary and not (out / "backbone.weights.h5").exists()
    assert json.loads((out / "summary.json").read_text())["skipped"].startswith("train.weights")
    # the declared metrics and plots exist, and hold no epoch of the earlier run
    assert json.loads((live / "metrics.json").read_text()) == {}
    assert (live / "plots" / "metrics").is_dir() and not stale.exists()


class _FakeOptimizer:
    learning_rate = None


def test_time_budget_decays_the_rate_with_the_clock_and_stops_before_overrunning(monkeypatch):
    from types import SimpleNamespace

    ends = [40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]  # the first epoch holds the compile
    starts = [0.0, *ends[:-1]]
    clock = iter([0.0, *[t for pair in zip(starts, ends, strict=True) for t in pair]])
    monkeypatch.setattr(pretraining.time, "perf_counter", lambda: next(clock))
    model = SimpleNamespace(optimizer=_FakeOptimizer(), stop_training=False)
    budget = pretraining._time_budget(0.01, 100.0)
    budget.set_model(model)
    budget.on_train_begin()
    rates = []
    for epoch in range(20):
        budget.on_epoch_begin(epoch)
        rates.append(model.optimizer.learning_rate)
        budget.on_epoch_end(epoch)
        if model.stop_training:
            break
    # the rate is the cosine of the budget's elapsed share at each epoch's start
    np.testing.assert_allclose(rates, [0.005 * (1 + np.cos(np.pi * t / 100)) for t in starts])
    # the 40-second first epoch did not stop it (40 + 40 <= 100); after the epoch that
    # ended at 90 s another 10-second one still fitted, after the one ending at 100 s not
    assert model.stop_training and budget.stopped and epoch == len(ends) - 1


def test_time_budget_must_be_positive(tmp_path):
    config = pretraining.PretrainConfig("tiny_cnn", input_size=32, epochs=1)
    with pytest.raises(ValueError, match=r"time_budget_s = 0 is invalid"):
        pretraining.pretrain_backbone(config, tmp_path, tmp_path / "out", time_budget_s=0)


@pytest.mark.parametrize("field", ["workers", "epochs", "patience"])
def test_pretrain_config_rejects_a_count_below_one(field):
    with pytest.raises(ValueError, match=rf"pretrain.{field} = 0 is invalid"):
        pretraining.PretrainConfig("tiny_cnn", **{field: 0})
