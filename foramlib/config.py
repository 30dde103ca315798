"""Load and validate ``params.yaml``, and switch between the kept profiles.

``params.yaml`` is the single source of truth of the pipeline. Two complete profiles
live in ``profiles/``: ``quick`` (the default: a 2-core CPU run of the whole pipeline)
and ``paper`` (the paper's settings, for a GPU and real data). ``params.yaml`` is a
copy of one of them, made by :func:`use_profile` (``make profile PROFILE=paper``).

Examples
--------
Every problem is reported at once, naming the key and echoing the value:

>>> try:
...     validate_params({"seed": -1, "curate": {"min_models": 4}})
... except ParamsError as err:
...     msg = str(err)
>>> "seed = -1 is invalid: expected an integer >= 0" in msg, "missing key 'data.source'" in msg
(True, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from foramlib.io.atomic import write_text
from foramlib.params import BACKBONE_SETTINGS

__all__ = [
    "ParamsError",
    "SCHEMA",
    "load_params",
    "validate_params",
    "use_profile",
    "available_profiles",
]


class ParamsError(ValueError):
    """A parameter file or value that the pipeline cannot use.

    ``problems`` lists each problem on its own (the message joins them).
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    check.__doc__ = f"an integer >= {lo}"
    return check


def _tta_views(v: Any) -> bool:
    from foramlib.learn.tta import VIEW_COUNTS

    return not isinstance(v, bool) and v in VIEW_COUNTS


_tta_views.__doc__ = "one of [1, 2, 4, 8]"


def _one_of(*choices: str) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return v in choices

    check.__doc__ = f"one of {list(choices)}"
    return check


