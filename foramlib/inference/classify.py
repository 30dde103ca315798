"""Classifying one uploaded section with the saved ensemble (the dashboard's engine).

Everything the dashboard's classification page does, without widgets:

* :func:`foramlib.io.uploads.decode_upload` (not here) turns uploaded bytes into an
  image or a volume from which one section is picked;
* :func:`prepare` runs the SAME preprocessing as the slice stage
  (:func:`foramlib.dataset.preprocess.preprocess_slice`), with the store's recorded settings
  (``data/slices/slicing.json``, else ``params.yaml`` ``slice.*``) as defaults, after an
  optional manual crop;
* :class:`Classifier` loads the ensemble named by ``results/metrics.json`` ("final"),
  its member models and class names, and predicts: members see the cleaned slice
  resized exactly as in training (:func:`foramlib.dataset.preprocess.resize_slice`, float32 in
  [0, 255]), their probabilities combined by the recorded
  :class:`~foramlib.evaluation.ensemble.EnsembleSpec`;
* the confidence under which a prediction is flagged *uncertain* is set on VALIDATION
  predictions only (:mod:`foramlib.inference.calibration`);
* :meth:`Classifier.grad_cam` shows which part of the slice drove the main model's
  decision (:mod:`foramlib.inference.gradcam`).

Examples
--------
>>> import numpy as np
>>> decoded = np.zeros((64, 64), np.uint16); decoded[16:48, 20:44] = 40000
>>> clean, info = prepare(decoded, PrepareOptions(), PreprocessConfig(size=32))
>>> clean.shape, clean.dtype.name, info["source"]
((32, 32), 'uint8', 'preprocessed')
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from foramlib.dataset.preprocess import (
    PreprocessConfig,
    PreprocessError,
    preprocess_slice,
    resize_slice,
    shrink_to_fit,
)
from foramlib.inference.calibration import (
    DEFAULT_MIN_SUPPORT,
    DEFAULT_TARGET_PRECISION,
    Calibration,
    calibrate_spec,
)
from foramlib.inference.errors import RUN_FIRST, ArtefactError, ClassifyError
from foramlib.inference.genus_check import (
    GenusCheck,
    GenusCheckError,
    GenusVerdict,
    embed,
    feature_model,
    file_digest,
    main_member,
)
from foramlib.inference.gradcam import cam_side, grad_cam
from foramlib.inference.section_check import SectionCheck, SectionCheckError, Verdict, colourfulness
from foramlib.learn.tta import check_views, predict_views

__all__ = [
    "PrepareOptions",
    "preprocess_defaults",
    "stored_slice",
    "prepare",
    "prepare_upload",
    "Prediction",
    "Classifier",
    "missing_artefacts",
    "load_section_check",
    "section_refusal",
    "SECTION_CHECK",
    "member_tta_views",
]

MAX_SIDE = 2048
DEFAULT_CONFIG = PreprocessConfig()


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class PrepareOptions:
    """The user's preprocessing choices on top of the training settings.

    Parameters
    ----------
    sensitivity : float, optional
        Segmentation sensitivity in (0, 1); None keeps the training value.
    clahe, denoise, sharpen : bool, optional
        Contrast enhancement, denoising, sharpening; None keeps the training value.
    crop : (top, bottom, left, right)
        Manual crop before the automatic one, as fractions of the height and width
        (``(0, 1, 0, 1)``: the whole image).
    """

    sensitivity: float | None = None
    clahe: bool | None = None
    denoise: bool | None = None
    sharpen: bool | None = None
    crop: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        crop = tuple(float(c) for c in self.crop)
        if (
            len(crop) != 4
            or not all(math.isfinite(c) for c in crop)
            or not (0.0 <= crop[0] < crop[1] <= 1.0 and 0.0 <= crop[2] < crop[3] <= 1.0)
        ):
            raise ClassifyError(
                f"crop must be (top, bottom, left, right) fractions with 0 <= top < bottom "
                f"<= 1 and 0 <= left < right <= 1, got {self.crop!r}"
            )
        object.__setattr__(self, "crop", crop)

    def config(self, base: PreprocessConfig) -> PreprocessConfig:
        """`base` with the options that are set."""
        changes = {
            k: v
            for k, v in dict(
                sensitivity=self.sensitivity,
                clahe=self.clahe,
                denoise=self.denoise,
                sharpen=self.sharpen,
            ).items()
            if v is not None
        }
        try:
            return replace(base, **changes)
        except ValueError as exc:
            raise ClassifyError(str(exc)) from None

    @property
    def cropped(self) -> bool:
        return self.crop != (0.0, 1.0, 0.0, 1.0)


def preprocess_defaults(workspace) -> tuple[PreprocessConfig, str]:
    """The preprocessing the models were trained with, and where it was read from
    (:func:`foramlib.dataset.slicing.trained_slicing`, the one reader: the slice store's
    record, then ``params.yaml`` ``slice.*``, else the defaults).

    >>> import tempfile
    >>> preprocess_defaults(tempfile.mkdtemp())[1]
    'built-in defaults'
    """
    from foramlib.dataset.slicing import trained_slicing

    config, source = trained_slicing(workspace)
    return config.preprocess, source


def _manual_crop(image: np.ndarray, crop) -> np.ndarray:
    h, w = image.shape[:2]
    r0, r1 = int(round(crop[0] * h)), int(round(crop[1] * h))
    c0, c1 = int(round(crop[2] * w)), int(round(crop[3] * w))
    return image[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)]


def stored_slice(image, base: PreprocessConfig) -> np.ndarray | None:
    """`image` as a 2-D uint8 slice if it already is one as the slicer stores it, else None.

    A stored slice (``data/slices``, the dashboard's gallery, or a PNG/TIFF a user saved
    from either) went through the training preprocessing once: it is a ``base.size``
    square of 8-bit grey whose background the segmentation set to 0, so its whole
    border is 0. Preprocessing it again would stretch its contrast again and cut its
    dim parts, and the models would see another image than the stored one; such an
    image is classified as it is. A raw section (larger, or with a scanner background
    of noise, matrix or mount around the fossil) gets the full preprocessing. Grey
    saved as RGB(A) (equal channels, opaque) counts as grey.

    Parameters
    ----------
    image : array-like
        A decoded image (:func:`foramlib.io.uploads.decode_upload`).
    base : PreprocessConfig
        The served preprocessing; its ``size`` is the stored slices' edge.

    Returns
    -------
    ndarray of uint8 or None

    Examples
    --------
    >>> base = PreprocessConfig(size=32)
    >>> s = np.zeros((32, 32), np.uint8); s[8:24, 6:26] = 200
    >>> stored_slice(s, base) is s
    True
    >>> stored_slice(s + 3, base) is None  # a background that is not the store's 0
    True
    >>> stored_slice(np.dstack([s, s, s]), base).shape
    (32, 32)
    >>> stored_slice(np.zeros((64, 64), np.uint8), base) is None  # another size
    True
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.shape[:2] != (base.size, base.size):
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        opaque = arr.shape[2] == 3 or bool((arr[..., 3] == 255).all())
        if not (opaque and (rgb == rgb[..., :1]).all()):
            return None
        arr = np.ascontiguousarray(rgb[..., 0])
    if arr.ndim != 2 or not arr.any():
        return None  # a blank image is reported as blank by prepare
    border = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    return arr if not border.any() else None


