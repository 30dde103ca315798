"""Tests of foramlib.learn.augment: the config, the in-model layers and batch CutMix/MixUp."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

from foramlib.learn.augment import AugmentConfig, AugmentError, augmentation_layers, mix_batch


def _batch(n: int = 8, size: int = 16, n_classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n, size, size, 1)).astype(np.float32)
    labels = np.eye(n_classes, dtype=np.float32)[np.arange(n) % n_classes]
    return images, labels


# --- AugmentConfig ---------------------------------------------------------------------


def test_config_defaults_follow_the_paper():
    cfg = AugmentConfig()
    assert cfg.rotation_deg == 45.0 and cfg.zoom == 0.2 and cfg.flip
    assert cfg.cutmix and cfg.mixup and cfg.mix_probability == 0.5
    assert cfg.mixers == ("cutmix", "mixup")
    assert AugmentConfig(enabled=False).mixers == ()


def test_config_round_trip_and_coercion():
    cfg = AugmentConfig(rotation_deg=30, zoom=0.1, flip=False, mixup=False, mix_probability=1)
    assert isinstance(cfg.rotation_deg, float)
    d = cfg.as_dict()
    assert d["rotation_deg"] == 30.0 and d["flip"] is False
    assert AugmentConfig.from_dict(d) == cfg
    # a params.yaml block without the alpha keys takes the defaults
    partial = {k: v for k, v in d.items() if not k.endswith("alpha")}
    assert AugmentConfig.from_dict(partial).cutmix_alpha == 1.0
    assert AugmentConfig.from_dict(None) == AugmentConfig()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rotation_deg": -1}, r"rotation_deg = -1 is invalid"),
        ({"rotation_deg": 181}, r"rotation_deg = 181"),
        ({"zoom": 1.0}, r"zoom = 1\.0 is invalid.*\[0, 1\)"),
        ({"brightness": 1.5}, r"brightness = 1\.5"),
        ({"contrast": "0.2"}, r"contrast = '0\.2'"),
        ({"mix_alpha": 0}, r"mix_alpha = 0 is invalid"),
        ({"cutmix_alpha": 2.0}, r"cutmix_alpha = 2\.0"),
        ({"mix_probability": float("nan")}, r"mix_probability = nan"),
        ({"mix_probability": True}, r"mix_probability = True"),
        ({"flip": 1}, r"flip = 1 is invalid: expected true or false"),
        ({"stretch": 1.0}, r"stretch = 1\.0 is invalid.*\[0, 1\)"),
        ({"blur": -0.5}, r"blur = -0\.5 is invalid"),
        ({"noise": 5}, r"noise = 5 is invalid.*\[0, 1\]"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(AugmentError, match=match):
        AugmentConfig(**kwargs)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown augmentation setting\(s\) \['rotate'\]"):
        AugmentConfig.from_dict({"rotate": 45})


# --- in-model layers --------------------------------------------------------------------


def test_layers_follow_the_config():
    aug = augmentation_layers(AugmentConfig(), seed=1)
    assert aug.name == "augment"
    assert [layer.name for layer in aug.layers] == [
        "random_rotation",
        "random_zoom",
        "random_flip",
        "random_brightness",
        "random_contrast",
    ]
    rot = aug.get_layer("random_rotation")
    assert tuple(rot.factor) == (-0.125, 0.125)  # ±45° as a fraction of a full turn
    assert rot.fill_mode == "constant"
    assert tuple(aug.get_layer("random_zoom").height_factor) == (-0.2, 0.2)
    assert augmentation_layers(AugmentConfig(enabled=False)).layers == []
    few = augmentation_layers(AugmentConfig(rotation_deg=0, flip=False, brightness=0))
    assert [layer.name for layer in few.layers] == ["random_zoom", "random_contrast"]


def test_scan_style_layers_are_off_by_default_and_follow_the_config():
    assert AugmentConfig().stretch == AugmentConfig().blur == AugmentConfig().noise == 0.0
    aug = augmentation_layers(AugmentConfig(stretch=0.3, blur=1.0, noise=0.02), seed=0)
    names = [layer.name for layer in aug.layers]
    scan_style = ["random_stretch", "random_blur", "noise_to_unit", "noise", "noise_from_unit"]
    assert names[-5:] == scan_style
    stretch = aug.get_layer("random_stretch")
    # the width alone changes: the aspect ratio, not the scale
    assert tuple(stretch.height_factor) == (0.0, 0.0)
    assert tuple(stretch.width_factor) == (-0.3, 0.3)
    assert tuple(aug.get_layer("random_blur").kernel_size) == (5, 5)


def test_noise_is_added_on_the_grey_scale():
    images = np.full((64, 16, 16, 1), 128.0, np.float32)
    cfg = AugmentConfig(rotation_deg=0, zoom=0, flip=False, brightness=0, contrast=0, noise=0.02)
    noisy = np.asarray(augmentation_layers(cfg, seed=0)(images, training=True))
    assert noisy.std() == pytest.approx(0.02 * 255, rel=0.1)
    np.testing.assert_allclose(
        np.asarray(augmentation_layers(cfg, seed=0)(images, training=False)), images, atol=1e-3
    )


def test_layers_active_in_training_only():
    images, _ = _batch()
    aug = augmentation_layers(AugmentConfig(), seed=3)
    inference = np.asarray(aug(images, training=False))
    np.testing.assert_array_equal(inference, images)
    trained = np.asarray(aug(images, training=True))
    assert trained.shape == images.shape
    assert not np.allclose(trained, images)
    assert trained.min() >= 0.0 and trained.max() <= 255.0


def test_layers_reject_bad_arguments():
    with pytest.raises(AugmentError, match=r"config = \{\} is invalid"):
        augmentation_layers({})
    with pytest.raises(AugmentError, match=r"seed = 'a' is invalid"):
        augmentation_layers(AugmentConfig(), seed="a")


# --- batch mixing ----------------------------------------------------------------------


@pytest.mark.parametrize("mixer", ["cutmix", "mixup"])
def test_mix_batch_soft_labels(mixer):
    images, labels = _batch()
    cfg = AugmentConfig(cutmix=mixer == "cutmix", mixup=mixer == "mixup", mix_probability=1)
    x, y = mix_batch(images, labels, cfg, np.random.default_rng(5))
    assert x.shape == images.shape and y.shape == labels.shape
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(y, labels)
    assert not np.array_equal(x, images)
    assert x.min() >= 0.0 and x.max() <= 255.0 + 1e-3


def test_mix_batch_deterministic_for_a_seeded_rng():
    images, labels = _batch()
    cfg = AugmentConfig(mix_probability=1.0)
    runs = [mix_batch(images, labels, cfg, np.random.default_rng(11)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    # a different rng state mixes differently
    other = mix_batch(images, labels, cfg, np.random.default_rng(12))
    assert not np.array_equal(other[1], runs[0][1])


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(mix_probability=0.0),
        AugmentConfig(enabled=False, mix_probability=1.0),
        AugmentConfig(cutmix=False, mixup=False, mix_probability=1.0),
    ],
)
def test_mix_batch_unchanged(cfg):
    images, labels = _batch()
    x, y = mix_batch(images, labels, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_mix_batch_probability_is_per_batch():
    images, labels = _batch()
    rng = np.random.default_rng(1)
    cfg = AugmentConfig(cutmix=False, mix_probability=0.5)
    changed = [
        not np.array_equal(mix_batch(images, labels, cfg, rng)[1], labels) for _ in range(20)
    ]
    assert 3 <= sum(changed) <= 17


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 8, 8, 1)), np.array([0, 1, 0, 1]), r"labels\.shape = \(4,\) is invalid"),
        (np.zeros((4, 8, 8, 1)), np.eye(2, dtype=int)[[0, 1, 0, 1]], r"labels\.dtype = int"),
        (np.zeros((4, 8, 8, 1)), np.eye(2)[[0, 1, 0]], r"labels\.shape = \(3, 2\)"),
        (np.zeros((4, 8, 8, 1)), np.full((4, 2), 0.7), r"row sums \[1\.4"),
        (np.zeros((8, 8, 1)), np.eye(2)[[0, 1]], r"images\.shape = \(8, 8, 1\)"),
    ],
)
def test_mix_batch_refuses_bad_input(images, labels, match):
    with pytest.raises(AugmentError, match=match):
        mix_batch(images, labels, AugmentConfig(mix_probability=1.0), np.random.default_rng(0))


def test_mix_batch_needs_a_generator():
    images, labels = _batch()
    with pytest.raises(AugmentError, match=r"rng = 0 is invalid"):
        mix_batch(images, labels, AugmentConfig(), 0)
