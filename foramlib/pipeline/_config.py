"""The typed configuration every stage module shares.

A stage's configuration is a frozen dataclass. Fields that come from ``params.yaml``
name their dotted key in the field's metadata (``params_field("ensemble.max_k")``); the
other fields are paths with the pipeline's own layout as defaults. So one class says
what a stage reads, where it reads it from and what it writes, and
:meth:`StageConfig.from_params` builds it from a validated ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

__all__ = ["StageConfig", "backbone_names", "params_field", "lookup"]

_KEY = "params_key"
_NORMALIZE = "normalize"


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


def lookup(params: Mapping, dotted: str) -> Any:
    """``params["a"]["b"]`` for ``"a.b"``; a clear error names the missing key.

    Examples
    --------
    >>> lookup({"a": {"b": 1}}, "a.b")
    1
    >>> lookup({"a": {}}, "a.b")
    Traceback (most recent call last):
    ...
    KeyError: "params.yaml has no key 'a.b'"
    """
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"params.yaml has no key {dotted!r}")
        node = node[part]
    return node


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
        """Field name -> the dotted ``params.yaml`` key it comes from."""
        return {f.name: f.metadata[_KEY] for f in dataclasses.fields(cls) if _KEY in f.metadata}

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
        values = {
            name: lookup(params, key)
            for name, key in cls.params_keys().items()
            if name not in overrides
        }
        return cls(**values, **overrides)