def prepare(
    image,
    options: PrepareOptions = PrepareOptions(),
    base: PreprocessConfig = DEFAULT_CONFIG,
    *,
    cleaned: bool = False,
    name: str = "image",
    max_side: int = MAX_SIDE,
):
    """Manual crop, then the training preprocessing (:func:`preprocess_slice`).

    Parameters
    ----------
    image : array-like
        A raw section (any pixel type, gray or RGB).
    options : PrepareOptions
    base : PreprocessConfig
        The training settings (see :func:`preprocess_defaults`).
    cleaned : bool
        `image` is a slice from the store, already preprocessed with `base`: with the
        training settings and no crop it is returned as is (exactly the model's test
        input); any change runs the pipeline on it.
    name : str
        For messages.
    max_side : int
        Images whose longer side exceeds it are first shrunk to it (``INTER_AREA``):
        segmentation of a 10k-pixel scan would take seconds and the result is a
        ``size``-pixel slice anyway.

    Returns
    -------
    (ndarray of uint8, dict)
        The cleaned ``size × size`` slice and what was done: ``source``
        ("preprocessed" or "stored slice"), ``fraction`` of the section that is fossil,
        ``box``, ``crop``, the ``config`` used and the input's ``colourfulness``
        (:func:`foramlib.inference.section_check.colourfulness`).

    Raises
    ------
    foramlib.dataset.preprocess.PreprocessError
        Blank, tiny (< 16 px) or featureless images; nothing above the threshold.

    Examples
    --------
    >>> prepare(np.zeros((40, 40)), name="blank.png")
    Traceback (most recent call last):
    ...
    foramlib.dataset.preprocess.PreprocessError: blank.png: image is blank (all pixels equal 0)
    """
    config = options.config(base)
    arr = np.asarray(image)
    if arr.dtype.kind not in "uifb":
        raise PreprocessError(f"{name}: unsupported pixel type {arr.dtype}")
    info = {"crop": list(options.crop), "config": config.as_dict()}
    if cleaned and config == base and not options.cropped and arr.shape == (base.size,) * 2:
        out = arr.astype(np.uint8)
        fraction = float((out > 0).mean())
        info["colourfulness"] = 0.0  # a stored slice is grey
        return out, {**info, "source": "stored slice", "fraction": fraction, "box": None}
    if options.cropped:
        arr = _manual_crop(arr, options.crop)
    shrunk, scale = shrink_to_fit(arr, max_side)
    if scale != 1.0:
        info["downscaled_from"], info["scale"] = list(arr.shape[:2]), scale
        arr = shrunk
    # the section check's colour rule, on the shrunk image: a full-size scan's channel
    # spread would cost seconds and say the same
    info["colourfulness"] = round(colourfulness(arr), 4)
    out, sl = preprocess_slice(arr, config, name=name)
    return out, {
        **info,
        "source": "preprocessed",
        "fraction": sl.fraction,
        "box": [int(b) for b in sl.box],
    }


