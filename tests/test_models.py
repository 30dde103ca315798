"""Tests of foramlib.learn.models: the backbone registry and the classifier builder."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import pytest

from foramlib.learn.augment import AugmentConfig
from foramlib.learn.models import (
    BACKBONES,
    ModelError,
    backbone_names,
    backbone_of,
    build_model,
    count_params,
    set_backbone_trainable,
)

PAPER = [
    "convnext_base",
    "convnext_large",
    "efficientnetv2_s",
    "efficientnetv2_l",
    "nasnet_large",
    "mobilenetv3_large",
    "resnet101v2",
]
FAST = ["mobilenetv3_small", "efficientnetv2_b0", "tiny_cnn"]
SIZE = 32


def _images(n: int = 3, size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(n, size, size, 1)).astype(np.float32)


def _layer_names(model) -> set[str]:
    return {layer.name for layer in model.layers}


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- registry -----------------------------------------------------------------------------


def test_registry_holds_the_papers_seven_and_the_fast_ones():
    assert backbone_names() == PAPER + FAST
    assert [n for n, s in BACKBONES.items() if s.paper] == PAPER
    assert all(spec.name == name for name, spec in BACKBONES.items())
    assert BACKBONES["nasnet_large"].imagenet_size == 331
    assert {n for n, s in BACKBONES.items() if s.preprocessing == "tf"} == {
        "nasnet_large",
        "resnet101v2",
        "tiny_cnn",
    }
    for name, spec in BACKBONES.items():
        if spec.application is not None:
            assert hasattr(keras.applications, spec.application), name


# --- building every backbone ------------------------------------------------------------


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in PAPER])
def test_every_backbone_builds_and_predicts(name):
    model = build_model(name, input_size=SIZE, n_classes=4)
    try:
        assert model.name == f"foram_{name}"
        assert model.input_shape == (None, SIZE, SIZE, 1)
        assert model.output_shape == (None, 4)
        assert backbone_of(model).name == "backbone"
        # the preprocessing matches the backbone's convention
        has_rescaling = "preprocess" in _layer_names(model)
        assert has_rescaling == (BACKBONES[name].preprocessing == "tf")
        if has_rescaling:
            rescale = model.get_layer("preprocess")
            assert isinstance(rescale, keras.layers.Rescaling)
            assert rescale.scale == pytest.approx(1 / 127.5) and rescale.offset == -1.0
        probs = model.predict(_images(), verbose=0)
        assert probs.shape == (3, 4)
        assert np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    finally:
        del model
        keras.backend.clear_session()


def test_tf_preprocessing_maps_to_minus_one_one():
    model = build_model("tiny_cnn", input_size=SIZE, n_classes=2)
    probe = keras.Model(model.input, model.get_layer("preprocess").output)
    x = np.zeros((1, SIZE, SIZE, 1), np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 0] = 255.0, 127.5
    out = probe.predict(x, verbose=0)
    assert out.shape == (1, SIZE, SIZE, 3)
    assert out[0, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert out[0, 0, 1] == pytest.approx([0.0, 0.0, 0.0])
    assert out[0, 1, 1].tolist() == [-1.0, -1.0, -1.0]


def test_tiny_cnn_is_small():
    counts = count_params(build_model("tiny_cnn", input_size=SIZE, n_classes=12))
    assert 50_000 < counts["trainable"] + counts["non_trainable"] < 150_000
    assert counts["non_trainable"] == 2 * (16 + 32 + 64 + 128)  # BN moving statistics


# --- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"backbone": "resnet50"},
            r"backbone = 'resnet50' is unknown; valid names: "
            r"convnext_base, .*tiny_cnn",
        ),
        ({"backbone": None}, r"backbone = None is unknown"),
        ({"input_size": 31}, r"input_size = 31 is invalid: expected an integer >= 32"),
        ({"input_size": 64.0}, r"input_size = 64\.0 is invalid"),
        ({"n_classes": 1}, r"n_classes = 1 is invalid: expected an integer >= 2"),
        ({"dropout": 1.0}, r"dropout = 1\.0 is invalid: expected a number in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout = -0\.1 is invalid"),
        ({"weights": "imagenet"}, r"weights = 'imagenet' is invalid for 'tiny_cnn'"),
        ({"weights": "no/such/file.weights.h5"}, r"'no/such/file\.weights\.h5'.*no such"),
        ({"weights": 3}, r"weights = 3 is invalid"),
        ({"augment": {"zoom": 0.1}}, r"augment = \{'zoom': 0\.1\} is invalid"),
        ({"seed": -1}, r"seed = -1 is invalid"),
    ],
)
def test_bad_requests_are_refused(kwargs, match):
    args = {"backbone": "tiny_cnn", "input_size": SIZE, "n_classes": 3} | kwargs
    backbone = args.pop("backbone")
    with pytest.raises(ModelError, match=match):
        build_model(backbone, **args)


def test_model_errors_are_value_errors():
    assert issubclass(ModelError, ValueError)
    with pytest.raises(ValueError, match="no layer named 'backbone'"):
        backbone_of(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))


# --- serialisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "augment", [AugmentConfig(), AugmentConfig(stretch=0.2, blur=1.0, noise=0.02)]
)
def test_config_round_trip_with_augmentation(augment):
    model = build_model("tiny_cnn", input_size=SIZE, n_classes=3, augment=augment, seed=0)
    assert "augment" in _layer_names(model)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert [lay.name for lay in clone.get_layer("augment").layers] == [
        lay.name for lay in model.get_layer("augment").layers
    ]
    clone.set_weights(model.get_weights())
    x = _images()
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("name", ["tiny_cnn", "mobilenetv3_small"])
def test_save_load_round_trip(tmp_path, name):
    augment = AugmentConfig(stretch=0.2, blur=1.0, noise=0.02)  # every layer kind saved
    model = build_model(name, input_size=SIZE, n_classes=5, augment=augment, seed=1)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == model.name
    assert backbone_of(loaded).name == "backbone"
    x = _images()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


# --- augmentation inside the model --------------------------------------------------------


def test_augmentation_acts_only_while_training():
    x = _images(4)
    plain = build_model("tiny_cnn", input_size=SIZE, n_classes=3, dropout=0.0, seed=0)
    augmented = build_model(
        "tiny_cnn", input_size=SIZE, n_classes=3, dropout=0.0, augment=AugmentConfig(), seed=0
    )
    assert "augment" not in _layer_names(plain)
    # inference: augmentation is a no-op, so the same seed gives the same predictions
    first = augmented.predict(x, verbose=0)
    np.testing.assert_array_equal(first, augmented.predict(x, verbose=0))
    np.testing.assert_allclose(first, plain.predict(x, verbose=0), atol=1e-6)
    # training: without augmentation (and dropout) the forward pass is deterministic ...
    p1 = keras.ops.convert_to_numpy(plain(x, training=True))
    p2 = keras.ops.convert_to_numpy(plain(x, training=True))
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    # ... with it, two passes see different images
    a1 = keras.ops.convert_to_numpy(augmented(x, training=True))
    a2 = keras.ops.convert_to_numpy(augmented(x, training=True))
    assert not np.allclose(a1, a2, atol=1e-4)


def test_disabled_augmentation_is_left_out():
    model = build_model(
        "tiny_cnn", input_size=SIZE, n_classes=3, augment=AugmentConfig(enabled=False)
    )
    assert "augment" not in _layer_names(model)


# --- freezing -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "mobilenetv3_small"])
def test_set_backbone_trainable(name):
    model = build_model(name, input_size=SIZE, n_classes=3)
    backbone = backbone_of(model)
    head = model.get_layer("predictions")
    head_params = int(np.prod(head.kernel.shape) + np.prod(head.bias.shape))

    set_backbone_trainable(model, False)
    assert backbone.trainable_weights == []
    assert count_params(model)["trainable"] == head_params

    set_backbone_trainable(model, True)
    assert backbone.trainable_weights
    bn_layers = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bn_layers
    assert all(not layer.trainable and not layer.trainable_weights for layer in bn_layers)
    bn_ids = {id(w) for layer in bn_layers for w in layer.weights}
    assert not bn_ids & {id(w) for w in backbone.trainable_weights}
    others = [
        layer
        for layer in backbone.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert all(layer.trainable for layer in others)
    counts = count_params(model)
    assert counts["trainable"] + counts["non_trainable"] == model.count_params()

    with pytest.raises(ModelError, match=r"trainable = 1 is invalid"):
        set_backbone_trainable(model, 1)


# --- mixed precision ---------------------------------------------------------------------


def test_predictions_stay_float32_under_mixed_precision(mixed_float16):
    model = build_model("tiny_cnn", input_size=SIZE, n_classes=3)
    assert backbone_of(model).compute_dtype == "float16"
    head = model.get_layer("predictions")
    assert head.compute_dtype == "float32"
    assert head.variable_dtype == "float32"
    out = model(_images(2), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_mixed_precision_fixture_restored():
    assert keras.mixed_precision.global_policy().name == "float32"


# --- local weights ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "mobilenetv3_small"])
def test_local_weights_file(tmp_path, name):
    source = build_model(name, input_size=SIZE, n_classes=3, seed=1)
    path = tmp_path / "backbone.weights.h5"
    backbone_of(source).save_weights(path)
    model = build_model(name, input_size=SIZE, n_classes=3, weights=path, seed=2)
    got = backbone_of(model).get_weights()
    want = backbone_of(source).get_weights()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    # and a different seed really starts elsewhere without the file (tiny_cnn is seeded)
    if name == "tiny_cnn":
        fresh = build_model(name, input_size=SIZE, n_classes=3, seed=2)
        assert not np.array_equal(backbone_of(fresh).get_weights()[0], want[0])


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "gone.weights.h5"
    with pytest.raises(ValueError, match=r"gone\.weights\.h5"):
        build_model("mobilenetv3_small", input_size=SIZE, n_classes=3, weights=missing)
