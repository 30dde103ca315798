"""When is a prediction uncertain? A confidence threshold set on validation data only.

:func:`calibrate_threshold` picks the lowest top-probability threshold whose accepted
validation predictions reach a target precision; :func:`calibrate_spec` applies it to a
saved ensemble's validation predictions. The test split is never looked at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from foramlib.inference.errors import RUN_FIRST, ArtefactError, ClassifyError

__all__ = [
    "DEFAULT_MIN_SUPPORT",
    "DEFAULT_TARGET_PRECISION",
    "Calibration",
    "calibrate_spec",
    "calibrate_threshold",
    "load_validation",
]

DEFAULT_TARGET_PRECISION = 0.80
DEFAULT_MIN_SUPPORT = 20


@dataclass(frozen=True)
class Calibration:
    """The confidence threshold under which a prediction is flagged uncertain.

    Attributes
    ----------
    threshold : float
        Predictions whose top probability is below it are uncertain.
    target_precision : float
        The validation precision asked for.
    precision, coverage : float
        On the validation slices with confidence >= threshold: the share predicted
        correctly, and the share of all validation slices they are.
    n_val : int
        Validation slices used.
    reached : bool
        False when no threshold reaches the target (then every prediction is flagged).
    rule : str
        The rule in words.
    """

    threshold: float
    target_precision: float
    precision: float
    coverage: float
    n_val: int
    reached: bool
    rule: str

    def uncertain(self, confidence: float) -> bool:
        """True when a prediction of this top probability should be flagged."""
        return (not self.reached) or confidence < self.threshold

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(
    confidence,
    correct,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> Calibration:
    """The lowest confidence threshold whose accepted predictions reach a precision.

    Rule: over the validation slices, accept a prediction when its top probability is
    at least ``t``; choose the smallest ``t`` (the largest coverage) at which the
    accepted predictions are correct at least `target_precision` of the time and
    number at least `min_support`. Predictions below ``t`` are *uncertain*. When no
    ``t`` qualifies, every prediction is uncertain (``reached=False``).

    Parameters
    ----------
    confidence : array of float
        Top probability of each validation prediction.
    correct : array of bool
        Whether each top-1 prediction was right.
    target_precision : float in (0, 1]
    min_support : int >= 1

    Examples
    --------
    >>> conf = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    >>> ok = [True, True, True, False, True, False]
    >>> c = calibrate_threshold(conf, ok, target_precision=0.75, min_support=2)
    >>> c.threshold, c.precision, round(c.coverage, 3), c.reached
    (0.6, 0.8, 0.833, True)
    >>> calibrate_threshold(conf, ok, target_precision=1.0, min_support=4).reached
    False
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape or conf.size == 0:
        raise ClassifyError(
            f"confidence and correct must be non-empty and of one length, got "
            f"{conf.size} and {ok.size}"
        )
    if not np.isfinite(conf).all():
        raise ClassifyError("confidence holds NaN or infinite values")
    if not 0.0 < float(target_precision) <= 1.0:
        raise ClassifyError(f"target_precision must be in (0, 1], got {target_precision!r}")
    if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 1:
        raise ClassifyError(f"min_support must be an integer >= 1, got {min_support!r}")
    rule = (
        f"smallest threshold t such that validation predictions with top probability >= t "
        f"are correct at least {target_precision:.0%} of the time (at least {min_support} "
        f"of them); below t a prediction is flagged uncertain"
    )
    order = np.argsort(-conf, kind="stable")
    c, k = conf[order], ok[order]
    hits = np.cumsum(k)
    n = np.arange(1, len(c) + 1)
    # accepting "confidence >= t" takes every slice tied at t: only ends of tie runs count
    ends = np.r_[c[1:] != c[:-1], True]
    prec = hits / n
    good = ends & (prec >= target_precision - 1e-12) & (n >= min_support)
    if not good.any():
        best = int(np.argmax(np.where(ends & (n >= min(min_support, len(c))), prec, -1)))
        return Calibration(
            threshold=1.0,
            target_precision=float(target_precision),
            precision=float(prec[best]),
            coverage=0.0,
            n_val=int(len(c)),
            reached=False,
            rule=rule,
        )
    i = int(np.flatnonzero(good)[-1])
    return Calibration(
        threshold=float(c[i]),
        target_precision=float(target_precision),
        precision=float(prec[i]),
        coverage=float(n[i] / len(c)),
        n_val=int(len(c)),
        reached=True,
        rule=rule,
    )


def load_validation(spec, models_dir) -> dict:
    """Each member's validation predictions (``<models_dir>/<member>/predictions_val.csv``).

    Raises
    ------
    ArtefactError
        A member's validation predictions are missing or unreadable.
    """
    from foramlib.evaluation.metrics import PredictionError, load_model_predictions

    val = {}
    for m in spec.members:
        try:
            val[m] = load_model_predictions(Path(models_dir) / m, "val")
        except (PredictionError, FileNotFoundError, OSError) as exc:
            raise ArtefactError(
                f"validation predictions of {m!r} are missing or unreadable ({exc}); {RUN_FIRST}"
            ) from None
    return val


def calibrate_spec(spec, models_dir, **kwargs) -> Calibration:
    """Calibrate the uncertainty threshold of an ensemble on its members' validation output.

    Reads ``<models_dir>/<member>/predictions_val.csv``, combines them with
    ``spec.apply`` and calls :func:`calibrate_threshold` (keyword arguments passed on).

    Raises
    ------
    ArtefactError
        A member's validation predictions are missing.
    """
    val = load_validation(spec, models_dir)
    try:
        probs = spec.apply(val)
    except ValueError as exc:  # EnsembleError, PredictionError: members that do not align
        raise ArtefactError(f"cannot combine the validation predictions: {exc}") from None
    y = val[spec.members[0]].y_true
    return calibrate_threshold(probs.max(axis=1), probs.argmax(axis=1) == y, **kwargs)
