"""Backbone registry and classifier builder (paper §2.2), in backend-agnostic Keras 3.

Every model has the same functional shape::

    slice (S, S, 1) float32 in [0, 255]
      -> augment   (optional; random layers, active only while training)
      -> gray_to_rgb (Concatenate of the channel three times)
      -> preprocess  ("tf" backbones only: Rescaling to [-1, 1])
      -> backbone    (ImageNet architecture, include_top=False, pooling="avg")
      -> head_dropout -> predictions (Dense softmax, float32 under mixed precision)

The seven backbones of the paper are registered, plus three fast ones for the CPU
``quick`` profile and the tests (``mobilenetv3_small``, ``efficientnetv2_b0`` and our
own ``tiny_cnn``).

Examples
--------
>>> model = build_model("tiny_cnn", input_size=32, n_classes=3, seed=0)
>>> model.name, model.output_shape, backbone_of(model).name
('foram_tiny_cnn', (None, 3), 'backbone')
>>> "convnext_large" in backbone_names()
True
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "sublayers",
    "BACKBONES",
    "BackboneSpec",
    "ModelError",
    "backbone_names",
    "backbone_of",
    "build_model",
    "count_params",
    "set_backbone_trainable",
    "save_backbone_weights",
]


class ModelError(ValueError):
    """A model request that cannot be built."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Parameters
    ----------
    name : str
        Registry key (also the ``train@<name>`` stage suffix).
    application : str or None
        Class name in ``keras.applications``; ``None`` for our own ``tiny_cnn``.
    preprocessing : {"none", "tf"}
        ``"none"``: the network takes 0–255 and normalises inside (ConvNeXt,
        EfficientNetV2, MobileNetV3). ``"tf"``: scale to [-1, 1] first, as
        ``preprocess_input`` of ResNetV2 and NASNet does.
    paper : bool
        One of the seven backbones the paper evaluates.
    imagenet_size : int or None
        Input size the ImageNet weights were trained at (NASNetLarge: 331).
    kwargs : dict
        Extra constructor arguments.
    """

    name: str
    application: str | None
    preprocessing: str
    paper: bool
    imagenet_size: int | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preprocessing not in ("none", "tf"):
            raise ModelError(
                f"preprocessing = {self.preprocessing!r} is invalid: expected 'none' or 'tf'"
            )


_INSIDE = {"include_preprocessing": True}

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        # the paper's seven
        BackboneSpec("convnext_base", "ConvNeXtBase", "none", True, 224, dict(_INSIDE)),
        BackboneSpec("convnext_large", "ConvNeXtLarge", "none", True, 224, dict(_INSIDE)),
        BackboneSpec("efficientnetv2_s", "EfficientNetV2S", "none", True, 384, dict(_INSIDE)),
        BackboneSpec("efficientnetv2_l", "EfficientNetV2L", "none", True, 480, dict(_INSIDE)),
        BackboneSpec("nasnet_large", "NASNetLarge", "tf", True, 331),
        BackboneSpec("mobilenetv3_large", "MobileNetV3Large", "none", True, 224, dict(_INSIDE)),
        BackboneSpec("resnet101v2", "ResNet101V2", "tf", True, 224),
        # fast ones for the CPU quick profile and the tests
        BackboneSpec("mobilenetv3_small", "MobileNetV3Small", "none", False, 224, dict(_INSIDE)),
        BackboneSpec("efficientnetv2_b0", "EfficientNetV2B0", "none", False, 224, dict(_INSIDE)),
        BackboneSpec("tiny_cnn", None, "tf", False, None),
    )
}


def backbone_names() -> list[str]:
    """Registered backbone names, the paper's seven first.

    Examples
    --------
    >>> backbone_names()[-3:]
    ['mobilenetv3_small', 'efficientnetv2_b0', 'tiny_cnn']
    """
    return list(BACKBONES)


def _tiny_cnn(input_size: int, seed: int | None):
    """Our own small CNN (~100k parameters): four Conv-BN-ReLU blocks, global average."""
    import keras

    layers = keras.layers
    inputs = keras.Input((input_size, input_size, 3), name="tiny_cnn_input")
    x = inputs
    for i, filters in enumerate((16, 32, 64, 128)):
        init = keras.initializers.HeNormal(seed=None if seed is None else seed + 100 + i)
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=init,
            name=f"block{i + 1}_conv",
        )(x)
        x = layers.BatchNormalization(name=f"block{i + 1}_bn")(x)
        x = layers.ReLU(name=f"block{i + 1}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name="backbone")


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ModelError(f"{name} = {value!r} is invalid: expected an integer >= {lo}")
    return int(value)


def sublayers(layer):
    """Every layer nested inside ``layer`` (depth first), without ``layer`` itself.

    >>> net = backbone_of(build_model("tiny_cnn", input_size=32, n_classes=2))
    >>> any(type(x).__name__ == "BatchNormalization" for x in sublayers(net))
    True
    """
    for sub in getattr(layer, "layers", ()):
        yield sub
        yield from sublayers(sub)


def _resolve_weights(spec: BackboneSpec, weights: Any) -> str | None:
    if weights is None:
        return None
    if weights == "imagenet":
        if spec.application is None:
            raise ModelError(
                f"weights = 'imagenet' is invalid for {spec.name!r}: it has no ImageNet "
                "weights; use None or a local weights file"
            )
        return "imagenet"
    if isinstance(weights, str | os.PathLike):
        # one setting for all backbones: "models/pretrain/{backbone}/backbone.weights.h5"
        path = Path(os.fspath(weights).replace("{backbone}", spec.name))
        if not path.is_file():
            raise ModelError(
                f"weights = {str(weights)!r} is invalid: no such weights file {str(path)!r} "
                "(expected None, 'imagenet' or the path of a local weights file, where "
                "'{backbone}' stands for the backbone's name)"
            )
        return str(path)
    raise ModelError(f"weights = {weights!r} is invalid: expected None, 'imagenet' or a file path")


def build_model(
    backbone: str,
    *,
    input_size: int,
    n_classes: int,
    weights: str | os.PathLike | None = None,
    dropout: float = 0.2,
    augment: Any = None,
    seed: int | None = None,
):
    """Build the classifier for one backbone (functional ``keras.Model``).

    Parameters
    ----------
    backbone : str
        A key of :data:`BACKBONES`.
    input_size : int
        Side of the square grayscale input, >= 32.
    n_classes : int
        Number of genera, >= 2.
    weights : None, "imagenet" or path
        Backbone initialisation: random, ImageNet (fetched by Keras; needs network), or a
        local weights file of the headless backbone (``include_top=False``).
    dropout : float
        Dropout rate before the classifier, in [0, 1).
    augment : foramlib.learn.augment.AugmentConfig, optional
        Per-image augmentation placed inside the model (inactive at inference).
    seed : int, optional
        Seeds the augmentation layers, the dropout and the initialisers of the head and
        of ``tiny_cnn`` (the ImageNet architectures draw their initial weights from the
        global Keras seed, ``keras.utils.set_random_seed``).

    Returns
    -------
    keras.Model
        Named ``foram_<backbone>``; input ``(input_size, input_size, 1)`` float32 in
        [0, 255]; output ``(batch, n_classes)`` softmax in float32.

    Examples
    --------
    >>> build_model("resnet50", input_size=32, n_classes=3)
    Traceback (most recent call last):
    ...
    foramlib.learn.models.ModelError: backbone = 'resnet50' is unknown; valid names: ...
    """
    spec = BACKBONES.get(backbone) if isinstance(backbone, str) else None
    if spec is None:
        raise ModelError(
            f"backbone = {backbone!r} is unknown; valid names: {', '.join(backbone_names())}"
        )
    input_size = _check_int("input_size", input_size, 32)
    n_classes = _check_int("n_classes", n_classes, 2)
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not math.isfinite(dropout)
        or not 0 <= dropout < 1
    ):
        raise ModelError(f"dropout = {dropout!r} is invalid: expected a number in [0, 1)")
    if seed is not None:
        seed = _check_int("seed", seed, 0)
    weights = _resolve_weights(spec, weights)

    from foramlib.learn.augment import AugmentConfig, augmentation_layers

    if augment is not None and not isinstance(augment, AugmentConfig):
        raise ModelError(f"augment = {augment!r} is invalid: expected an AugmentConfig or None")

    import keras

    layers = keras.layers
    inputs = keras.Input((input_size, input_size, 1), dtype="float32", name="slice")
    x = inputs
    if augment is not None:
        aug = augmentation_layers(augment, seed=seed)
        if aug.layers:
            # On the single grayscale channel: every transform treats channels alike, so
            # this equals augmenting the RGB copy, at a third of the cost.
            x = aug(x)
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    if spec.preprocessing == "tf":
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)

    if spec.application is None:
        net = _tiny_cnn(input_size, seed)
    else:
        constructor = getattr(keras.applications, spec.application)
        net = constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(input_size, input_size, 3),
            pooling="avg",
            **spec.kwargs,
        )
        # Not name="backbone" in the call: EfficientNetV2 looks its block table up by name.
        net = keras.Model(net.input, net.output, name="backbone")
    if weights not in (None, "imagenet"):
        _load_backbone_weights(net, weights, spec.name)
    x = net(x)
    x = layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    head_init = keras.initializers.GlorotUniform(seed=seed)
    outputs = layers.Dense(
        n_classes,
        activation="softmax",
        dtype="float32",
        kernel_initializer=head_init,
        name="predictions",
    )(x)
    return keras.Model(inputs, outputs, name=f"foram_{backbone}")


def _load_backbone_weights(net, path: str, name: str) -> None:
    """Load a headless backbone's weights (as :func:`save_backbone_weights` writes them)."""
    try:
        net.load_weights(path)
    except (ValueError, KeyError, OSError) as err:
        raise ModelError(
            f"weights = {path!r} do not fit backbone {name!r}: {err} (pretrained weights "
            "belong to one backbone; the input size may differ)"
        ) from None


