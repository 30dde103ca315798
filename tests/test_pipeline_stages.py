"""foramlib.pipeline: stage configurations from params.yaml, and each stage's run."""

from __future__ import annotations

import copy
import dataclasses
import json
import operator
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from foramlib import pipeline
from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.dataset.slicing import SlicingConfig
from foramlib.pipeline import STAGES, check_params, stage_config
from foramlib.pipeline._config import (
    StageConfig,
    backbone_names,
    lookup,
    nested_field,
    params_field,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_config_reads_its_keys_from_params(params, name):
    cls = stage_config(name)
    assert cls.stage == name
    configs = cls.each_from_params(params)
    assert configs
    normalizers = {f.name: f.metadata.get("normalize") for f in dataclasses.fields(cls)}
    for cfg in configs:
        for field, key in cls.params_keys().items():
            value = lookup(params, key.format(key=cfg.foreach_key))
            expected = normalizers[field](value) if normalizers.get(field) else value
            got = operator.attrgetter(field)(cfg)  # a dotted field: nested settings
            if hasattr(got, "as_dict"):  # e.g. AugmentConfig: the keys params.yaml sets
                got = {k: v for k, v in got.as_dict().items() if k in expected}
            assert got == expected, (field, key)


def test_train_stages_are_one_per_backbone_with_their_own_input_size(params):
    from foramlib.pipeline.train import TrainStageConfig

    configs = TrainStageConfig.each_from_params(params)
    assert [c.backbone for c in configs] == list(params["train"]["backbones"])
    for c in configs:
        assert c.train.input_size == params["train"]["backbones"][c.backbone]["input_size"]
        assert c.out_dir == f"models/{c.backbone}"
    with pytest.raises(TypeError, match="needs backbone=<name>"):
        TrainStageConfig.from_params(params)
    bad = copy.deepcopy(params)
    del bad["train"]["tta_views"]
    with pytest.raises(KeyError, match="params.yaml has no key 'train.tta_views'"):
        TrainStageConfig.from_params(bad, backbone="tiny_cnn")


def test_overrides_replace_fields_and_unknown_ones_are_refused(params):
    cls = stage_config("evaluate")
    cfg = cls.from_params(params, seed=7, tables_dir="elsewhere")
    assert (cfg.seed, cfg.tables_dir) == (7, "elsewhere")
    with pytest.raises(TypeError, match=r"EvaluateStageConfig has no field\(s\) \['tables'\]"):
        cls.from_params(params, tables="x")


def test_configs_are_frozen(params):
    cfg = stage_config("ensemble").from_params(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_k = 3


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda p: p["train"].update(backbones={}), r"ensemble: train.backbones = \{\}"),
        (lambda p: p["match"].update(n_offsets=0), r"index: .*n_offsets"),
        (lambda p: p.pop("match"), r"index: params.yaml has no key 'match.n_orientations'"),
        (lambda p: p["train"].update(tta_views=3), r"train: train.tta_views = 3 is invalid"),
        (
            lambda p: p["train"]["backbones"].update(tiny_cnn={}),
            r"train: params.yaml has no key 'train.backbones.tiny_cnn.input_size'",
        ),
    ],
)
def test_check_params_names_the_stage_and_the_problem(params, change, problem):
    bad = copy.deepcopy(params)
    change(bad)
    found = check_params(bad)
    assert found, "the bad params were accepted"
    assert any(re.search(problem, line) for line in found), found


def test_the_projects_params_configure_every_stage(params):
    assert check_params(params) == []


def test_params_field_records_its_key():
    @dataclasses.dataclass(frozen=True)
    class Demo(StageConfig):
        stage = "demo"
        k: int = params_field("a.k", default=1)
        path: str = "out"

    assert Demo.params_keys() == {"k": "a.k"}
    assert Demo.from_params({"a": {"k": 5}}) == Demo(k=5)
    with pytest.raises(KeyError, match="params.yaml has no key 'a.k'"):
        Demo.from_params({"a": {}})


def test_nested_field_reads_a_library_config_from_its_own_section(params):
    @dataclasses.dataclass(frozen=True)
    class Demo(StageConfig):
        stage = "demo"
        slicing: SlicingConfig = nested_field(SlicingConfig, skip=("slices_per_taxon",))

    keys = Demo.params_keys()
    assert keys["slicing.preprocess.size"] == "slice.size"
    assert keys["slicing.dense_factor"] == "slice.dense_factor"
    assert "slicing.slices_per_taxon" not in keys
    cfg = Demo.from_params(params)
    assert cfg.slicing.preprocess.size == params["slice"]["size"]
    assert cfg.slicing.slices_per_taxon == SlicingConfig().slices_per_taxon  # skipped: default
    assert Demo().slicing == SlicingConfig()
    bad = copy.deepcopy(params)
    del bad["slice"]["margin"]
    with pytest.raises(KeyError, match="params.yaml has no key 'slice.margin'"):
        Demo.from_params(bad)


