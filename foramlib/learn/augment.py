"""Data augmentation of the paper (§2.3), in backend-agnostic Keras 3.

Two levels:

* **Per image, inside the model** (:func:`augmentation_layers`): random rotation (±45°),
  scaling (0.8–1.2×), horizontal flips, brightness and contrast jitter. Keras' random
  image layers only act while training, so the same model serves inference unchanged.
* **Per batch, in the input pipeline** (:func:`mix_batch`): CutMix and MixUp. They need
  the labels, so they cannot sit inside the model; they turn one-hot labels into soft
  labels.

Images are float32 in [0, 255], shape ``(H, W, C)`` (``(N, H, W, C)`` for batches).

Examples
--------
>>> cfg = AugmentConfig(rotation_deg=30, mix_probability=0.0)
>>> AugmentConfig.from_dict(cfg.as_dict()) == cfg
True
>>> [layer.__class__.__name__ for layer in augmentation_layers(cfg, seed=0).layers]
['RandomRotation', 'RandomZoom', 'RandomFlip', 'RandomBrightness', 'RandomContrast']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["AugmentConfig", "AugmentError", "augmentation_layers", "mix_batch"]


class AugmentError(ValueError):
    """An augmentation setting or input that cannot be used."""


def _check_number(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    if ok:
        v = float(value)
        ok = (
            math.isfinite(v)
            and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi)
        )
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise AugmentError(f"{name} = {value!r} is invalid: expected a number in {interval}")
    return float(value)


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of the paper's augmentation (§2.3); the values mirror ``train.augment``.

    Parameters
    ----------
    enabled : bool
        Master switch: ``False`` turns off both the in-model layers and the batch mixing.
    rotation_deg : float
        Maximum random rotation in degrees, in [0, 180] (paper: ±45°).
    zoom : float
        Random scaling by a factor in ``[1 - zoom, 1 + zoom]``, zoom in [0, 1) (paper: 0.2).
    flip : bool
        Random horizontal flips.
    brightness, contrast : float
        Jitter strength in [0, 1] (Keras ``RandomBrightness`` / ``RandomContrast`` factor).
    cutmix, mixup : bool
        Which batch-level mixers :func:`mix_batch` may use.
    mix_alpha : float
        MixUp's Beta(α, α) parameter, > 0 (usual value 0.2).
    cutmix_alpha : float
        CutMix's Beta(α, α) parameter, in (0, 1] (Keras' ``CutMix`` bounds it to 1;
        1.0, the CutMix paper's value, draws the pasted area uniformly).
    mix_probability : float
        Share of batches that :func:`mix_batch` mixes, in [0, 1].
    stretch : float
        Random change of the aspect ratio: the width alone is scaled by a factor in
        ``[1 - stretch, 1 + stretch]`` after the rotation, so the stretch falls along a
        random direction of the section; in [0, 1) (0: off, not in the paper). It
        imitates the spread of proportions between specimens of one genus.
    blur : float
        Maximum standard deviation in pixels of a random Gaussian blur, >= 0 (0: off,
        not in the paper); imitates scans of different sharpness.
    noise : float
        Standard deviation of additive Gaussian noise as a fraction of the grey range
        [0, 255], in [0, 1] (0: off, not in the paper; 0.02 is about 5 grey levels);
        imitates scans of different noise levels.

    Examples
    --------
    >>> AugmentConfig(zoom=1.5)
    Traceback (most recent call last):
    ...
    foramlib.learn.augment.AugmentError: zoom = 1.5 is invalid: expected a number in [0, 1)
    """

    enabled: bool = True
    rotation_deg: float = 45.0
    zoom: float = 0.2
    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    cutmix: bool = True
    mixup: bool = True
    mix_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mix_probability: float = 0.5
    stretch: float = 0.0
    blur: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("enabled", "flip", "cutmix", "mixup"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise AugmentError(f"{name} = {value!r} is invalid: expected true or false")
            object.__setattr__(self, name, bool(value))
        checks = {
            "rotation_deg": dict(lo=0, hi=180),
            "zoom": dict(lo=0, hi=1, hi_open=True),
            "brightness": dict(lo=0, hi=1),
            "contrast": dict(lo=0, hi=1),
            "mix_alpha": dict(lo=0, hi=math.inf, lo_open=True, hi_open=True),
            "cutmix_alpha": dict(lo=0, hi=1, lo_open=True),
            "mix_probability": dict(lo=0, hi=1),
            "stretch": dict(lo=0, hi=1, hi_open=True),
            "blur": dict(lo=0, hi=8),
            "noise": dict(lo=0, hi=1),
        }
        for name, bounds in checks.items():
            object.__setattr__(self, name, _check_number(name, getattr(self, name), **bounds))

    def as_dict(self) -> dict[str, Any]:
        """All settings as a plain dict (YAML/JSON friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AugmentConfig:
        """Build from a mapping such as ``params["train"]["augment"]``.

        Missing keys take their defaults; unknown keys are an error.

        Examples
        --------
        >>> AugmentConfig.from_dict({"enabled": False}).enabled
        False
        """
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AugmentError(f"unknown augmentation setting(s) {unknown}; valid: {sorted(known)}")
        return cls(**values)

    @property
    def mixers(self) -> tuple[str, ...]:
        """The batch mixers :func:`mix_batch` may pick from (empty when disabled)."""
        if not self.enabled:
            return ()
        return tuple(n for n, on in (("cutmix", self.cutmix), ("mixup", self.mixup)) if on)


def augmentation_layers(config: AugmentConfig, seed: int | None = None):
    """The per-image augmentation as a ``keras.Sequential`` named ``"augment"``.

    Only enabled transforms are included (a disabled config gives an empty Sequential;
    :func:`foramlib.learn.models.build_model` then leaves it out). Every layer is inactive at
    inference (``training=False``), by Keras design. Empty borders left by rotation and
    zoom are filled with 0 (the background of a segmented slice).

    Parameters
    ----------
    config : AugmentConfig
    seed : int, optional
        Base seed; layer *i* gets ``seed + i``.

    Returns
    -------
    keras.Sequential

    Examples
    --------
    >>> aug = augmentation_layers(AugmentConfig(flip=False, brightness=0, contrast=0))
    >>> aug.name, [layer.name for layer in aug.layers]
    ('augment', ['random_rotation', 'random_zoom'])
    """
    import keras

    if not isinstance(config, AugmentConfig):
        raise AugmentError(f"config = {config!r} is invalid: expected an AugmentConfig")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise AugmentError(f"seed = {seed!r} is invalid: expected an integer or None")

    def layer_seed(i: int) -> int | None:
        return None if seed is None else int(seed) + i

    layers = []
    if config.enabled:
        if config.rotation_deg > 0:
            layers.append(
                keras.layers.RandomRotation(
                    config.rotation_deg / 360.0,
                    fill_mode="constant",
                    fill_value=0.0,
                    seed=layer_seed(0),
                    name="random_rotation",
                )
            )
        if config.zoom > 0:
            layers.append(
                keras.layers.RandomZoom(
                    (-config.zoom, config.zoom),
                    fill_mode="constant",
                    fill_value=0.0,
                    seed=layer_seed(1),
                    name="random_zoom",
                )
            )
        if config.flip:
            layers.append(
                keras.layers.RandomFlip("horizontal", seed=layer_seed(2), name="random_flip")
            )
        if config.brightness > 0:
            layers.append(
                keras.layers.RandomBrightness(
                    config.brightness,
                    value_range=(0, 255),
                    seed=layer_seed(3),
                    name="random_brightness",
                )
            )
        if config.contrast > 0:
            layers.append(
                keras.layers.RandomContrast(
                    config.contrast,
                    value_range=(0, 255),
                    seed=layer_seed(4),
                    name="random_contrast",
                )
            )
        if config.stretch > 0:
            layers.append(
                keras.layers.RandomZoom(
                    (0.0, 0.0),
                    (-config.stretch, config.stretch),
                    fill_mode="constant",
                    fill_value=0.0,
                    seed=layer_seed(5),
                    name="random_stretch",
                )
            )
        if config.blur > 0:
            layers.append(
                keras.layers.RandomGaussianBlur(
                    factor=1.0,
                    kernel_size=2 * math.ceil(2 * config.blur) + 1,
                    sigma=(0.01, config.blur),
                    value_range=(0, 255),
                    seed=layer_seed(6),
                    name="random_blur",
                )
            )
        if config.noise > 0:
            # Keras bounds GaussianNoise's sd to [0, 1]: add it on the [0, 1] scale
            layers += [
                keras.layers.Rescaling(1 / 255, name="noise_to_unit"),
                keras.layers.GaussianNoise(config.noise, seed=layer_seed(7), name="noise"),
                keras.layers.Rescaling(255, name="noise_from_unit"),
            ]
    return keras.Sequential(layers, name="augment")


def _check_batch(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise AugmentError(
            f"images.shape = {images.shape} is invalid: expected a batch (N, H, W, C)"
        )
    if labels.ndim != 2 or labels.shape[0] != images.shape[0] or labels.shape[1] < 2:
        raise AugmentError(
            f"labels.shape = {labels.shape} is invalid: expected one-hot labels "
            f"({images.shape[0]}, n_classes) matching the images"
        )
    if not np.issubdtype(labels.dtype, np.floating):
        raise AugmentError(
            f"labels.dtype = {labels.dtype} is invalid: CutMix/MixUp need float one-hot "
            "labels (e.g. keras.utils.to_categorical(y).astype('float32'))"
        )
    sums = labels.sum(axis=1)
    if labels.min() < 0 or labels.max() > 1 or not np.allclose(sums, 1.0, atol=1e-3):
        raise AugmentError(
            f"labels are invalid: expected one-hot rows in [0, 1] summing to 1, "
            f"got row sums {sums[:8].tolist()}"
        )
    return images.astype(np.float32, copy=False), labels.astype(np.float32, copy=False)


def mix_batch(
    images: Any, labels: Any, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply CutMix or MixUp to a batch, with probability ``config.mix_probability``.

    With that probability one of the enabled mixers (chosen by ``rng``) mixes the batch
    (Keras ``CutMix`` / ``MixUp``, seeded from ``rng``); otherwise the batch comes back
    unchanged. The result is a deterministic function of the inputs and the state of
    ``rng``.

    Parameters
    ----------
    images : array_like, shape (N, H, W, C)
        Float images in [0, 255].
    labels : array_like, shape (N, n_classes)
        Float one-hot (or already soft) labels; integer class ids are refused, because
        the Keras layers would silently mangle them.
    config : AugmentConfig
    rng : numpy.random.Generator

    Returns
    -------
    images, soft_labels : numpy.ndarray
        float32 arrays of the input shapes; label rows still sum to 1.

    Examples
    --------
    >>> x = np.zeros((4, 8, 8, 1), np.float32)
    >>> y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    >>> xm, ym = mix_batch(x, y, AugmentConfig(mix_probability=1.0), np.random.default_rng(0))
    >>> xm.shape, ym.shape, bool(np.allclose(ym.sum(axis=1), 1))
    ((4, 8, 8, 1), (4, 2), True)
    """
    if not isinstance(config, AugmentConfig):
        raise AugmentError(f"config = {config!r} is invalid: expected an AugmentConfig")
    if not isinstance(rng, np.random.Generator):
        raise AugmentError(f"rng = {rng!r} is invalid: expected a numpy.random.Generator")
    images, labels = _check_batch(images, labels)
    mixers = config.mixers
    if not mixers or config.mix_probability == 0 or rng.random() >= config.mix_probability:
        return images, labels

    import keras

    which = mixers[int(rng.integers(len(mixers)))]
    seed = int(rng.integers(0, 2**31 - 1))
    if which == "cutmix":
        alpha = config.cutmix_alpha
        layer = keras.layers.CutMix(factor=(alpha, alpha), seed=seed, dtype="float32")
    else:
        layer = keras.layers.MixUp(alpha=config.mix_alpha, seed=seed, dtype="float32")
    out = layer({"images": images, "labels": labels}, training=True)
    mixed_images = keras.ops.convert_to_numpy(out["images"]).astype(np.float32, copy=False)
    mixed_labels = keras.ops.convert_to_numpy(out["labels"]).astype(np.float32, copy=False)
    return mixed_images, mixed_labels