def prepare_upload(
    image,
    base: PreprocessConfig = DEFAULT_CONFIG,
    options: PrepareOptions = PrepareOptions(),
    *,
    name: str = "image",
):
    """:func:`prepare` for an image from outside: a stored slice is kept as it is.

    An exported stored slice (:func:`stored_slice`) with the training settings and no
    crop is classified as it is (``info["source"] == "stored slice"``); anything else
    gets the full preprocessing. The one entry point of uploads and ``foram classify``.

    Examples
    --------
    >>> s = np.zeros((32, 32), np.uint8); s[8:24, 6:26] = 200
    >>> prepare_upload(s, PreprocessConfig(size=32))[1]["source"]
    'stored slice'
    >>> prepare_upload(np.pad(s, 8), PreprocessConfig(size=32))[1]["source"]
    'preprocessed'
    """
    stored = None
    if not options.cropped and options.config(base) == base:
        stored = stored_slice(image, base)
    if stored is None:
        return prepare(image, options, base, name=name)
    return prepare(stored, options, base, cleaned=True, name=name)


# --------------------------------------------------------------------------- workspace


SECTION_CHECK = "results/section_check.npz"  # written by the evaluate stage


@functools.lru_cache(maxsize=8)
def _section_check_file(path: str, mtime_ns: int, size: int) -> SectionCheck:
    """The section check at `path`, read once per version of the file (its modification
    time and size are in the key): every 3D match asks for it, and a rewritten file is
    read again. The check is only read from, never changed."""
    return SectionCheck.load(path)