def save_backbone_weights(model, path) -> Path:
    """Write the backbone of `model` (without its head) for ``build_model(weights=path)``.

    The file name must end in ``.weights.h5`` (Keras' weights format); it is written
    atomically.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> m = build_model("tiny_cnn", input_size=32, n_classes=5, seed=1)
    >>> path = save_backbone_weights(m, tempfile.mkdtemp() + "/tiny.weights.h5")
    >>> m2 = build_model("tiny_cnn", input_size=32, n_classes=3, weights=path, seed=2)
    >>> a, b = backbone_of(m).get_weights(), backbone_of(m2).get_weights()
    >>> all(np.array_equal(x, y) for x, y in zip(a, b))
    True
    """
    from foramlib.io.atomic import atomic_path

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ModelError(f"path = {str(path)!r} is invalid: expected a name ending in .weights.h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".weights.h5") as tmp:  # keras checks the suffix
        backbone_of(model).save_weights(tmp)
    return path


def backbone_of(model):
    """The backbone sub-model (the layer named ``"backbone"``) of a built model."""
    try:
        return model.get_layer("backbone")
    except ValueError as err:
        raise ModelError(
            f"model {getattr(model, 'name', model)!r} has no layer named 'backbone'"
        ) from err


def set_backbone_trainable(model, trainable: bool, *, keep_batchnorm_frozen: bool = True) -> None:
    """Freeze (phase 1) or unfreeze (phase 2) the backbone; compile again afterwards.

    When unfreezing a pretrained backbone, every ``BatchNormalization`` layer inside it
    stays frozen, which in Keras 3 also keeps it in inference mode (Keras' fine-tuning
    guide). A backbone trained from scratch has no statistics worth keeping: pass
    ``keep_batchnorm_frozen=False`` so its BatchNorm layers learn too.

    Examples
    --------
    >>> m = build_model("tiny_cnn", input_size=32, n_classes=2)
    >>> set_backbone_trainable(m, False)
    >>> count_params(m)["trainable"]  # the head only: 128 * 2 + 2
    258
    """
    import keras

    if not isinstance(trainable, bool):
        raise ModelError(f"trainable = {trainable!r} is invalid: expected True or False")
    net = backbone_of(model)
    net.trainable = trainable
    if trainable and keep_batchnorm_frozen:
        for layer in sublayers(net):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def count_params(model) -> dict[str, int]:
    """Trainable and non-trainable parameter counts.

    Examples
    --------
    >>> sorted(count_params(build_model("tiny_cnn", input_size=32, n_classes=2)))
    ['non_trainable', 'trainable']
    """

    def total(weights) -> int:
        return int(sum(math.prod(int(d) for d in w.shape) for w in weights))

    return {
        "trainable": total(model.trainable_weights),
        "non_trainable": total(model.non_trainable_weights),
    }