PREPROCESS_KEYS = ("size", "sensitivity", "min_fraction", "margin", "clahe", "denoise", "sharpen")


def test_slice_and_corpus_stages_cut_alike(params):
    """One reader of slice.*: the corpus gets the collection's cutting and preprocessing."""
    sl = params["slice"]
    by_hand = SlicingConfig(
        slices_per_taxon=sl["slices_per_taxon"],
        offsets_per_orientation=sl["offsets_per_orientation"],
        jitter_deg=sl["jitter_deg"],
        dense_factor=sl["dense_factor"],
        smooth_sigma=sl["smooth_sigma"],
        preprocess=PreprocessConfig(**{k: sl[k] for k in PREPROCESS_KEYS}),
    )
    assert stage_config("slice").from_params(params).slicing == by_hand
    corpus = stage_config("corpus").from_params(params).slicing
    assert corpus.preprocess == by_hand.preprocess
    assert dataclasses.replace(corpus, slices_per_taxon=by_hand.slices_per_taxon) == by_hand


def test_pretrain_stages_read_their_backbone_size_and_the_pretrain_section(params):
    from foramlib.pipeline.pretrain import PretrainStageConfig

    configs = PretrainStageConfig.each_from_params(params)
    assert [c.backbone for c in configs] == list(params["train"]["backbones"])
    for c in configs:
        assert c.pretrain.input_size == params["train"]["backbones"][c.backbone]["input_size"]
        assert (c.pretrain.epochs, c.pretrain.lr) == (
            params["pretrain"]["epochs"],
            params["pretrain"]["lr"],
        )
        assert c.out_dir == f"models/pretrain/{c.backbone}"
        assert c.weights == params["train"]["weights"]
    with pytest.raises(TypeError, match="needs backbone=<name>"):
        PretrainStageConfig.from_params(params)


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no pipeline module for stage 'book'"):
        pipeline.stage_config("book")


@pytest.mark.parametrize("bad", [{}, [], "tiny_cnn", None, {"": {}}, [1]])
def test_backbone_names_refuses_what_is_not_a_list_of_names(bad):
    with pytest.raises(ValueError, match=r"train.backbones = .* is invalid"):
        backbone_names(bad)


def test_split_fractions_are_three_numbers(params):
    cls = stage_config("split")
    assert cls.from_params(params, fractions=[1, 0, 0]).fractions == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"split.fractions = \[0.5, 0.5\] is invalid"):
        cls.from_params(params, fractions=[0.5, 0.5])


# --- running stages on a tiny collection ------------------------------------------------


@pytest.fixture
def curated_run(tiny_collection, tmp_path):
    """The curate stage on the tiny collection, its manifest's voxel sizes left empty."""
    import pandas as pd

    from foramlib.pipeline import curate

    manifest = pd.read_csv(tiny_collection / "manifest.csv")
    manifest["voxel_size_um"] = None  # optional column: the headers' sizes are used
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    cfg = curate.CurateStageConfig(
        raw_dir=str(tiny_collection),
        manifest=str(tmp_path / "manifest.csv"),
        min_models=3,
        out_dir=str(tmp_path / "curated"),
        taxa_table=str(tmp_path / "taxa.csv"),
        figure=str(tmp_path / "figure2.png"),
    )
    return cfg, curate.run(cfg)


def test_curate_runs_with_an_empty_optional_voxel_size(curated_run):
    import pandas as pd

    cfg, result = curated_run
    kept = pd.read_csv(Path(cfg.out_dir) / "manifest.csv")
    taxa = result.taxa
    assert set(kept["species"]) == set(taxa.loc[taxa["kept"], "species"])
    assert (Path(cfg.out_dir) / "volumes.csv").is_file() and Path(cfg.taxa_table).is_file()
    assert result.figure.is_file() and result.figure.stat().st_size > 0
    assert "kept" in result.summary


def test_curate_reports_manifest_and_volume_problems_in_one_run(tiny_collection, tmp_path):
    import pandas as pd

    from foramlib.dataset.curation import CollectionError
    from foramlib.pipeline import curate

    manifest = pd.read_csv(tiny_collection / "manifest.csv")
    (tmp_path / "broken.nii.gz").write_bytes(b"truncated")
    extra = pd.DataFrame(
        {"file": [str(tmp_path / "broken.nii.gz"), "missing.nii.gz"],
         "specimen_id": ["X1", "X2"], "species": ["Xenus", "Xenus"]}
    )  # fmt: skip
    pd.concat([manifest, extra]).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = curate.CurateStageConfig(
        raw_dir=str(tiny_collection),
        manifest=str(tmp_path / "manifest.csv"),
        out_dir=str(tmp_path / "curated"),
        taxa_table=str(tmp_path / "taxa.csv"),
        figure=str(tmp_path / "figure2.png"),
    )
    with pytest.raises(CollectionError) as err:
        curate.run(cfg)
    assert "missing.nii.gz" in str(err.value) and "broken.nii.gz" in str(err.value)
    assert not (tmp_path / "curated").exists()  # nothing written from a broken collection