def load_section_check(workspace, preprocess: PreprocessConfig) -> tuple[SectionCheck | None, str]:
    """The workspace's section check (evaluate stage), or None and why not.

    A check fitted on slices of another size than the served preprocessing is stale
    (the slices were rebuilt since) and not used.
    """
    path = Path(workspace) / SECTION_CHECK
    if not path.is_file():
        return None, f"none ({SECTION_CHECK} missing; the evaluate stage writes it)"
    try:
        stat = path.stat()
        check = _section_check_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except SectionCheckError as exc:
        return None, f"unusable: {exc}"
    size = check.info.get("size")
    if size is not None and int(size) != preprocess.size:
        return None, (
            f"stale: fitted on {size}-px slices, the models see {preprocess.size}-px "
            "slices; rerun the evaluate stage"
        )
    return check, SECTION_CHECK


GENUS_CHECK = "results/genus_check.npz"  # written by the evaluate stage


def load_genus_check(workspace, member: str, size: int) -> tuple[GenusCheck | None, str]:
    """The workspace's genus check (evaluate stage) for `member`, or None and why not.

    A check fitted on another member, on another training of it (the model file's
    digest differs) or on slices of another size is stale and not used: its features
    would not be the served model's.
    """
    ws = Path(workspace)
    path = ws / GENUS_CHECK
    if not path.is_file():
        return None, f"none ({GENUS_CHECK} missing; the evaluate stage writes it)"
    try:
        check = GenusCheck.load(path)
    except GenusCheckError as exc:
        return None, f"unusable: {exc}"
    model = ws / "models" / member / "model.keras"
    if check.member != member:
        return None, f"stale: fitted on {check.member!r}, the main model is {member!r}"
    if not model.is_file() or check.info.get("model_sha256") != file_digest(model):
        return None, f"stale: models/{member} was trained again since; rerun the evaluate stage"
    if int(check.info.get("size", size)) != size:
        return None, (
            f"stale: fitted on {check.info['size']}-px slices, the models see {size}-px "
            "slices; rerun the evaluate stage"
        )
    return check, GENUS_CHECK


def section_refusal(image, workspace) -> str | None:
    """The workspace's section check's refusal of a query image, in words.

    ``foram match`` warns with it that a 3D match of the image may mean nothing, and
    ``benchmarks/match_check.py`` counts the inputs it lets through. The check is the
    workspace's (:data:`SECTION_CHECK`, written by the evaluate stage), applied to the
    image prepared as its models' slices were (:func:`preprocess_defaults`,
    :func:`prepare_upload`).

    Parameters
    ----------
    image : array-like
        A decoded query image (any pixel type, grey or colour).
    workspace : path-like
        The folder holding the pipeline's ``results/``.

    Returns
    -------
    str or None
        Why the image does not look like a foraminifer section
        (:attr:`foramlib.inference.section_check.Verdict.message`); None when it passes,
        when the workspace has no usable check (missing, unreadable or stale: see
        :func:`load_section_check`), or when the image cannot be prepared (the matcher
        reads the image its own way and reports its own errors).

    Examples
    --------
    >>> import tempfile
    >>> section_refusal(np.zeros((40, 40)), tempfile.mkdtemp()) is None  # no check here
    True
    """
    base, _ = preprocess_defaults(workspace)
    check, _ = load_section_check(workspace, base)
    if check is None:
        return None
    try:
        cleaned, info = prepare_upload(image, base, name="query")
    except PreprocessError:
        return None  # the matcher reads the image its own way and reports its own errors
    verdict = check.verdict(cleaned, colour=info["colourfulness"])
    return None if verdict.looks_like_section else verdict.message


