"""Numbers printed in the paper, transcribed for side-by-side comparison.

Source: Halimi et al., "ForamDeepSlice: A High-Accuracy Deep Learning Framework for
Foraminifera Species Classification from 2D Micro-CT Slices", arXiv:2512.00912,
Tables 2–8. These are reference values to show next to the pipeline's own; no
computation uses them as results.

Tables 4–8 are transcribed exactly as printed (three decimals). The paper is not
self-consistent to the last digit: Table 4 prints Top-2 Orbitoides F1 as 0.777 and
Top-3 Baculogypsina recall as 0.227, where Tables 5 and 7 print 0.778 and 0.226 for the
same cells (the released reports say 0.7775 and 0.2265; see :mod:`foramlib.evaluation.reference`).

Examples
--------
>>> float(table5().loc["Average", "Patched"])
0.95
>>> table8().loc[0, "Model"]
'Ensemble (Final)'
"""

from __future__ import annotations

import pandas as pd

__all__ = [
    "TABLE2",
    "TABLE3",
    "TABLE4",
    "TABLE5",
    "TABLE6",
    "TABLE7",
    "TABLE8",
    "table2",
    "table3",
    "table4",
    "table5",
    "table6",
    "table7",
    "table8",
]

# species: (3D models, training, validation, test, total slices)
TABLE2: dict[str, tuple[int, int, int, int, int]] = {
    "Chrysalidina": (16, 3782, 1079, 5111, 9972),
    "Ataxophragmium": (7, 3943, 993, 4898, 9834),
    "Baculogypsina": (7, 2243, 997, 2980, 6220),
    "Minoxia": (6, 4156, 1034, 3557, 8747),
    "Elphidiella": (6, 4048, 1012, 3385, 8445),
    "Fallotia": (6, 4102, 987, 5009, 10098),
    "Arumella": (5, 3597, 1143, 2163, 6903),
    "Lockhartia": (5, 3899, 1234, 5359, 10492),
    "Orbitoides": (5, 3705, 1074, 5015, 9794),
    "Rhapydionina": (5, 3743, 1186, 3802, 8731),
    "Alveolina": (4, 3535, 1724, 5129, 10388),
    "Coskinolina": (4, 3350, 1583, 5060, 9993),
}
TABLE2_TOTAL = (76, 44103, 14046, 51468, 109617)

# split: (total images, CV %, balance quality)
TABLE3: dict[str, tuple[int, float, str]] = {
    "Training": (44103, 13.91, "Excellent"),
    "Validation": (14046, 20.58, "Good"),
    "Test": (51468, 24.72, "Acceptable"),
}


def table2() -> pd.DataFrame:
    """The paper's Table 2 with a TOTAL row, in the column layout the pipeline writes."""
    rows = [(s, *v) for s, v in TABLE2.items()] + [("TOTAL", *TABLE2_TOTAL)]
    return pd.DataFrame(
        rows, columns=["Species", "3D Models", "Training", "Validation", "Test", "Total Slices"]
    )


def table3() -> pd.DataFrame:
    """The paper's Table 3 in the column layout the pipeline writes."""
    rows = [(s, *v) for s, v in TABLE3.items()]
    return pd.DataFrame(rows, columns=["Split", "Total Images", "CV (%)", "Balance Quality"])


# Tables 4-7 compare the PatchEnsemble with Top-k voting ensembles.
# Table 4: weak class -> method -> (F1-score, precision, recall)
TABLE4: dict[str, dict[str, tuple[float, float, float]]] = {
    "Baculogypsina": {
        "Patched Ensemble": (0.752, 0.999, 0.603),
        "Top-2": (0.389, 0.972, 0.243),
        "Top-3": (0.366, 0.957, 0.227),
        "Top-4": (0.588, 0.985, 0.419),
    },
    "Orbitoides": {
        "Patched Ensemble": (0.872, 0.827, 0.922),
        "Top-2": (0.777, 0.684, 0.900),
        "Top-3": (0.770, 0.666, 0.913),
        "Top-4": (0.804, 0.723, 0.905),
    },
}

TABLE5_7_METHODS = ("Patched", "Top-2", "Top-3", "Top-4")

# Tables 5-7: species -> (Patched, Top-2, Top-3, Top-4); the last row is "Average"
TABLE5: dict[str, tuple[float, float, float, float]] = {  # F1-score
    "Alveolina": (0.973, 0.970, 0.974, 0.968),
    "Arumella": (0.987, 0.968, 0.983, 0.987),
    "Ataxophragmium": (0.992, 0.991, 0.995, 0.994),
    "Baculogypsina": (0.752, 0.389, 0.366, 0.588),
    "Chrysalidina": (0.958, 0.952, 0.974, 0.974),
    "Coskinolina": (0.982, 0.950, 0.963, 0.965),
    "Elphidiella": (0.976, 0.951, 0.969, 0.973),
    "Fallotia": (0.997, 0.998, 0.993, 0.996),
    "Lockhartia": (0.984, 0.984, 0.995, 0.998),
    "Minoxia": (0.941, 0.972, 0.989, 0.985),
    "Orbitoides": (0.872, 0.778, 0.770, 0.804),
    "Rhapydionina": (0.983, 0.977, 0.972, 0.977),
    "Average": (0.950, 0.907, 0.912, 0.934),
}