def _slice(curated_run, raw_dir, out: Path, train_factor: int = 1):
    """The slice stage on the curated tiny collection, into `out`."""
    from foramlib.pipeline import slice as slice_stage

    cfg, _ = curated_run
    return slice_stage.run(
        slice_stage.SliceStageConfig(
            raw_dir=str(raw_dir),
            slicing=SlicingConfig(
                slices_per_taxon=12, offsets_per_orientation=2, preprocess=PreprocessConfig(size=32)
            ),
            train_factor=train_factor,
            curated=str(Path(cfg.out_dir) / "manifest.csv"),
            out_dir=str(out),
            gallery=str(out.parent / f"{out.name}_gallery.png"),
        ),
        progress=None,
    )


def _split(curated_run, raw_dir, slices: Path, out: Path, tables: Path):
    """The split stage on a slice store of the curated tiny collection, into `out`."""
    from foramlib.pipeline import split

    cfg, _ = curated_run
    return split.run(
        split.SplitStageConfig(
            raw_dir=str(raw_dir),
            curated=str(Path(cfg.out_dir) / "manifest.csv"),
            slices=str(slices),
            out_dir=str(out),
            tables_dir=str(tables),
            restarts=2,
        )
    )


@pytest.fixture
def slice_run(curated_run, tiny_collection, tmp_path):
    """The slice stage on the curated tiny collection."""
    return _slice(curated_run, tiny_collection, tmp_path / "slices")


@pytest.fixture
def split_run(curated_run, slice_run, tiny_collection, tmp_path):
    """The split stage run on the slices of the curated tiny collection."""
    return _split(
        curated_run, tiny_collection, tmp_path / "slices", tmp_path / "split", tmp_path / "tables"
    )


def test_synthesize_stage_writes_the_seeded_collection(tiny_collection, tmp_path):
    from foramlib.pipeline import synthesize

    cfg = synthesize.SynthesizeStageConfig(
        seed=7, preset="tiny", shape=32, supersample=1, out_dir=str(tmp_path / "virtual")
    )
    result = synthesize.run(cfg, progress=None)
    assert result.summary.startswith("14 virtual volumes of 32^3 voxels over 5 taxa")
    assert result.taxa["volumes"].sum() == 14
    made = sorted(p.name for p in (tmp_path / "virtual").iterdir())
    assert made == sorted(p.name for p in tiny_collection.iterdir())
    for name in made:  # the same seed and settings as the fixture's: the same bytes
        assert (tmp_path / "virtual" / name).read_bytes() == (tiny_collection / name).read_bytes()


def test_synthesize_stage_leaves_a_note_for_a_manifest_source(tmp_path):
    from foramlib.pipeline import synthesize

    out = tmp_path / "virtual"
    cfg = synthesize.SynthesizeStageConfig(source="manifest", out_dir=str(out))
    result = synthesize.run(cfg, progress=None)
    assert "no virtual collection generated" in result.summary and result.taxa.empty
    assert [p.name for p in out.iterdir()] == ["NOT_USED.md"]
    with pytest.raises(ValueError, match=r"data.source = 'scans' is invalid"):
        synthesize.SynthesizeStageConfig(source="scans")


def test_slice_stage_stores_the_slices_and_draws_the_gallery(slice_run, tmp_path):
    import json

    import numpy as np

    out = slice_run
    assert out.gallery.is_file() and out.gallery.stat().st_size > 0
    assert out.summary.startswith(f"{len(out.index)} slices of 32x32 px kept from")
    assert out.per_taxon["slices"].sum() == len(out.index)
    record = json.loads((tmp_path / "slices" / "slicing.json").read_text())
    assert record["preprocess"]["size"] == 32
    first = out.index.iloc[0]
    arr = np.load(tmp_path / "slices" / first["array"], mmap_mode="r")
    assert arr.shape[1:] == (32, 32) and arr.dtype == np.uint8


