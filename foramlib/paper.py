"""Numbers printed in the paper, transcribed for side-by-side comparison.

Source: Halimi et al., "ForamDeepSlice: A High-Accuracy Deep Learning Framework for
Foraminifera Species Classification from 2D Micro-CT Slices", arXiv:2512.00912,
Tables 2 and 3. These are reference values to show next to the pipeline's own; no
computation uses them as results.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["TABLE2", "TABLE3", "table2", "table3"]

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
