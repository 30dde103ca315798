"""Which sections a model reads: accuracy by a section's fossil area and by the angle
between its plane and the shell's axis.

The paper scores its slices as one population. A section's content depends on where it
cuts the specimen: a grazing cut shows a sliver of wall, a cut through the centre the
whole chamber arrangement, and palaeontologists name most genera from oriented (axial
or equatorial) sections rather than oblique ones. Splitting the test accuracy by these
two properties shows where a model works and where it stops. The fossil area is known
for every slice store (the slicer records it); the angle only where the shell's axis is
known, as in the virtual collection (:func:`foramlib.virtual.collection.shell_axes`).

Examples
--------
>>> import numpy as np, pandas as pd
>>> rows = pd.DataFrame({"specimen_id": ["a", "a", "b", "b"],
...                      "fossil_fraction": [0.03, 0.30, 0.04, 0.25]})
>>> correct = {"m": np.array([False, True, False, True])}
>>> accuracy_by_area(rows, correct, n_bins=2)[["sections", "slices", "m"]]
        sections  slices    m
0  0.030 – 0.145       2  0.0
1  0.145 – 0.300       2  1.0
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "ANGLE_EDGES",
    "plane_axis_angle",
    "accuracy_by_angle",
    "accuracy_by_area",
    "section_table",
]

#: Bin edges (degrees) of the angle between a section's plane and the shell's axis.
ANGLE_EDGES = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0)
#: The ``by`` column of :func:`section_table`: which breakdown a row belongs to.
AREA = "fossil area (share of the slice)"
ANGLE = "plane to shell axis"


def plane_axis_angle(normals, axes) -> np.ndarray:
    """Angle in degrees between each section's plane and its shell's axis.

    0° means the plane contains the axis (an axial section); 90° that it is
    perpendicular to it (an equatorial section of a coiled test, a transverse one of a
    cone). The sign of either vector does not matter.

    Parameters
    ----------
    normals, axes : array_like, shape (n, 3)
        Plane normals and shell axes in the same frame; neither needs unit length.

    Examples
    --------
    >>> plane_axis_angle([[0, 0, 1], [1, 0, 0], [1, 0, 1]], [[0, 0, 2]] * 3).round(1)
    array([90.,  0., 45.])
    """
    n = np.asarray(normals, dtype=np.float64)
    a = np.asarray(axes, dtype=np.float64)
    for name, v in (("normals", n), ("axes", a)):
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"{name} must have shape (n, 3), got {v.shape}")
        if not np.isfinite(v).all() or (np.linalg.norm(v, axis=1) == 0).any():
            raise ValueError(f"{name} must be finite non-zero 3-vectors")
    if len(n) != len(a):
        raise ValueError(f"{len(n)} normals but {len(a)} axes")
    cos = np.abs(np.einsum("ij,ij->i", n, a))
    cos /= np.linalg.norm(n, axis=1) * np.linalg.norm(a, axis=1)
    # the angle between a line and a plane is 90° minus the line's angle to the normal
    return np.degrees(np.arcsin(np.clip(cos, 0.0, 1.0)))


def _check_correct(correct: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    if not correct:
        raise ValueError("correct must name at least one model")
    out = {}
    for name, flags in correct.items():
        flags = np.asarray(flags)
        if flags.shape != (n,) or flags.dtype != bool:
            raise ValueError(
                f"correct[{name!r}] must be {n} booleans (one per row), got "
                f"shape {flags.shape} of {flags.dtype}"
            )
        out[name] = flags
    return out


def _by_bins(rows: pd.DataFrame, values, edges, labels, correct) -> pd.DataFrame:
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(labels) - 1)
    table = []
    for i, label in enumerate(labels):
        inside = which == i
        table.append(
            {
                "sections": label,
                "slices": int(inside.sum()),
                "specimens": int(rows.loc[inside, "specimen_id"].nunique()),
                **{
                    m: float(f[inside].mean()) if inside.any() else np.nan
                    for m, f in correct.items()
                },
            }
        )
    return pd.DataFrame(table)


def accuracy_by_area(
    rows: pd.DataFrame, correct: Mapping[str, np.ndarray], n_bins: int = 5
) -> pd.DataFrame:
    """Accuracy of each model in bins of equal count over the sections' fossil area.

    Parameters
    ----------
    rows : DataFrame
        One row per slice, with ``specimen_id`` and ``fossil_fraction`` (the share of
        the slice the fossil covers, as the slicer records it).
    correct : mapping of str to bool array
        Per model, whether each row's top-1 answer is right.
    n_bins : int
        Number of bins; their edges are quantiles, so each holds about as many slices.

    Returns
    -------
    DataFrame
        ``sections`` (the range of fossil area), ``slices``, ``specimens`` and one
        accuracy column per model.
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
    area = _column(rows, "fossil_fraction")
    correct = _check_correct(correct, len(rows))
    edges = np.unique(np.quantile(area, np.linspace(0, 1, int(n_bins) + 1)))
    if len(edges) < 2:  # every slice has the same area
        edges = np.array([area.min(), area.max()])
    labels = [f"{lo:.3f} – {hi:.3f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return _by_bins(rows, area, edges, labels, correct)


def accuracy_by_angle(
    rows: pd.DataFrame,
    correct: Mapping[str, np.ndarray],
    axes: Mapping[str, np.ndarray],
    edges=ANGLE_EDGES,
) -> pd.DataFrame:
    """Accuracy of each model by the angle between the section's plane and the shell's axis.

    Parameters
    ----------
    rows : DataFrame
        One row per slice, with ``file``, ``specimen_id`` and the plane's
        ``normal_x``, ``normal_y``, ``normal_z`` (as the slicer records them).
    correct : mapping of str to bool array
        Per model, whether each row's top-1 answer is right.
    axes : mapping of str to 3-vector
        Shell axis of each file (:func:`foramlib.virtual.collection.shell_axes`).
    edges : sequence of float
        Increasing bin edges in degrees from 0 to 90.

    Returns
    -------
    DataFrame
        ``sections`` (the range of angles, e.g. ``0–15°``), ``slices``, ``specimens``
        and one accuracy column per model.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or edges[0] != 0 or edges[-1] != 90:
        raise ValueError(f"edges must run from 0 to 90 degrees, got {edges.tolist()}")
    if (np.diff(edges) <= 0).any():
        raise ValueError(f"edges must increase, got {edges.tolist()}")
    if "file" not in rows:
        raise ValueError("rows lack the column 'file' (which scan each slice was cut from)")
    files = rows["file"].astype(str)
    missing = sorted(set(files) - set(axes))
    if missing:
        raise ValueError(f"no shell axis for {len(missing)} file(s), e.g. {missing[:3]}")
    normals = np.column_stack([_column(rows, f"normal_{c}") for c in "xyz"])
    angle = plane_axis_angle(normals, np.stack([np.asarray(axes[f], float) for f in files]))
    correct = _check_correct(correct, len(rows))
    labels = [f"{lo:g}–{hi:g}°" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return _by_bins(rows, angle, edges, labels, correct)


def section_table(
    rows: pd.DataFrame,
    correct: Mapping[str, np.ndarray],
    axes: Mapping[str, np.ndarray] | None = None,
    n_area_bins: int = 5,
) -> pd.DataFrame:
    """Both breakdowns in one table, a ``by`` column naming each.

    The angle rows are left out when `axes` is None (a collection whose shells'
    orientation in the scan is unknown).

    Examples
    --------
    >>> rows = pd.DataFrame({"specimen_id": ["a", "b"], "file": ["a.nii", "b.nii"],
    ...     "fossil_fraction": [0.1, 0.2], "normal_x": [0, 1], "normal_y": [0, 0],
    ...     "normal_z": [1, 0]})
    >>> axes = {"a.nii": [0, 0, 1], "b.nii": [0, 0, 1]}
    >>> t = section_table(rows, {"m": np.array([True, False])}, axes, n_area_bins=1)
    >>> t.groupby("by", sort=False)["slices"].sum().to_dict()
    {'fossil area (share of the slice)': 2, 'plane to shell axis': 2}
    >>> t.loc[t["slices"] > 0, ["sections", "m"]].values.tolist()
    [['0.100 – 0.200', 0.5], ['0–15°', 0.0], ['75–90°', 1.0]]
    """
    parts = [accuracy_by_area(rows, correct, n_area_bins).assign(by=AREA)]
    if axes is not None:
        parts.append(accuracy_by_angle(rows, correct, axes).assign(by=ANGLE))
    table = pd.concat(parts, ignore_index=True)
    return table[["by", *[c for c in table.columns if c != "by"]]]


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    if name not in rows:
        raise ValueError(f"rows lack the column {name!r}")
    values = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = rows.loc[~np.isfinite(values), name].iloc[0]
        raise ValueError(f"column {name!r} must hold finite numbers, got {bad!r}")
    return values