def _number_in(lo: float, hi: float, *, lo_open=False, hi_open=False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    check.__doc__ = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return check


def _positive_number(v: Any) -> bool:
    """a number > 0"""
    return not isinstance(v, bool) and isinstance(v, int | float) and v == v and 0 < v < math.inf


def _bool(v: Any) -> bool:
    """true or false"""
    return isinstance(v, bool)


def _dense_factor(v: Any) -> bool:
    """a number > 1, or null to keep dense inclusions"""
    return v is None or (not isinstance(v, bool) and isinstance(v, int | float) and v > 1)


def _fractions(v: Any) -> bool:
    """three positive numbers (train, val, test) summing to 1"""
    return (
        isinstance(v, list)
        and len(v) == 3
        and all(not isinstance(x, bool) and isinstance(x, int | float) and x > 0 for x in v)
        and abs(sum(v) - 1.0) < 1e-6
    )


def _backbones(v: Any) -> bool:
    """a mapping of backbone name -> {input_size: integer >= 32[, training settings]}"""
    return (
        isinstance(v, dict)
        and len(v) >= 1
        and all(
            isinstance(k, str)
            and isinstance(c, dict)
            and "input_size" in c
            and _int_at_least(32)(c["input_size"])
            for k, c in v.items()
        )
    )


def _backbone_setting_problems(backbones: Any) -> list[str]:
    """Bad or unknown keys among the backbones' own training settings."""
    if not isinstance(backbones, dict):
        return []  # the train.backbones check reports it
    problems = []
    for name, settings in backbones.items():
        if not isinstance(settings, dict):
            continue
        for key, value in settings.items():
            full = f"train.backbones.{name}.{key}"
            if key == "input_size":
                continue
            if key not in BACKBONE_SETTINGS:
                problems.append(
                    f"unknown key {full!r} (a backbone may set input_size and "
                    f"{', '.join(BACKBONE_SETTINGS)})"
                )
            elif not (check := SCHEMA[f"train.{key}"][0])(value):
                problems.append(f"{full} = {value!r} is invalid: expected {check.__doc__}")
    return problems


def _optional_positive_int(v: Any) -> bool:
    """an integer >= 1, or null"""
    return v is None or _positive_int(v)


def _optional_str(v: Any) -> bool:
    """a name, or null"""
    return v is None or (isinstance(v, str) and v.strip() != "")


def _weights(v: Any) -> bool:
    """imagenet, null, or the path of a local weights file ({backbone} for its name)"""
    return v is None or (isinstance(v, str) and v.strip() != "")


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
    "data.max_side": (
        _int_at_least(64),
        "a volume with a larger side is averaged by blocks as it is read (curate, slice, "
        "index), to the coarsest size still this wide: a 2048^3 scan fits in memory",
    ),
    "virtual.preset": (_one_of("paper", "tiny"), "which virtual collection to generate"),
    "virtual.shape": (_int_at_least(16), "edge length of each virtual volume in voxels"),
    "virtual.supersample": (_positive_int, "build resolution factor for partial volume"),
    "virtual.n_jobs": (_positive_int, "worker processes for the generator"),
    "curate.min_models": (_positive_int, "keep taxa with at least this many specimens"),
    "slice.slices_per_taxon": (_positive_int, "candidate sections per taxon, shared by its scans"),
    "slice.offsets_per_orientation": (_positive_int, "parallel planes per orientation"),
    "slice.jitter_deg": (_number_in(0, 45), "jitter of the axis-aligned orientations"),
    "slice.size": (_int_at_least(32), "edge of a stored slice in pixels (paper: 224)"),
    "slice.sensitivity": (
        _number_in(0, 1, lo_open=True, hi_open=True),
        "segmentation sensitivity; 0.5 = Otsu",
    ),
    "slice.min_fraction": (_number_in(0, 1, hi_open=True), "drop sections with less fossil area"),
    "slice.margin": (_number_in(0, 1), "border around the silhouette's box"),
    "slice.clahe": (_bool, "contrast-limited adaptive histogram equalisation"),
    "slice.denoise": (_bool, "total-variation denoising"),
    "slice.sharpen": (_bool, "unsharp masking"),
    "slice.smooth_sigma": (_number_in(0, 5), "3D Gaussian denoising before cutting (voxels)"),
    "slice.dense_factor": (_dense_factor, "remove voxels this much denser than the fossil"),
    "slice.n_jobs": (_positive_int, "worker processes for slicing"),
    "slice.train_factor": (
        _positive_int,
        "training specimens are cut this many times as densely (a reserve the split adds "
        "to training; validation and test keep slices_per_taxon)",
    ),
    "split.fractions": (_fractions, "target share of slices in train, val, test"),
    "split.max_exhaustive": (_positive_int, "largest joint search space searched exhaustively"),
    "split.restarts": (_positive_int, "starts of the coordinate-descent fallback"),
    "pretrain.corpus.n_taxa": (_int_at_least(2), "pseudo-taxa of the pretraining corpus"),
    "pretrain.corpus.specimens_per_taxon": (
        _int_at_least(2),
        "specimens per pseudo-taxon (the last one held out)",
    ),
    "pretrain.corpus.slices_per_specimen": (_positive_int, "candidate sections per specimen"),
    "pretrain.corpus.shape": (_int_at_least(32), "edge of a corpus volume in voxels"),
    "pretrain.corpus.supersample": (_positive_int, "build resolution factor of the corpus"),
    "pretrain.corpus.n_jobs": (_positive_int, "worker processes for the corpus"),
    "pretrain.epochs": (_positive_int, "pretraining epochs per backbone"),
    "pretrain.lr": (_number_in(0, 1, lo_open=True), "pretraining peak learning rate"),
    "pretrain.max_steps_per_epoch": (_optional_positive_int, "cap on pretraining steps"),
    "train.backbones": (
        _backbones,
        "one train@<name> stage per backbone, with its input size (and optionally its "
        "own epochs, steps, learning rates or patience)",
    ),
    "train.weights": (
        _weights,
        "imagenet (paper; needs network), null, or a local file, e.g. the pretrain stage's",
    ),
    "train.batch_size": (_positive_int, "images per batch (paper: 32)"),
    "train.dropout": (_number_in(0, 1, hi_open=True), "dropout before the classifier"),
    "train.phase1_epochs": (_int_at_least(0), "epochs with the backbone frozen (paper: 10)"),
    "train.phase1_lr": (_number_in(0, 1, lo_open=True), "phase-1 learning rate (paper: 1e-4)"),
    "train.phase2_epochs": (_int_at_least(0), "epochs of full fine-tuning (paper: 20)"),
    "train.phase2_lr": (_number_in(0, 1, lo_open=True), "phase-2 learning rate (paper: 5e-5)"),
    "train.restart_epochs": (_positive_int, "period of the warm restarts in phase 2"),
    "train.weight_decay": (_number_in(0, 1), "AdamW weight decay"),
    "train.label_smoothing": (_number_in(0, 1, hi_open=True), "label smoothing (paper: 0.1)"),
    "train.patience": (_positive_int, "early-stopping patience on val loss (paper: 5)"),
    "train.early_stopping": (
        _one_of("epoch", "cycle_end"),
        "stop after any epoch (paper) or only at the end of a learning-rate cycle",
    ),
    "train.precision": (
        _one_of("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        "auto: mixed_float16 on GPU, float32 on CPU",
    ),
    "train.class_weights": (_bool, "weight the loss by inverse class frequency"),
    "train.distribution": (_one_of("none", "data_parallel"), "data-parallel over devices"),
    "train.workers": (_positive_int, "input-pipeline workers"),
    "train.max_steps_per_epoch": (_optional_positive_int, "cap on steps per epoch (null: all)"),
    "train.tta_views": (_tta_views, "views averaged at prediction (1: none; 8: all symmetries)"),
    "train.augment.enabled": (_bool, "on-device augmentation"),
    "train.augment.rotation_deg": (_number_in(0, 180), "random rotation (paper: ±45°)"),
    "train.augment.zoom": (_number_in(0, 1, hi_open=True), "random scaling (paper: 0.8–1.2)"),
    "train.augment.flip": (_bool, "random horizontal flips"),
    "train.augment.brightness": (_number_in(0, 1), "brightness jitter"),
    "train.augment.contrast": (_number_in(0, 1), "contrast jitter"),
    "train.augment.cutmix": (_bool, "CutMix at the batch level"),
    "train.augment.mixup": (_bool, "MixUp at the batch level"),
    "train.augment.mix_alpha": (_positive_number, "MixUp's Beta(α, α) parameter (usual: 0.2)"),
    "train.augment.cutmix_alpha": (
        _number_in(0, 1, lo_open=True),
        "CutMix's Beta(α, α) parameter (1: the pasted area is uniform)",
    ),
    "train.augment.mix_probability": (_number_in(0, 1), "share of batches mixed"),
    "train.augment.stretch": (_number_in(0, 1, hi_open=True), "random aspect-ratio change"),
    "train.augment.blur": (_number_in(0, 8), "maximum random blur sigma (px)"),
    "train.augment.noise": (_number_in(0, 1), "Gaussian noise sd (share of the grey range)"),
    "ensemble.max_k": (_int_at_least(2), "Top-2 ... Top-max_k voting of the best backbones"),
    "ensemble.mode": (_one_of("soft", "majority"), "soft (mean probability) or majority vote"),
    "ensemble.main": (_optional_str, "PatchEnsemble main model (null: best on validation)"),
    "ensemble.n_weak": (_positive_int, "weak classes: lowest validation F1 of the main model"),
    "match.n_orientations": (_positive_int, "plane normals per specimen in the 3D match index"),
    "match.n_offsets": (_positive_int, "parallel planes per normal in the match index"),
    "match.size": (_int_at_least(16), "edge of the index's stored sections in pixels"),
    "match.descriptor_size": (_int_at_least(8), "side of the coarse-stage silhouette"),
    "match_check.queries": (_positive_int, "held-out sections matched to set the match limit"),
    "match_check.keep": (_number_in(0, 1, lo_open=True), "share of them the limit keeps"),
}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in SCHEMA:  # a schema key may hold a mapping
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
    problems += _backbone_setting_problems(flat.get("train.backbones"))
    known_prefixes = {k.rsplit(".", 1)[0] for k in SCHEMA if "." in k}
    for key in flat:
        if key not in SCHEMA and key.rsplit(".", 1)[0] in known_prefixes | {key}:
            problems.append(f"unknown key {key!r} (a typo?)")
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems), [f"{source}: {p}" for p in problems])
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
