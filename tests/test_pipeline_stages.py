"""foramlib.pipeline: stage configurations from params.yaml, and each stage's run."""

from __future__ import annotations

import copy
import dataclasses
import operator
import re
from pathlib import Path

import pytest
import yaml

from foramlib import pipeline
from foramlib.pipeline import STAGES, check_params, stage_config
from foramlib.pipeline._config import StageConfig, backbone_names, lookup, params_field

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


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no pipeline module for stage 'slice'"):
        pipeline.stage_config("slice")


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

    from foramlib.curation import CollectionError
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


@pytest.fixture
def split_run(curated_run, tiny_collection, tmp_path):
    """Slices of the curated tiny collection and the split stage run on them."""
    from foramlib import slicing
    from foramlib.curation import read_curated
    from foramlib.pipeline import split
    from foramlib.preprocess import PreprocessConfig

    cfg, _ = curated_run
    manifest = read_curated(Path(cfg.out_dir) / "manifest.csv", tiny_collection)
    slice_config = slicing.SlicingConfig(
        slices_per_taxon=12, offsets_per_orientation=2, preprocess=PreprocessConfig(size=32)
    )
    slicing.build_slice_store(manifest, tmp_path / "slices", slice_config, seed=0, progress=None)
    return split.run(
        split.SplitStageConfig(
            raw_dir=str(tiny_collection),
            curated=str(Path(cfg.out_dir) / "manifest.csv"),
            slices=str(tmp_path / "slices"),
            out_dir=str(tmp_path / "split"),
            tables_dir=str(tmp_path / "tables"),
            restarts=2,
        )
    )


def test_split_puts_each_specimen_in_one_split(split_run, tmp_path):
    out = split_run
    assert (out.index.groupby("specimen_id")["split"].nunique() == 1).all()
    assert set(out.assignment["split"]) == {"train", "val", "test"}
    for name in ("specimens.csv", "index.csv", "split.json"):
        assert (tmp_path / "split" / name).is_file()
    for name in ("table2", "table3", "table2_paper", "table3_paper"):
        assert (tmp_path / "tables" / f"{name}.csv").is_file()


def test_train_stage_trains_and_predicts_from_its_config(split_run, tmp_path):
    import json

    from foramlib.pipeline import train as train_stage
    from foramlib.training import TrainConfig

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
    )
    out = train_stage.run(stage_cfg, progress=None)
    saved = json.loads((tmp_path / "models" / "tiny_cnn" / "config.json").read_text())
    assert TrainConfig.from_dict(saved) == train
    assert out.history_figure.is_file() and out.result.summary["tta_views"] == 4
    assert out.slices["test"] == len(out.result.predictions["test"])
    with pytest.raises(ValueError, match=r"train@mobilenetv3_small: its TrainConfig is for"):
        train_stage.TrainStageConfig(backbone="mobilenetv3_small", train=train)