TABLE6: dict[str, tuple[float, float, float, float]] = {  # precision
    "Alveolina": (0.950, 0.946, 0.952, 0.938),
    "Arumella": (0.993, 0.997, 0.999, 0.999),
    "Ataxophragmium": (0.996, 0.992, 0.996, 0.996),
    "Baculogypsina": (0.999, 0.972, 0.957, 0.985),
    "Chrysalidina": (0.920, 0.915, 0.951, 0.950),
    "Coskinolina": (0.979, 0.975, 0.976, 0.982),
    "Elphidiella": (0.956, 0.910, 0.943, 0.950),
    "Fallotia": (0.994, 0.997, 0.987, 0.994),
    "Lockhartia": (0.968, 0.970, 0.990, 0.996),
    "Minoxia": (0.992, 0.973, 0.987, 0.988),
    "Orbitoides": (0.827, 0.684, 0.666, 0.723),
    "Rhapydionina": (0.990, 0.995, 0.996, 0.991),
    "Average": (0.964, 0.944, 0.950, 0.958),
}

TABLE7: dict[str, tuple[float, float, float, float]] = {  # recall
    "Alveolina": (0.997, 0.994, 0.998, 0.999),
    "Arumella": (0.981, 0.941, 0.968, 0.976),
    "Ataxophragmium": (0.989, 0.989, 0.994, 0.992),
    "Baculogypsina": (0.603, 0.243, 0.226, 0.419),
    "Chrysalidina": (0.999, 0.993, 0.997, 0.998),
    "Coskinolina": (0.986, 0.927, 0.950, 0.949),
    "Elphidiella": (0.996, 0.995, 0.996, 0.998),
    "Fallotia": (0.999, 1.000, 0.999, 0.999),
    "Lockhartia": (1.000, 0.999, 1.000, 1.000),
    "Minoxia": (0.895, 0.970, 0.990, 0.982),
    "Orbitoides": (0.922, 0.900, 0.913, 0.905),
    "Rhapydionina": (0.976, 0.960, 0.949, 0.963),
    "Average": (0.945, 0.909, 0.915, 0.932),
}

TABLE8_COLUMNS = ("Accuracy", "Precision", "Recall", "F1-Score", "Top-3 Acc", "AUC")

# Table 8: model -> (accuracy, macro precision, macro recall, macro F1, top-3 acc, AUC),
# in the paper's row order (descending accuracy)
TABLE8: dict[str, tuple[float, float, float, float, float, float]] = {
    "Ensemble (Final)": (0.956, 0.964, 0.945, 0.950, 0.996, 0.998),
    "ConvNeXt-Large": (0.951, 0.962, 0.937, 0.941, 0.996, 0.998),
    "NASNet": (0.937, 0.948, 0.922, 0.925, 0.992, 0.996),
    "EfficientNetV2-L": (0.935, 0.947, 0.919, 0.920, 0.994, 0.996),
    "EfficientNetV2-S": (0.918, 0.926, 0.904, 0.906, 0.995, 0.996),
    "ConvNeXt": (0.913, 0.932, 0.891, 0.877, 0.984, 0.993),
    "MobileNet": (0.880, 0.894, 0.866, 0.860, 0.994, 0.995),
    "ResNet101V2": (0.843, 0.870, 0.816, 0.808, 0.974, 0.984),
}


def table4() -> pd.DataFrame:
    """The paper's Table 4 in the layout of :func:`foramlib.evaluation.reports.table4`.

    One row per (weak class, method), grouped by class as printed.
    """
    rows = [
        {
            "Species": cls,
            "Ensemble Method": method,
            "F1-score": f1,
            "Precision": precision,
            "Recall": recall,
        }
        for cls, methods in TABLE4.items()
        for method, (f1, precision, recall) in methods.items()
    ]
    return pd.DataFrame(rows)


def _species_table(values: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    table = pd.DataFrame.from_dict(values, orient="index", columns=list(TABLE5_7_METHODS))
    table.index.name = "Species"
    return table


def table5() -> pd.DataFrame:
    """The paper's Table 5 (F1 per species) in the layout of
    :func:`foramlib.evaluation.reports.table5`: index "Species" (classes, then "Average"),
    one column per method."""
    return _species_table(TABLE5)


def table6() -> pd.DataFrame:
    """The paper's Table 6 (precision per species), laid out like Table 5."""
    return _species_table(TABLE6)


def table7() -> pd.DataFrame:
    """The paper's Table 7 (recall per species), laid out like Table 5."""
    return _species_table(TABLE7)


def table8() -> pd.DataFrame:
    """The paper's Table 8 in the layout of :func:`foramlib.evaluation.reports.table8`
    (a "Model" column, then the metric columns; rows in descending accuracy)."""
    rows = [(model, *values) for model, values in TABLE8.items()]
    return pd.DataFrame(rows, columns=["Model", *TABLE8_COLUMNS])
