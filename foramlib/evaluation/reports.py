"""Classification reports and the paper's result tables (Tables 4–8) built from them.

A :class:`Report` is what one model or ensemble achieved on one split: per-class
precision, recall, F1 and support, plus overall metrics. The same table builders render
this pipeline's reports and the reports rebuilt from the authors' released files, so the
book can show both side by side, next to the values printed in the paper.

Examples
--------
>>> per_class = pd.DataFrame({"precision": [0.9, 0.5], "recall": [0.8, 0.7],
...                           "f1": [0.85, 0.58], "support": [10, 5]},
...                          index=pd.Index(["A", "B"], name="class"))
>>> r = Report("m", per_class, {"accuracy": 0.8})
>>> table5({"m": r})["m"].tolist()
[0.85, 0.58, 0.715]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "PER_CLASS_COLUMNS",
    "OVERALL_KEYS",
    "Report",
    "per_class_table",
    "table4",
    "table5",
    "table6",
    "table7",
    "table8",
]

PER_CLASS_COLUMNS = ("precision", "recall", "f1", "support")
OVERALL_KEYS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "top3",
    "auc",
    "n",
)
TABLE8_COLUMNS = {
    "accuracy": "Accuracy",
    "macro_precision": "Precision",
    "macro_recall": "Recall",
    "macro_f1": "F1-Score",
    "top3": "Top-3 Acc",
    "auc": "AUC",
}


@dataclass(frozen=True, eq=False)
class Report:
    """One model's (or ensemble's) results on one split.

    Parameters
    ----------
    name : str
        Model or method name as shown in tables (e.g. ``"convnext_large"``, ``"Top-2"``).
    per_class : DataFrame
        Indexed by class name; columns ``precision``, ``recall``, ``f1``, ``support``.
    overall : dict
        Any of ``OVERALL_KEYS``; a missing metric is None (e.g. the authors released no
        AUC for their ensembles).
    source : str
        Where the numbers come from (a file, or "this pipeline").
    """

    name: str
    per_class: pd.DataFrame
    overall: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        missing = [c for c in PER_CLASS_COLUMNS if c not in self.per_class.columns]
        if missing:
            raise ValueError(f"report {self.name!r}: per-class table lacks {missing}")
        unknown = set(self.overall) - set(OVERALL_KEYS)
        if unknown:
            raise ValueError(f"report {self.name!r}: unknown overall metric(s) {sorted(unknown)}")
        values = self.per_class[["precision", "recall", "f1"]].to_numpy(dtype=float)
        if np.isnan(values).any() or (values < 0).any() or (values > 1).any():
            raise ValueError(f"report {self.name!r}: per-class metrics must lie in [0, 1]")

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.per_class.index]

    def metric(self, key: str):
        """An overall metric, or None when the report does not have it."""
        return self.overall.get(key)


def _check_same_classes(reports: Mapping[str, Report]) -> list[str]:
    if not reports:
        raise ValueError("no reports given")
    items = list(reports.items())
    classes = sorted(items[0][1].classes)
    for name, r in items[1:]:
        if sorted(r.classes) != classes:
            raise ValueError(
                f"reports {items[0][0]!r} and {name!r} have different classes: "
                f"{classes} vs {sorted(r.classes)}"
            )
    return classes


def per_class_table(
    reports: Mapping[str, Report], metric: str, *, average: bool = True
) -> pd.DataFrame:
    """Species × methods table of one per-class metric (Tables 5–7), with an Average row.

    The Average is the unweighted mean over classes (the paper's Average rows).
    """
    if metric not in ("precision", "recall", "f1"):
        raise ValueError(f"metric must be precision, recall or f1, got {metric!r}")
    classes = _check_same_classes(reports)
    table = pd.DataFrame(
        {name: r.per_class[metric].reindex(classes).astype(float) for name, r in reports.items()}
    )
    table.index.name = "Species"
    if average:
        table.loc["Average"] = table.mean(axis=0)
    return table.round(3)


def table5(reports: Mapping[str, Report]) -> pd.DataFrame:
    """Table 5: F1-score per species across methods."""
    return per_class_table(reports, "f1")


def table6(reports: Mapping[str, Report]) -> pd.DataFrame:
    """Table 6: precision per species across methods."""
    return per_class_table(reports, "precision")


def table7(reports: Mapping[str, Report]) -> pd.DataFrame:
    """Table 7: recall per species across methods."""
    return per_class_table(reports, "recall")


def table4(reports: Mapping[str, Report], weak: Sequence[str]) -> pd.DataFrame:
    """Table 4: F1, precision and recall of the weak classes across methods.

    Rows are grouped by class (as in the paper), one row per method.
    """
    classes = _check_same_classes(reports)
    unknown = [w for w in weak if w not in classes]
    if unknown:
        raise ValueError(f"weak class(es) {unknown} are not among the classes {classes}")
    rows = []
    for cls in weak:
        for name, r in reports.items():
            row = r.per_class.loc[cls]
            rows.append(
                {
                    "Species": cls,
                    "Ensemble Method": name,
                    "F1-score": round(float(row["f1"]), 3),
                    "Precision": round(float(row["precision"]), 3),
                    "Recall": round(float(row["recall"]), 3),
                }
            )
    return pd.DataFrame(rows)


def table8(reports: Mapping[str, Report]) -> pd.DataFrame:
    """Table 8: every model and ensemble with Accuracy, macro Precision/Recall/F1,
    Top-3 accuracy and AUC, sorted by accuracy (missing metrics stay empty)."""
    rows = []
    for name, r in reports.items():
        row = {"Model": name}
        for key, col in TABLE8_COLUMNS.items():
            value = r.metric(key)
            row[col] = None if value is None else round(float(value), 3)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("Accuracy", ascending=False, kind="stable").reset_index(drop=True)
