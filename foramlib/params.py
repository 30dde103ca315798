"""Reading settings out of a ``params.yaml`` mapping by dotted key.

The one reader of keys such as ``"slice.size"``, used by the stage configurations
(:mod:`foramlib.pipeline`) and by the library configurations that read their own
section (:meth:`foramlib.dataset.slicing.SlicingConfig.from_params`). Kept apart from
:mod:`foramlib.config` (the schema and the profiles), so that a stage depending on
this reader does not rerun whenever a parameter is added to the schema.

Examples
--------
>>> lookup({"slice": {"size": 96}}, "slice.size")
96
>>> read_keys({"slice": {"size": 96, "margin": 0.1}}, {"size": "slice.size"})
{'size': 96}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BACKBONE_SETTINGS", "lookup", "read_keys"]

#: Training settings a backbone may give itself in ``train.backbones.<name>`` (beside
#: its ``input_size``): they replace ``train.<key>`` for that backbone's stage alone, so
#: a cheap backbone can train shorter than the main one.
BACKBONE_SETTINGS = (
    "phase1_epochs",
    "phase2_epochs",
    "restart_epochs",
    "max_steps_per_epoch",
    "phase1_lr",
    "phase2_lr",
    "patience",
)


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


def read_keys(params: Mapping, keys: Mapping[str, str], skip: Iterable[str] = ()) -> dict:
    """``{name: lookup(params, key)}`` for each ``name -> key`` of `keys` not in `skip`.

    Examples
    --------
    >>> read_keys({"a": {"b": 1, "c": 2}}, {"b": "a.b", "c": "a.c"}, skip=["c"])
    {'b': 1}
    """
    skip = set(skip)
    return {name: lookup(params, key) for name, key in keys.items() if name not in skip}
