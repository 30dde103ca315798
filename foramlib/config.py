"""Load and validate ``params.yaml``, and switch between the kept profiles.

``params.yaml`` is the single source of truth of the pipeline. Two complete profiles
live in ``profiles/``: ``quick`` (the default: a 2-core CPU run of the whole pipeline)
and ``paper`` (the paper's settings, for a GPU and real data). ``params.yaml`` is a
copy of one of them, made by :func:`use_profile` (``make profile PROFILE=paper``).

Examples
--------
>>> params = validate_params({"profile": "quick", "seed": 1,
...     "data": {"source": "virtual", "raw_dir": "data/virtual",
...              "manifest": "data/virtual/manifest.csv"},
...     "virtual": {"preset": "tiny", "shape": 48, "supersample": 1, "n_jobs": 1},
...     "curate": {"min_models": 2}})
>>> params["virtual"]["shape"]
48
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from foramlib.atomic import write_text

__all__ = [
    "ParamsError",
    "SCHEMA",
    "load_params",
    "validate_params",
    "use_profile",
    "available_profiles",
    "get",
]


class ParamsError(ValueError):
    """A parameter file or value that the pipeline cannot use."""


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    check.__doc__ = f"an integer >= {lo}"
    return check


def _one_of(*choices: str) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return v in choices

    check.__doc__ = f"one of {list(choices)}"
    return check


def _nonempty_str(v: Any) -> bool:
    """a non-empty string"""
    return isinstance(v, str) and v.strip() != ""


_positive_int.__doc__ = "an integer >= 1"

# dotted key -> (check, meaning). Later stages add their keys here.
SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "profile": (_one_of("quick", "paper", "custom"), "name of the profile these values come from"),
    "seed": (_int_at_least(0), "master random seed of the whole pipeline"),
    "data.source": (
        _one_of("virtual", "manifest"),
        "virtual: generate the embedded collection; manifest: your own scans",
    ),
    "data.raw_dir": (_nonempty_str, "folder holding the volumes the manifest lists"),
    "data.manifest": (_nonempty_str, "manifest CSV (file, specimen_id, species, ...)"),
    "virtual.preset": (_one_of("paper", "tiny"), "which virtual collection to generate"),
    "virtual.shape": (_int_at_least(16), "edge length of each virtual volume in voxels"),
    "virtual.supersample": (_positive_int, "build resolution factor for partial volume"),
    "virtual.n_jobs": (_positive_int, "worker processes for the generator"),
    "curate.min_models": (_positive_int, "keep taxa with at least this many specimens"),
}


def get(params: dict, dotted: str) -> Any:
    """Return ``params[a][b]`` for ``dotted == "a.b"``; KeyError names the full key."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def validate_params(params: Any, source: str = "params") -> dict:
    """Check every known key; report all problems at once.

    Raises
    ------
    ParamsError
        Listing missing keys, bad values (echoed with what was expected) and
        unknown keys (usually typos).
    """
    if not isinstance(params, dict):
        raise ParamsError(
            f"{source}: expected a mapping of parameters, got {type(params).__name__}"
        )
    flat = _flatten(params)
    problems = []
    for key, (check, meaning) in SCHEMA.items():
        if key not in flat:
            problems.append(f"missing key {key!r} ({meaning})")
        elif not check(flat[key]):
            problems.append(f"{key} = {flat[key]!r} is invalid: expected {check.__doc__}")
    known_prefixes = {k.rsplit(".", 1)[0] for k in SCHEMA if "." in k}
    for key in flat:
        if key not in SCHEMA and key.rsplit(".", 1)[0] in known_prefixes | {key}:
            problems.append(f"unknown key {key!r} (a typo?)")
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems))
    return params


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read and validate a parameter file.

    Raises
    ------
    ParamsError
        If the file is missing, is not valid YAML, or fails :func:`validate_params`.
    """
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    return validate_params(params, source=str(path))


def available_profiles(profiles_dir: str | os.PathLike = "profiles") -> list[str]:
    """Names of the profiles kept in `profiles_dir` (``<name>.yaml``)."""
    return sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))


def use_profile(
    name: str,
    params_path: str | os.PathLike = "params.yaml",
    profiles_dir: str | os.PathLike = "profiles",
) -> Path:
    """Make `name` the active profile: validate it, then copy it onto `params_path`.

    The copy is atomic and byte-for-byte, comments included, so ``params.yaml`` keeps
    the profile's documentation.
    """
    names = available_profiles(profiles_dir)
    if name not in names:
        raise ParamsError(f"unknown profile {name!r}; available in {profiles_dir}: {names}")
    src = Path(profiles_dir) / f"{name}.yaml"
    load_params(src)
    return write_text(params_path, src.read_text(encoding="utf-8"))
