"""Accuracy by kind of section, and the virtual shells' axes it rests on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from foramlib.dataset.slicing import prepare_volume
from foramlib.evaluation import sections
from foramlib.virtual import collection as virtual


@pytest.mark.parametrize(
    ("normal", "axis", "angle"),
    [
        ((0, 0, 1), (0, 0, 1), 90.0),  # plane perpendicular to the axis: equatorial
        ((0, 0, -3), (0, 0, 1), 90.0),  # the normal's sign and length do not matter
        ((1, 0, 0), (0, 0, 1), 0.0),  # plane contains the axis: axial
        ((0, 1, 0), (0, 0, 5), 0.0),
        ((1, 0, 1), (0, 0, 1), 45.0),
        ((0, np.sin(np.radians(30)), np.cos(np.radians(30))), (0, 0, 1), 60.0),
    ],
)
def test_plane_axis_angle_known_cases(normal, axis, angle):
    assert sections.plane_axis_angle([normal], [axis])[0] == pytest.approx(angle, abs=1e-9)


@pytest.mark.parametrize(
    ("normals", "axes", "match"),
    [
        ([[0, 0, 1]], [[0, 0]], r"axes must have shape \(n, 3\), got \(1, 2\)"),
        ([[0, 0, 0]], [[0, 0, 1]], "normals must be finite non-zero"),
        ([[0, 0, np.nan]], [[0, 0, 1]], "normals must be finite non-zero"),
        ([[0, 0, 1], [1, 0, 0]], [[0, 0, 1]], "2 normals but 1 axes"),
    ],
)
def test_plane_axis_angle_refuses_bad_vectors(normals, axes, match):
    with pytest.raises(ValueError, match=match):
        sections.plane_axis_angle(normals, axes)


def _rows(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "specimen_id": rng.choice(["a", "b", "c"], n),
            "file": "scan.nii.gz",
            "fossil_fraction": rng.uniform(0.02, 0.6, n),
            "normal_x": rng.normal(size=n),
            "normal_y": rng.normal(size=n),
            "normal_z": rng.normal(size=n),
        }
    )


def test_area_bins_hold_equal_counts_and_the_right_accuracy():
    rows = _rows(100)
    big = rows["fossil_fraction"].to_numpy() > np.median(rows["fossil_fraction"])
    table = sections.accuracy_by_area(rows, {"m": big, "all": np.ones(100, bool)}, n_bins=2)
    assert table["slices"].tolist() == [50, 50]
    assert table["m"].tolist() == [0.0, 1.0]
    assert table["all"].tolist() == [1.0, 1.0]
    assert table["specimens"].tolist() == [
        rows.loc[~big, "specimen_id"].nunique(),
        rows.loc[big, "specimen_id"].nunique(),
    ]


def test_angle_bins_follow_the_shell_axis_of_each_file():
    # two files whose shells lie along different array axes: the same plane is axial
    # in one scan and equatorial in the other
    rows = pd.DataFrame(
        {
            "specimen_id": ["a", "b"],
            "file": ["a.nii", "b.nii"],
            "normal_x": [0.0, 0.0],
            "normal_y": [0.0, 0.0],
            "normal_z": [1.0, 1.0],
        }
    )
    axes = {"a.nii": np.array([0.0, 0.0, 1.0]), "b.nii": np.array([1.0, 0.0, 0.0])}
    table = sections.accuracy_by_angle(rows, {"m": np.array([True, False])}, axes)
    assert table["sections"].tolist() == ["0–15°", "15–30°", "30–45°", "45–60°", "60–75°", "75–90°"]
    assert table["slices"].tolist() == [1, 0, 0, 0, 0, 1]
    assert table.loc[0, "m"] == 0.0 and table.loc[5, "m"] == 1.0
    assert table.loc[1:4, "m"].isna().all()


def test_section_table_without_axes_has_only_the_area_rows():
    rows = _rows(30)
    table = sections.section_table(rows, {"m": np.ones(30, bool)})
    assert set(table["by"]) == {sections.AREA}
    assert table["slices"].sum() == 30
    with_axes = sections.section_table(rows, {"m": np.ones(30, bool)}, {"scan.nii.gz": (0, 0, 1)})
    assert list(dict.fromkeys(with_axes["by"])) == [sections.AREA, sections.ANGLE]
    assert with_axes.groupby("by")["slices"].sum().tolist() == [30, 30]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda r, c, a: (r.drop(columns="fossil_fraction"), c, a),
            "lack the column 'fossil_fraction'",
        ),
        (lambda r, c, a: (r.drop(columns="file"), c, a), "lack the column 'file'"),
        (lambda r, c, a: (r, c, {}), r"no shell axis for 1 file\(s\), e.g. \['scan.nii.gz'\]"),
        (lambda r, c, a: (r, {"m": c["m"][:-1]}, a), r"correct\['m'\] must be 10 booleans"),
        (lambda r, c, a: (r, {"m": c["m"].astype(int)}, a), r"correct\['m'\] must be 10 booleans"),
        (lambda r, c, a: (r, {}, a), "correct must name at least one model"),
        (
            lambda r, c, a: (r.assign(fossil_fraction=["x"] + [0.1] * 9), c, a),
            "column 'fossil_fraction' must hold finite numbers, got 'x'",
        ),
    ],
)
def test_section_table_refuses_bad_input_by_name(change, match):
    rows, correct, axes = change(_rows(10), {"m": np.ones(10, bool)}, {"scan.nii.gz": (0, 0, 1)})
    with pytest.raises(ValueError, match=match):
        sections.section_table(rows, correct, axes)


@pytest.mark.parametrize("edges", [(0, 45), (10, 90), (0, 60, 45, 90)])
def test_angle_edges_must_cover_0_to_90_in_order(edges):
    rows = _rows(5)
    with pytest.raises(ValueError, match="edges must"):
        sections.accuracy_by_angle(rows, {"m": np.ones(5, bool)}, {"scan.nii.gz": (0, 0, 1)}, edges)


def test_shell_axes_lie_along_the_rendered_shells():
    """Alveolina is a spindle coiled around its long axis: in each rendered scan, the
    fossil voxels the slicer finds (:func:`prepare_volume`, the pipeline's own
    segmentation) spread most along the recovered axis."""
    plans = virtual.plan_collection(virtual.tiny_taxa(), seed=11)
    axes = virtual.shell_axes(plans)
    assert set(axes) == {p.file for p in plans}
    for plan in (p for p in plans if p.species == "Alveolina"):
        vol, _ = virtual.render_scan(plan, shape=48, supersample=1)
        points = prepare_volume(vol, name=plan.file)[3].astype(float)
        _, vectors = np.linalg.eigh(np.cov(points.T))  # eigenvalues ascending
        longest = vectors[:, -1]
        axis = axes[plan.file]
        assert np.linalg.norm(axis) == pytest.approx(1.0)
        assert abs(longest @ axis) > 0.9, (plan.file, longest, axis)
