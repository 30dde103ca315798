"""params.yaml validation and profile switching."""

from __future__ import annotations

import copy

import pytest
import yaml

from foramlib import config
from foramlib.tools.cli import main


@pytest.fixture()
def quick(repo_root):
    return yaml.safe_load((repo_root / "profiles" / "quick.yaml").read_text())


def test_params_yaml_is_the_quick_profile_by_default(repo_root):
    assert (repo_root / "params.yaml").read_text() == (
        repo_root / "profiles" / "quick.yaml"
    ).read_text()


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_kept_profiles_are_valid_and_have_the_same_keys(repo_root, name, quick):
    params = config.load_params(repo_root / "profiles" / f"{name}.yaml")
    assert params["profile"] == name
    assert config._flatten(params).keys() == config._flatten(quick).keys()


def test_every_schema_key_is_in_the_profiles(quick):
    assert set(config.SCHEMA) == set(config._flatten(quick))


def test_the_schema_checks_exactly_the_keys_the_stages_read():
    """SCHEMA (value checks) and the stage configurations (what each stage reads) name
    the same keys, so neither can gain a key the other does not know."""
    from dataclasses import fields

    from foramlib import pipeline
    from foramlib.learn.augment import AugmentConfig

    read = set()
    for name in pipeline.STAGES:
        read |= set(pipeline.stage_config(name).params_keys().values())
    # read whole: the augmentation section, and each backbone's settings
    read.remove("train.augment")
    read |= {f"train.augment.{f.name}" for f in fields(AugmentConfig)}
    read.remove("train.backbones.{key}.input_size")
    read.add("train.backbones")
    assert set(config.SCHEMA) - read == {"profile"}  # a label, read by no stage
    assert read - set(config.SCHEMA) == set()


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("seed", -1, r"seed = -1 is invalid: expected an integer >= 0"),
        (
            "data.source",
            "s3",
            r"data.source = 's3' is invalid: expected one of \['virtual', 'manifest'\]",
        ),
        ("virtual.shape", 8, r"virtual.shape = 8 is invalid: expected an integer >= 16"),
        ("virtual.n_jobs", True, r"virtual.n_jobs = True is invalid"),
        ("curate.min_models", 0, r"curate.min_models = 0 is invalid: expected an integer >= 1"),
        ("data.raw_dir", "  ", r"data.raw_dir = '  ' is invalid: expected a non-empty string"),
        (
            "match.n_orientations",
            0,
            r"match.n_orientations = 0 is invalid: expected an integer >= 1",
        ),
        ("match.n_offsets", 2.5, r"match.n_offsets = 2.5 is invalid: expected an integer >= 1"),
        ("match.size", 8, r"match.size = 8 is invalid: expected an integer >= 16"),
        ("match.descriptor_size", "32", r"match.descriptor_size = '32' is invalid"),
    ],
)
def test_bad_values_are_named_and_echoed(quick, key, value, match):
    params = copy.deepcopy(quick)
    section, _, leaf = key.rpartition(".")
    (params[section] if section else params)[leaf] = value
    with pytest.raises(config.ParamsError, match=match):
        config.validate_params(params)


def test_a_backbone_may_set_its_own_training_settings(quick):
    params = copy.deepcopy(quick)
    name = next(iter(params["train"]["backbones"]))
    params["train"]["backbones"][name].update(phase2_epochs=4, max_steps_per_epoch=None)
    config.validate_params(params)


@pytest.mark.parametrize(
    "setting, value, match",
    [
        ("phase2_epochs", -1, r"train.backbones.{b}.phase2_epochs = -1 is invalid: expected an "
         r"integer >= 0"),
        ("phase2_lr", 0, r"train.backbones.{b}.phase2_lr = 0 is invalid: expected a number in "
         r"\(0, 1\]"),
        ("batch_size", 64, r"unknown key 'train.backbones.{b}.batch_size' \(a backbone may set "
         r"input_size and phase1_epochs, .*patience\)"),
        ("input_size", 16, r"train.backbones = .* is invalid"),
    ],
)  # fmt: skip
def test_bad_backbone_settings_are_named(quick, setting, value, match):
    params = copy.deepcopy(quick)
    name = next(iter(params["train"]["backbones"]))
    params["train"]["backbones"][name][setting] = value
    with pytest.raises(config.ParamsError, match=match.format(b=name)):
        config.validate_params(params)


def test_all_problems_are_reported_at_once(quick):
    params = copy.deepcopy(quick)
    del params["curate"]["min_models"]
    params["virtual"]["shapes"] = 64
    params["seed"] = "x"
    with pytest.raises(config.ParamsError) as err:
        config.validate_params(params)
    msg = str(err.value)
    assert "missing key 'curate.min_models'" in msg
    assert "unknown key 'virtual.shapes' (a typo?)" in msg
    assert "seed = 'x' is invalid" in msg


def test_load_params_errors_name_the_file(tmp_path):
    with pytest.raises(config.ParamsError, match=r"nope.yaml: parameter file not found"):
        config.load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(config.ParamsError, match=r"bad.yaml: not valid YAML"):
        config.load_params(bad)
    bad.write_text("- 1\n")
    with pytest.raises(config.ParamsError, match=r"bad.yaml: expected a mapping"):
        config.load_params(bad)


def test_use_profile_copies_the_profile_verbatim(tmp_path, repo_root):
    params = tmp_path / "params.yaml"
    params.write_text("old")
    config.use_profile("paper", params, repo_root / "profiles")
    assert params.read_text() == (repo_root / "profiles" / "paper.yaml").read_text()
    with pytest.raises(config.ParamsError, match=r"unknown profile 'fast'.*\['paper', 'quick'\]"):
        config.use_profile("fast", params, repo_root / "profiles")
    assert config.load_params(params)["profile"] == "paper"  # untouched by the failure


def test_invalid_profile_is_refused_before_it_replaces_params(tmp_path, repo_root):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "broken.yaml").write_text("seed: 1\n")
    params = tmp_path / "params.yaml"
    params.write_text("keep me")
    with pytest.raises(config.ParamsError, match="missing key"):
        config.use_profile("broken", params, profiles)
    assert params.read_text() == "keep me"


def test_cli_profile_switch_and_error_exit(tmp_path, repo_root, capsys):
    params = tmp_path / "params.yaml"
    args = ["--params", str(params), "--profiles-dir", str(repo_root / "profiles")]
    assert main(["profile", "paper", *args]) == 0
    assert "paper" in capsys.readouterr().out
    assert main(["profile", "nope", *args]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert main(["profile", *args]) == 0
    assert "paper, quick" in capsys.readouterr().out


def test_a_profile_without_the_match_section_is_refused(quick):
    params = copy.deepcopy(quick)
    del params["match"]
    with pytest.raises(config.ParamsError, match=r"missing key 'match.n_orientations'"):
        config.validate_params(params)


def test_match_params_make_a_valid_index_config(quick):
    from foramlib.dataset.preprocess import PreprocessConfig
    from foramlib.matching.search import IndexConfig

    m = quick["match"]
    cfg = IndexConfig(
        n_orientations=m["n_orientations"],
        n_offsets=m["n_offsets"],
        descriptor_size=m["descriptor_size"],
        preprocess=PreprocessConfig(size=m["size"]),
    )
    assert cfg.n_orientations * cfg.n_offsets >= 100
