"""Grad-CAM: which part of a slice drove a model's decision.

:func:`grad_cam` computes the class-activation map of a Keras classifier on its finest
usable convolutional map (:func:`feature_layer`, :func:`cam_side`); :func:`overlay`
draws it over the slice.
"""

from __future__ import annotations

import weakref

import cv2
import numpy as np

from foramlib.inference.errors import ClassifyError

__all__ = ["cam_side", "feature_layer", "grad_cam", "overlay"]


def feature_layer(model, min_side: int = 1):
    """The backbone's last layer with a 4-D (spatial) output at least `min_side` wide.

    With the default, the last spatial layer: for ``tiny_cnn`` ``block4_relu``, for the
    ImageNet backbones the activation after their last convolution (e.g.
    EfficientNetV2's ``top_activation``). A larger `min_side` picks an earlier but
    finer layer (e.g. the last 12×12 map of a 96-px MobileNetV3 instead of its 3×3
    one): Grad-CAM there shows more of the slice's structure.

    >>> from foramlib.learn.models import build_model
    >>> feature_layer(build_model("tiny_cnn", input_size=32, n_classes=2)).name
    'block4_relu'
    """
    from foramlib.learn.models import backbone_of

    net = backbone_of(model)
    for layer in reversed(net.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        kind = type(layer).__name__
        if len(shape) != 4 or kind == "InputLayer" or "Padding" in kind:
            continue  # a padding layer's map has a frame of zeros the slice does not have
        if shape[1] is None or min(shape[1], shape[2]) >= min_side:
            return layer
    raise ClassifyError(
        f"backbone of {model.name!r} has no layer with a spatial output of side >= {min_side}"
    )


def cam_side(input_size: int) -> int:
    """The smallest feature-map side the page's Grad-CAM uses for an input size.

    An eighth of the input (the stride-8 maps of the ImageNet backbones), at least 12:
    on the quick run's 96-px MobileNetV3 the last 3×3 map paints a few blocks, its 6×6
    one blobs that can sit beside the fossil, and its 12×12 one follows the walls and
    chambers that weighed in the answer (compared on test slices of four genera,
    2026-12-06; a display choice, no score depends on it).

    >>> cam_side(96), cam_side(224), cam_side(48)
    (12, 28, 12)
    """
    return max(12, int(input_size) // 8)


_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {side: model}


def grad_cam(model, image, *, class_index: int | None = None, min_side: int = 1) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of a :func:`foramlib.learn.models.build_model` model.

    The gradient of the class score with respect to the backbone's last spatial feature
    map (:func:`feature_layer`), averaged over space, weights the map's channels; the
    rectified sum, scaled to [0, 1], is the heat map. The model's wrapper layers are
    applied around the nested backbone as in the model (gray to RGB, rescaling; the
    augmentation and dropout are inactive at inference).

    Parameters
    ----------
    model : keras.Model
    image : array, shape (S, S) or (S, S, 1)
        The model's input: float in [0, 255] at the model's input size.
    class_index : int, optional
        Class to explain (default: the model's top-1).
    min_side : int
        Explain at the last feature map at least this wide (:func:`feature_layer`).

    Returns
    -------
    ndarray of float32 in [0, 1]
        The heat map at the feature map's resolution (e.g. 3×3 for a 96-px
        EfficientNet input); resize it for display.

    Raises
    ------
    ClassifyError
        On a backend other than TensorFlow, or an input of the wrong size.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ClassifyError(
            f"grad_cam needs the tensorflow backend, not {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    from foramlib.learn.models import backbone_of

    size = int(model.input_shape[1])
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape != (size, size, 1):
        raise ClassifyError(
            f"grad_cam: expected an image of shape {(size, size, 1)}, got {x.shape}"
        )
    cached = _FEATURES.setdefault(model, {})
    features = cached.get(min_side)
    if features is None:
        net = backbone_of(model)
        layer = feature_layer(model, min_side)
        features = keras.Model(net.inputs, [layer.output, net.output])
        cached[min_side] = features
    names = {layer.name for layer in model.layers}
    x = tf.convert_to_tensor(x[None])
    rgb = model.get_layer("gray_to_rgb")([x, x, x])
    if "preprocess" in names:
        rgb = model.get_layer("preprocess")(rgb)
    with tf.GradientTape() as tape:
        fmap, pooled = features(rgb, training=False)
        tape.watch(fmap)
        probs = model.get_layer("predictions")(pooled)
        k = int(tf.argmax(probs[0])) if class_index is None else int(class_index)
        score = probs[:, k]
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(fmap * weights[:, None, None, :], axis=-1))[0].numpy()
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of `heat` (jet colour map) blended over a gray uint8 `image`.

    >>> overlay(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32)).shape
    (8, 8, 3)
    """
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32) / 255.0
    if heat.shape != img.shape:
        heat = cv2.resize(heat.astype(np.float32), img.shape[::-1])
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    out = (1 - alpha) * img[..., None] + alpha * colour
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
