"""foramlib.pipeline: stage configurations from params.yaml, and each stage's run."""

from __future__ import annotations

import copy
import dataclasses
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
    cfg = cls.from_params(params)
    for field, key in cls.params_keys().items():
        value = lookup(params, key)
        expected = backbone_names(value) if key == "train.backbones" else value
        assert getattr(cfg, field) == expected, (field, key)


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
    with pytest.raises(ValueError, match=r"no pipeline module for stage 'train'"):
        pipeline.stage_config("train")