def test_corpus_stage_is_skipped_without_pretraining_and_built_with_it(curated_run, tmp_path):
    import json

    from foramlib.pipeline import corpus

    cfg, _ = curated_run
    small = dict(
        n_taxa=2, specimens_per_taxon=2, slices_per_specimen=4, shape=32, supersample=1,
        slicing=SlicingConfig(preprocess=PreprocessConfig(size=32)),
        manifest=str(Path(cfg.out_dir) / "manifest.csv"), out_dir=str(tmp_path / "pretrain"),
    )  # fmt: skip
    skipped = corpus.run(corpus.CorpusStageConfig(weights=None, **small))
    assert skipped.skipped and skipped.recipes.empty
    saved = json.loads((tmp_path / "pretrain" / "corpus.json").read_text())
    assert saved["skipped"] == "train.weights = None uses no pretrained weights"

    weights = "models/pretrain/{backbone}/backbone.weights.h5"
    built = corpus.run(corpus.CorpusStageConfig(weights=weights, **small))
    assert not built.skipped and len(built.recipes) == 2
    assert "recipes" not in built.summary
    assert (tmp_path / "pretrain" / "index.csv").is_file()
    with pytest.raises(ValueError, match=r"pretrain.corpus.n_taxa = 1 is invalid"):
        corpus.CorpusStageConfig(n_taxa=1)


def test_pretrain_stage_is_skipped_when_weights_point_elsewhere(tmp_path):
    from foramlib.pipeline import pretrain

    cfg = pretrain.PretrainStageConfig(
        backbone="tiny_cnn", weights="imagenet", out_dir=str(tmp_path / "tiny_cnn")
    )
    result = pretrain.run(cfg)
    assert "skipped" in result.summary and result.history is None
    assert not (tmp_path / "tiny_cnn" / "backbone.weights.h5").exists()
    with pytest.raises(ValueError, match=r"pretrain@mobilenetv3_small: its PretrainConfig"):
        pretrain.PretrainStageConfig(backbone="mobilenetv3_small", pretrain=cfg.pretrain)


def test_split_puts_each_specimen_in_one_split(split_run, tmp_path):
    out = split_run
    assert (out.index.groupby("specimen_id")["split"].nunique() == 1).all()
    assert set(out.assignment["split"]) == {"train", "val", "test"}
    for name in ("specimens.csv", "index.csv", "split.json"):
        assert (tmp_path / "split" / name).is_file()
    for name in ("table2", "table3", "table2_paper", "table3_paper"):
        assert (tmp_path / "tables" / f"{name}.csv").is_file()


def test_a_training_reserve_adds_training_slices_only(
    curated_run, split_run, tiny_collection, tmp_path
):
    dense = _slice(curated_run, tiny_collection, tmp_path / "dense_slices", train_factor=3)
    assert "Training reserve (slice.train_factor = 3)" in dense.summary
    out = _split(
        curated_run,
        tiny_collection,
        tmp_path / "dense_slices",
        tmp_path / "dense_split",
        tmp_path / "dense_tables",
    )
    # the same split, searched on the ordinary slices; only training grows
    pd.testing.assert_frame_equal(out.assignment, split_run.assignment)
    pd.testing.assert_frame_equal(out.table2, split_run.table2)
    before = split_run.index.groupby("split").size()
    after = out.index.groupby("split").size()
    assert after["val"] == before["val"] and after["test"] == before["test"]
    assert after["train"] > 2 * before["train"]
    ordinary = len(split_run.index)
    pd.testing.assert_frame_equal(out.index.iloc[:ordinary], split_run.index)
    record = json.loads((tmp_path / "dense_split" / "split.json").read_text())
    assert record["train_reserve_slices"] == len(out.index) - ordinary
    assert "reserve sections added to training" in out.summary
    assert "train_reserve_slices" not in json.loads((tmp_path / "split" / "split.json").read_text())


@pytest.mark.slow
def test_train_stage_trains_and_predicts_from_its_config(split_run, tmp_path):
    import json

    from foramlib.learn.training import TrainConfig
    from foramlib.pipeline import train as train_stage

    train = TrainConfig(
        backbone="tiny_cnn", input_size=32, batch_size=8, phase1_epochs=1, phase2_epochs=1,
        max_steps_per_epoch=2, seed=5, tta_views=4,
    )  # fmt: skip
    stage_cfg = train_stage.TrainStageConfig(
        backbone="tiny_cnn",
        train=train,
        split_index=str(tmp_path / "split" / "index.csv"),
        slices=str(tmp_path / "slices"),
        out_dir=str(tmp_path / "models" / "tiny_cnn"),
        history_figure=str(tmp_path / "history.png"),
        live_dir=str(tmp_path / "live"),
    )
    out = train_stage.run(stage_cfg, progress=None)
    assert (tmp_path / "live" / "metrics.json").is_file()  # dvc.yaml's metrics and plots
    saved = json.loads((tmp_path / "models" / "tiny_cnn" / "config.json").read_text())
    assert TrainConfig.from_dict(saved) == train
    assert out.history_figure.is_file() and out.result.summary["tta_views"] == 4
    assert out.slices["test"] == len(out.result.predictions["test"])
    with pytest.raises(ValueError, match=r"train@mobilenetv3_small: its TrainConfig is for"):
        train_stage.TrainStageConfig(backbone="mobilenetv3_small", train=train)
