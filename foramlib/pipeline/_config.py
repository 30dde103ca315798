"""The typed configuration every stage module shares.

A stage's configuration is a frozen dataclass. Fields that come from ``params.yaml``
name their dotted key in the field's metadata (``params_field("ensemble.max_k")``); the
other fields are paths with the pipeline's own layout as defaults. So one class says
what a stage reads, where it reads it from and what it writes, and
:meth:`StageConfig.from_params` builds it from a validated ``params.yaml``.

A field may also hold a whole library configuration that reads its own section
(``nested_field(SlicingConfig)``: ``SlicingConfig.from_params`` reads ``slice.*``), so
that a setting shared by several stages has one reader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from foramlib.params import lookup

__all__ = [
    "BackboneStageConfig",
    "StageConfig",
    "backbone_names",
    "nested_field",
    "params_field",
    "lookup",
]

_KEY = "params_key"
_NORMALIZE = "normalize"
_NESTED = "nested"
_SKIP = "skip"


def params_field(key: str, *, normalize: Callable[[Any], Any] | None = None, **kwargs: Any):
    """A dataclass field whose value comes from ``params.yaml[key]`` (dotted key).

    `normalize`, if given, turns the raw value into the field's value (and raises
    ``ValueError`` for a bad one) whenever the configuration is built.

    Examples
    --------
    >>> from dataclasses import dataclass, fields
    >>> @dataclass(frozen=True)
    ... class C(StageConfig):
    ...     max_k: int = params_field("ensemble.max_k", default=4)
    >>> C.params_keys()
    {'max_k': 'ensemble.max_k'}
    """
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[_KEY] = key
    if normalize is not None:
        metadata[_NORMALIZE] = normalize
    return dataclasses.field(metadata=metadata, **kwargs)


def nested_field(config: type, *, skip: tuple[str, ...] = (), **kwargs: Any):
    """A field holding a configuration object that reads itself from ``params.yaml``.

    `config` provides ``params_keys()`` (its field -> dotted key, nested fields as
    ``"a.b"``) and ``from_params(params, skip=...)``; keys in `skip` are neither read
    nor listed (the field keeps its default), for a stage that does not use them.
    The default is ``config()``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from foramlib.dataset.slicing import SlicingConfig
    >>> @dataclass(frozen=True)
    ... class C(StageConfig):
    ...     slicing: SlicingConfig = nested_field(SlicingConfig, skip=("slices_per_taxon",))
    >>> C.params_keys()["slicing.preprocess.size"]
    'slice.size'
    >>> "slicing.slices_per_taxon" in C.params_keys()
    False
    """
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[_NESTED] = config
    metadata[_SKIP] = tuple(skip)
    kwargs.setdefault("default_factory", config)
    return dataclasses.field(metadata=metadata, **kwargs)


def backbone_names(value: Any) -> tuple[str, ...]:
    """``train.backbones`` (a mapping name -> settings, or a list) as a tuple of names.

    Examples
    --------
    >>> backbone_names({"tiny_cnn": {"input_size": 64}})
    ('tiny_cnn',)
    """
    names = tuple(value) if isinstance(value, Mapping | list | tuple) else ()
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"train.backbones = {value!r} is invalid: expected backbone names")
    return names


class StageConfig:
    """Base of the stage configurations (mixin for frozen dataclasses)."""

    #: the stage's name in ``dvc.yaml``
    stage: ClassVar[str] = ""

    @classmethod
    def params_keys(cls) -> dict[str, str]:
        """Field name -> the dotted ``params.yaml`` key it comes from.

        A nested configuration's keys appear under ``"<field>.<its field>"``.
        """
        keys = {}
        for f in dataclasses.fields(cls):
            if _KEY in f.metadata:
                keys[f.name] = f.metadata[_KEY]
            elif _NESTED in f.metadata:
                inner = f.metadata[_NESTED].params_keys()
                skip = f.metadata[_SKIP]
                keys.update({f"{f.name}.{k}": v for k, v in inner.items() if k not in skip})
        return keys

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if _NORMALIZE in f.metadata:
                object.__setattr__(self, f.name, f.metadata[_NORMALIZE](getattr(self, f.name)))

    @property
    def foreach_key(self) -> str | None:
        """The ``foreach`` key of a stage run once per item (``train@<key>``), else None.

        ``params_keys`` of such a stage may hold ``{key}``, standing for it.
        """
        return None

    @classmethod
    def each_from_params(cls, params: Mapping) -> list:
        """The stage's configurations: one, or one per item of a ``foreach`` stage."""
        return [cls.from_params(params)]

    @classmethod
    def from_params(cls, params: Mapping, **overrides: Any):
        """Build the stage's configuration from a (validated) ``params.yaml`` mapping.

        `overrides` replace fields, typically the paths when a stage runs outside the
        repository layout.
        """
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                continue
            if _KEY in f.metadata:
                values[f.name] = lookup(params, f.metadata[_KEY])
            elif _NESTED in f.metadata:
                values[f.name] = f.metadata[_NESTED].from_params(params, skip=f.metadata[_SKIP])
        return cls(**values, **overrides)


class BackboneStageConfig(StageConfig):
    """Base of a stage run once per key of ``train.backbones`` (a DVC ``foreach``).

    Its dataclass has a ``backbone`` field, and ``params_keys`` may hold ``{key}``,
    standing for it (``train.backbones.{key}.input_size``).
    """

    @property
    def foreach_key(self) -> str:
        return self.backbone

    @classmethod
    def each_from_params(cls, params: Mapping) -> list:
        """One configuration per key of ``train.backbones``."""
        return [
            cls.from_params(params, backbone=b)
            for b in backbone_names(lookup(params, "train.backbones"))
        ]

    @classmethod
    def check_keys(cls, params: Mapping, backbone: str) -> None:
        """Raise ``KeyError`` naming the first key of the stage missing from `params`."""
        for key in cls.params_keys().values():
            lookup(params, key.format(key=backbone))

    @classmethod
    def _backbone_of(cls, overrides: Mapping) -> str:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
        if "backbone" not in overrides:
            raise TypeError(f"{cls.__name__}.from_params needs backbone=<name>")
        return overrides["backbone"]