def _final_name(ws: Path) -> str:
    metrics = ws / "results" / "metrics.json"
    if not metrics.is_file():
        raise ArtefactError(f"{metrics} is missing: no evaluated ensemble yet; {RUN_FIRST}")
    try:
        final = json.loads(metrics.read_text(encoding="utf-8"))["final"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{metrics} names no final ensemble ({exc}); {RUN_FIRST}") from None
    return str(final)


def _load_spec(ws: Path, name: str):
    from foramlib.evaluation.ensemble import EnsembleError, EnsembleSpec

    path = ws / "results" / "ensemble" / f"{name}.json"
    if path.is_file():
        try:
            return EnsembleSpec.load(path), str(path.relative_to(ws))
        except EnsembleError as exc:
            raise ArtefactError(f"{exc}; {RUN_FIRST}") from None
    model_dir = ws / "models" / name
    if (model_dir / "class_names.json").is_file():  # a single trained backbone
        names = json.loads((model_dir / "class_names.json").read_text(encoding="utf-8"))
        return EnsembleSpec("top_k", (name,), tuple(names), k=1), f"models/{name}"
    raise ArtefactError(
        f"ensemble {name!r} not found: neither {path} nor {model_dir} exists; {RUN_FIRST}"
    )


def member_tta_views(model_dir) -> int:
    """The views a trained model's predictions average over (its ``config.json``).

    Models trained before test-time augmentation existed, or without a
    ``config.json``, were predicted from the slice alone: 1.

    Raises
    ------
    ArtefactError
        ``config.json`` is unreadable or names an invalid ``tta_views``.

    Examples
    --------
    >>> import tempfile
    >>> member_tta_views(tempfile.mkdtemp())
    1
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return 1
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        return check_views(settings.get("tta_views", 1), f"tta_views in {path}")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as exc:
        raise ArtefactError(f"{path} is unreadable ({exc}); {RUN_FIRST}") from None


def missing_artefacts(workspace, ensemble: str | None = None) -> list[str]:
    """What the classifier needs from the pipeline but cannot find (empty: all there).

    Checks files only (no model is loaded), so a page can say what to run first.

    >>> import tempfile
    >>> missing_artefacts(tempfile.mkdtemp())[0].startswith("results/metrics.json")
    True
    """
    ws = Path(workspace)
    try:
        name = ensemble or _final_name(ws)
    except ArtefactError:
        return ["results/metrics.json (the evaluated final ensemble)"]
    try:
        spec, _ = _load_spec(ws, name)
    except ArtefactError:
        return [f"results/ensemble/{name}.json (the saved ensemble)"]
    missing = []
    for m in spec.members:
        for f in ("model.keras", "class_names.json"):
            if not (ws / "models" / m / f).is_file():
                missing.append(f"models/{m}/{f}")
    return missing


# --------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """The classifier's answer for one slice.

    Attributes
    ----------
    top5 : list of (str, float)
        The five most probable genera (fewer if there are fewer classes), best first.
    probabilities : dict of str to float
        Every genus' probability, in class order.
    uncertain : bool
        Top probability under the calibrated threshold (or no calibration reached).
    threshold : Calibration or None
    metadata : dict
        Ensemble, members, input sizes, preprocessing used, main model.
    member_probabilities : dict of str to list of float
        Each member's own distribution (class order).
    section : Verdict or None
        Does the input look like a foraminifer section at all
        (:mod:`foramlib.inference.section_check`)? None when the workspace has no section check.
    novelty : GenusVerdict or None
        Is it one of these genera (:mod:`foramlib.inference.genus_check`)? None when the
        workspace has no usable genus check.
    """

    top5: list[tuple[str, float]]
    probabilities: dict[str, float]
    uncertain: bool
    threshold: Calibration | None
    metadata: dict
    member_probabilities: dict[str, list[float]] = field(default_factory=dict)
    section: Verdict | None = None
    novelty: GenusVerdict | None = None

    @property
    def not_a_section(self) -> bool:
        """The section check refused the input (a photo, noise, another material)."""
        return self.section is not None and not self.section.looks_like_section

    @property
    def maybe_unknown_genus(self) -> bool:
        """The genus check found the section farther from every training slice than new
        specimens of the known genera usually are (and it is a section at all)."""
        return not self.not_a_section and self.novelty is not None and not self.novelty.known

    @property
    def genus(self) -> str:
        return self.top5[0][0]

    @property
    def confidence(self) -> float:
        return self.top5[0][1]


class Classifier:
    """The saved ensemble, ready to classify single slices.

    Build it with :meth:`from_workspace`; or directly from loaded models.

    Parameters
    ----------
    spec : EnsembleSpec
    models : mapping of member name to keras.Model
    preprocess : PreprocessConfig
        The training preprocessing (defaults of :func:`prepare`).
    calibration : Calibration, optional
    name : str
        The ensemble's name (e.g. "PatchEnsemble").
    sources : dict
        Where the spec, preprocessing and calibration came from (for the metadata).
    tta_views : mapping of member name to int, optional
        Views (:mod:`foramlib.learn.tta`) each member's probability is averaged over, as in
        its training run's predictions (default: 1, the slice alone).
    section_check : SectionCheck, optional
        Says whether an input looks like a foraminifer section at all (default: no
        check; predictions then carry ``section=None``).
    genus_check : GenusCheck, optional
        Says whether a section may be of a genus outside the class list, from the main
        member's features (default: no check; predictions carry ``novelty=None``).
    """

    def __init__(
        self,
        spec,
        models: Mapping,
        preprocess: PreprocessConfig,
        calibration: Calibration | None = None,
        *,
        name: str = "ensemble",
        sources: dict | None = None,
        tta_views: Mapping[str, int] | None = None,
        section_check: SectionCheck | None = None,
        genus_check: GenusCheck | None = None,
    ):
        from foramlib.evaluation.ensemble import check_members

        check_members(spec, models)
        self.spec = spec
        self.models = {m: models[m] for m in spec.members}
        self.preprocess = preprocess
        self.calibration = calibration
        self.name = name
        self.sources = dict(sources or {})
        self.names = list(spec.names)
        for m, model in self.models.items():
            n_out = int(model.output_shape[-1])
            if n_out != len(self.names):
                raise ArtefactError(
                    f"member {m!r} outputs {n_out} classes, the ensemble has {len(self.names)}"
                )
        self.input_sizes = {m: int(model.input_shape[1]) for m, model in self.models.items()}
        views = dict(tta_views or {})
        unknown = sorted(set(views) - set(self.models))
        if unknown:
            raise ArtefactError(f"tta_views names models outside the ensemble: {unknown}")
        self.tta_views = {m: check_views(views.get(m, 1), f"tta_views[{m!r}]") for m in self.models}
        self.section_check = section_check
        if genus_check is not None and genus_check.member not in (None, self.main):
            raise ArtefactError(
                f"the genus check reads {genus_check.member!r}'s features, the main model is "
                f"{self.main!r}"
            )
        self.genus_check = genus_check
        self._features = None

    @property
    def main(self) -> str:
        """The main member: the PatchEnsemble's main model, else the best-ranked member."""
        return main_member(self.spec)

    @classmethod
    def from_workspace(
        cls,
        workspace,
        ensemble: str | None = None,
        *,
        target_precision: float = DEFAULT_TARGET_PRECISION,
        min_support: int = DEFAULT_MIN_SUPPORT,
    ) -> Classifier:
        """Load the ensemble ``ensemble`` (default: ``results/metrics.json`` "final").

        `ensemble` may also name one trained backbone under ``models/``.

        Raises
        ------
        ArtefactError
            Missing or inconsistent pipeline outputs; the message says what to run.
        """
        import keras

        from foramlib.learn.loader import DataError, check_class_lists, load_class_names
        from foramlib.learn.training import enable_jit

        ws = Path(workspace)
        name = ensemble or _final_name(ws)
        spec, spec_source = _load_spec(ws, name)
        models, views = {}, {}
        for m in spec.members:
            views[m] = member_tta_views(ws / "models" / m)
            path = ws / "models" / m / "model.keras"
            if not path.is_file():
                raise ArtefactError(f"model of member {m!r} is missing ({path}); {RUN_FIRST}")
            try:
                check_class_lists(
                    list(spec.names),
                    load_class_names(ws / "models" / m / "class_names.json"),
                    what=f"class list of models/{m}",
                )
            except DataError as exc:
                raise ArtefactError(f"{exc}; {RUN_FIRST}") from None
            models[m] = keras.saving.load_model(path, compile=False)
            # on JAX the augmentation layers (idle at inference) would leave prediction
            # uncompiled, op by op; `supports_jit` is not saved with a model
            if enable_jit(models[m]) is True:
                models[m].jit_compile = True
        config, pp_source = preprocess_defaults(ws)
        try:
            calibration = calibrate_spec(
                spec, ws / "models", target_precision=target_precision, min_support=min_support
            )
        except ArtefactError:
            calibration = None
        section_check, check_source = load_section_check(ws, config)
        main = main_member(spec)
        genus_check, genus_source = load_genus_check(ws, main, config.size)
        return cls(
            spec,
            models,
            config,
            calibration,
            name=name,
            sources={
                "ensemble": spec_source,
                "preprocessing": pp_source,
                "section_check": check_source,
                "genus_check": genus_source,
            },
            tta_views=views,
            section_check=section_check,
            genus_check=genus_check,
        )

    # ------------------------------------------------------------------ inference
    def warm_up(self) -> None:
        """Run every member and Grad-CAM once, so the first user request is fast.

        (TensorFlow traces its prediction functions on first use: seconds per model.)
        """
        size = self.preprocess.size
        yy, xx = np.mgrid[:size, :size]
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 200
        image = disc.astype(np.uint8)
        pred = self.predict(image)
        try:
            self.grad_cam(image, pred.genus)
        except ClassifyError:
            pass

    def prepare(self, image, options: PrepareOptions = PrepareOptions(), **kwargs):
        """:func:`prepare` with this classifier's training preprocessing."""
        return prepare(image, options, self.preprocess, **kwargs)

    def _input(self, cleaned: np.ndarray, size: int) -> np.ndarray:
        img = np.asarray(cleaned)
        if img.ndim != 2 or img.dtype != np.uint8:
            raise ClassifyError(
                f"expected a cleaned 2-D uint8 slice (see prepare), got {img.dtype} {img.shape}"
            )
        return resize_slice(img, size).astype(np.float32)[None, :, :, None]

    def features(self, cleaned) -> np.ndarray:
        """The main member's L2-normalised features of cleaned slices, shape (N, D)
        (what :mod:`foramlib.inference.genus_check` compares)."""
        if self._features is None:
            self._features = feature_model(self.models[self.main])
        stack = np.asarray(cleaned)
        return embed(self._features, stack[None] if stack.ndim == 2 else stack)

    def member_probabilities(self, cleaned: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's (1, C) probabilities for one cleaned slice."""
        out = {}
        for m, model in self.models.items():
            x = self._input(cleaned, self.input_sizes[m])
            out[m] = predict_views(model, x, self.tta_views[m]).reshape(1, -1)
        return out

    def predict_many(self, cleaned, batch_size: int = 64) -> np.ndarray:
        """The ensemble's probabilities for a stack of cleaned slices.

        Parameters
        ----------
        cleaned : ndarray of uint8, shape (N, S, S)
            Slices as :meth:`prepare` or the slice stage leave them.
        batch_size : int

        Returns
        -------
        ndarray of float64, shape (N, n_classes)
        """
        stack = np.asarray(cleaned)
        if stack.ndim != 3 or stack.dtype != np.uint8 or len(stack) == 0:
            raise ClassifyError(
                f"expected a non-empty stack of cleaned uint8 slices (N, S, S), got "
                f"{stack.dtype} {stack.shape}"
            )
        members = {}
        for m, model in self.models.items():
            size = self.input_sizes[m]
            out = []
            for start in range(0, len(stack), batch_size):
                x = np.stack([resize_slice(img, size) for img in stack[start : start + batch_size]])
                x = x.astype(np.float32)[..., None]
                out.append(predict_views(model, x, self.tta_views[m]))
            members[m] = np.concatenate(out).reshape(len(stack), -1)
        return np.asarray(self.spec.apply(members), dtype=np.float64)

    def predict(self, cleaned: np.ndarray, *, preprocessing: dict | None = None) -> Prediction:
        """Classify one cleaned slice (the output of :meth:`prepare`).

        Parameters
        ----------
        cleaned : ndarray of uint8, shape (S, S)
        preprocessing : dict, optional
            The ``info`` of :meth:`prepare`, copied into the metadata.
        """
        members = self.member_probabilities(cleaned)
        probs = self.spec.apply(members)[0]
        order = np.argsort(-probs, kind="stable")[:5]
        top5 = [(self.names[i], float(probs[i])) for i in order]
        conf = top5[0][1]
        uncertain = True if self.calibration is None else self.calibration.uncertain(conf)
        section = None
        if self.section_check is not None:
            colour = float((preprocessing or {}).get("colourfulness", 0.0))
            section = self.section_check.verdict(cleaned, colour=colour)
        novelty = None
        if self.genus_check is not None:
            novelty = self.genus_check.verdict(self.features(cleaned)[0])
        metadata = {
            "ensemble": self.name,
            "kind": self.spec.kind,
            "members": list(self.spec.members),
            "main": self.main,
            "weak": list(self.spec.weak),
            "input_size": dict(self.input_sizes),
            "tta_views": dict(self.tta_views),
            "classes": len(self.names),
            "preprocessing": preprocessing or {},
            "preprocessing_defaults": {**self.preprocess.as_dict()},
            "sources": dict(self.sources),
            "calibration": None if self.calibration is None else self.calibration.as_dict(),
            "section_check": None if section is None else section.as_dict(),
            "genus_check": None if novelty is None else novelty.as_dict(),
        }
        if self.spec.kind == "patch":
            rule = self.spec.rule()
            metadata["patch_switched"] = bool(
                rule.switched(members[self.spec.main], members[self.spec.patch])[0]
            )
        return Prediction(
            top5=top5,
            probabilities={n: float(p) for n, p in zip(self.names, probs, strict=True)},
            uncertain=bool(uncertain),
            threshold=self.calibration,
            metadata=metadata,
            member_probabilities={m: p[0].tolist() for m, p in members.items()},
            section=section,
            novelty=novelty,
        )

    def grad_cam(self, cleaned: np.ndarray, class_name: str | None = None) -> np.ndarray:
        """Grad-CAM heat map of the main member for `class_name` (default: its top-1).

        Returns
        -------
        ndarray of float32 in [0, 1], the shape of `cleaned`
        """
        model = self.models[self.main]
        size = self.input_sizes[self.main]
        x = self._input(cleaned, size)
        index = None if class_name is None else self.names.index(class_name)
        try:
            heat = grad_cam(model, x[0], class_index=index, min_side=cam_side(size))
        except ClassifyError:  # no map that fine: the last one
            heat = grad_cam(model, x[0], class_index=index)
        return cv2.resize(heat, cleaned.shape[::-1], interpolation=cv2.INTER_LINEAR)


def top_k_table(pairs: Sequence[tuple[str, float]]) -> list[dict]:
    """Rows ``{"rank", "genus", "probability"}`` of a ranked list (for tables)."""
    return [{"rank": i + 1, "genus": g, "probability": float(p)} for i, (g, p) in enumerate(pairs)]
