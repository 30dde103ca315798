"""Prediction files and metrics: checks against hand-computed values on tiny examples."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from foramlib.evaluation.metrics import (
    PredictionError,
    Predictions,
    align,
    confusion,
    load_model_predictions,
    load_predictions,
    report_from_probs,
    roc_curves,
    specimen_accuracy,
    specimen_confusion,
    specimen_votes,
)
from foramlib.io.atomic import write_csv
from foramlib.learn.training import predictions_frame

NAMES = ["A", "B", "C"]


def onehotish(pred, n_classes, high=0.8):
    """Rows with `high` on the predicted class and the rest spread evenly."""
    probs = np.full((len(pred), n_classes), (1 - high) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = high
    return probs


# --------------------------------------------------------------------------- report


def test_report_matches_hand_computed_values():
    y = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 1, 0]
    r = report_from_probs("m", y, onehotish(pred, 3), NAMES)
    # class A: TP 2, FP 1, FN 1; B: TP 2, FP 1, FN 0; C: TP 0, FP 0, FN 1
    expected = pd.DataFrame(
        {
            "precision": [2 / 3, 2 / 3, 0.0],
            "recall": [2 / 3, 1.0, 0.0],
            "f1": [2 / 3, 0.8, 0.0],
            "support": [3, 2, 1],
        },
        index=pd.Index(NAMES, name="class"),
    )
    pd.testing.assert_frame_equal(r.per_class, expected, check_dtype=False)
    o = r.overall
    assert o["accuracy"] == pytest.approx(4 / 6)
    assert o["macro_precision"] == pytest.approx((2 / 3 + 2 / 3) / 3)
    assert o["macro_recall"] == pytest.approx((2 / 3 + 1) / 3)
    assert o["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 3)
    assert o["weighted_precision"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 3) / 6)
    assert o["weighted_recall"] == pytest.approx(4 / 6)
    assert o["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.8) / 6)
    assert o["top3"] == 1.0  # three classes: the true one is always in the top 3
    assert o["n"] == 6
    assert r.name == "m" and r.source == "this pipeline"


def test_report_renormalises_probabilities():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=40)
    y = rng.integers(0, 5, size=40)
    a = report_from_probs("a", y, probs, list("ABCDE"))
    b = report_from_probs("b", y, probs * 3.0, list("ABCDE"))
    assert a.overall == b.overall


def test_top3_by_hand_with_five_classes():
    names = list("ABCDE")
    probs = np.array(
        [
            [0.5, 0.2, 0.15, 0.1, 0.05],  # true 2: rank 3 -> hit
            [0.5, 0.2, 0.15, 0.1, 0.05],  # true 3: rank 4 -> miss
            [0.05, 0.1, 0.15, 0.2, 0.5],  # true 4: rank 1 -> hit
            [0.05, 0.1, 0.15, 0.2, 0.5],
        ]
    )  # true 0: rank 5 -> miss
    r = report_from_probs("m", [2, 3, 4, 0], probs, names)
    assert r.overall["top3"] == 0.5


def test_perfect_and_worst_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, size=200)
    perfect = onehotish(y, 5, high=0.9)
    r = report_from_probs("perfect", y, perfect, list("ABCDE"))
    assert r.overall["accuracy"] == 1.0
    assert r.overall["top3"] == 1.0
    assert r.overall["auc"] == 1.0
    worst = np.full((200, 5), 0.25)
    worst[np.arange(200), y] = 0.0  # the true class always ranks last
    r = report_from_probs("worst", y, worst, list("ABCDE"))
    assert r.overall["top3"] == 0.0
    assert r.overall["auc"] == 0.0


def test_random_predictions_give_chance_level_auc_and_top3():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, size=5000)
    probs = rng.dirichlet(np.ones(5), size=5000)
    r = report_from_probs("random", y, probs, list("ABCDE"))
    assert r.overall["auc"] == pytest.approx(0.5, abs=0.03)
    assert r.overall["top3"] == pytest.approx(0.6, abs=0.03)
    assert r.overall["auc"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )


def test_auc_with_an_absent_class_averages_the_present_ones():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=60)  # class 3 of 4 never occurs
    probs = rng.dirichlet(np.ones(4), size=60)
    r = report_from_probs("m", y, probs, list("ABCD"))
    by_hand = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert r.overall["auc"] == pytest.approx(by_hand)
    assert r.per_class.loc["D", "support"] == 0


def test_auc_is_none_with_a_single_class():
    r = report_from_probs("m", [1, 1], [[0.2, 0.8], [0.6, 0.4]], ["A", "B"])
    assert r.overall["auc"] is None


@pytest.mark.parametrize(
    "y, probs, message",
    [
        ([0, 1], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], r"shape \(n, 2\)"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], r"label\(s\) \[2\] outside 0\.\.1"),
        ([0, 1], [[np.nan, 1.0], [0.5, 0.5]], r"1 NaN/infinite"),
        ([0, 1], [[-0.1, 1.1], [0.5, 0.5]], r"negative"),
        ([0, 1], [[0.0, 0.0], [0.5, 0.5]], r"all-zero"),
        ([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], r"integer class indices"),
    ],
)
def test_report_refuses_bad_input(y, probs, message):
    with pytest.raises(PredictionError, match=message):
        report_from_probs("m", y, probs, ["A", "B"])


# --------------------------------------------------------------------------- confusion/ROC


def test_confusion_normalises_per_true_class():
    y = [0, 0, 0, 0, 1, 1]
    pred = [0, 0, 0, 1, 1, 0]
    np.testing.assert_allclose(
        confusion(y, pred, 3), [[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    )
    np.testing.assert_array_equal(
        confusion(y, pred, 3, normalize=False), [[3, 1, 0], [1, 1, 0], [0, 0, 0]]
    )


def test_roc_curves_per_class():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=50)  # class 3 absent: no curve
    probs = rng.dirichlet(np.ones(4), size=50)
    curves = roc_curves(y, probs)
    assert sorted(curves) == [0, 1, 2]
    for c, (fpr, tpr, area) in curves.items():
        assert fpr[0] == 0 and tpr[-1] == 1
        assert area == pytest.approx(roc_auc_score(y == c, probs[:, c]))


# --------------------------------------------------------------------------- files


def write_file(path, rows, columns=("slice_id", "specimen_id", "true", "p_A", "p_B", "p_C")):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


GOOD = [
    ["a:0", "007", "A", 0.7, 0.2, 0.1],
    ["a:1", "007", "A", 0.5, 0.4, 0.1],
    ["b:0", "012", "C", 0.1, 0.1, 0.8],
]


def test_load_reads_what_training_writes(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    dataset = SimpleNamespace(
        labels=lambda: np.array([0, 2]),
        slice_ids=lambda: ["x:00001", "y:00002"],
        index=pd.DataFrame({"specimen_id": ["007", "012"]}),
    )
    model_dir = tmp_path / "convnext_tiny"
    write_csv(predictions_frame(probs, dataset, NAMES, "val"), model_dir / "predictions_val.csv")
    (model_dir / "class_names.json").write_text('["A", "B", "C"]')
    p = load_model_predictions(model_dir, "val")
    assert p.name == "convnext_tiny"
    assert p.names == NAMES
    np.testing.assert_array_equal(p.probs, probs)
    assert p.y_true.tolist() == [0, 2] and p.y_pred.tolist() == [0, 1]
    assert list(p.frame["specimen_id"]) == ["007", "012"]  # ids stay strings
    assert p.source == str(model_dir / "predictions_val.csv")


def test_load_name_and_expected_names(tmp_path):
    path = write_file(tmp_path / "effnet" / "predictions_test.csv", GOOD)
    assert load_predictions(path).name == "effnet"
    p = load_predictions(path, name="other", names=NAMES)
    assert p.name == "other" and p.y_true.tolist() == [0, 0, 2]


def _set(rows, i, j, value):
    rows = [list(r) for r in rows]
    rows[i][j] = value
    return rows


@pytest.mark.parametrize(
    "rows, names, message",
    [
        (GOOD, ["B", "A", "C"], r"same classes in a different order: expected \['B', 'A', 'C'\]"),
        (GOOD, ["A", "B", "D"], r"missing class\(es\) 'D'; extra class\(es\) 'C'"),
        (_set(_set(GOOD, 0, 3, np.nan), 2, 4, np.inf), None, r"2 NaN/infinite probabilities in 2"),
        (_set(GOOD, 1, 3, 0.2), None, r"1 row\(s\) do not sum to 1.*row 1 summing to 0\.7"),
        (_set(GOOD, 2, 2, "Zeta"), None, r"'true' label\(s\) 'Zeta' not among"),
        (_set(GOOD, 1, 0, "a:0"), None, r"repeated slice id\(s\) 'a:0'"),
        (_set(GOOD, 0, 3, "x"), None, r"non-numeric probabilities"),
    ],
)
def test_load_refuses_bad_files(tmp_path, rows, names, message):
    path = write_file(tmp_path / "m" / "predictions_val.csv", rows)
    with pytest.raises(PredictionError, match=message) as info:
        load_predictions(path, names=names)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "columns, message",
    [
        (
            ("slice", "specimen_id", "true", "p_A", "p_B", "p_C"),
            r"lacks column\(s\) \['slice_id'\]",
        ),
        (("slice_id", "specimen_id", "true", "A", "B", "C"), r"no probability columns"),
    ],
)
def test_load_refuses_missing_columns(tmp_path, columns, message):
    path = write_file(tmp_path / "m" / "p.csv", GOOD, columns)
    with pytest.raises(PredictionError, match=message) as info:
        load_predictions(path)
    assert str(path) in str(info.value)


def test_load_refuses_missing_file(tmp_path):
    path = tmp_path / "nope" / "predictions_val.csv"
    with pytest.raises(PredictionError, match=re.escape(f"{path} does not exist")):
        load_predictions(path)


# --------------------------------------------------------------------------- align


def member(name, probs, y, names=NAMES, slice_ids=None):
    return Predictions.from_arrays(name, probs, y, names, slice_ids=slice_ids, source=f"{name}.csv")


def test_align_accepts_matching_members():
    probs = onehotish([0, 1, 2], 3)
    align([member("a", probs, [0, 1, 2]), member("b", probs[::-1], [0, 1, 2])])


@pytest.mark.parametrize(
    "other, message",
    [
        (
            member("b", onehotish([0, 1, 2], 3), [2, 1, 0], names=["C", "B", "A"]),
            r"class lists differ",
        ),
        (member("b", onehotish([0, 1], 3), [0, 1]), r"row counts differ: 3 vs 2"),
        (
            member("b", onehotish([0, 1, 2], 3), [0, 1, 2], slice_ids=["s0", "s2", "s1"]),
            r"slice ids differ at 2 row\(s\), first at row 1: 's1' vs 's2'",
        ),
        (member("b", onehotish([0, 1, 2], 3), [0, 1, 1]), r"true labels differ at 1 row"),
    ],
)
def test_align_refuses_mismatches_naming_both_files(other, message):
    first = member("a", onehotish([0, 1, 2], 3), [0, 1, 2])
    with pytest.raises(PredictionError, match=message) as info:
        align([first, other])
    assert "a.csv and b.csv" in str(info.value)


# --------------------------------------------------------------------------- specimens


def test_specimen_vote_by_hand():
    probs = [
        [0.45, 0.55],
        [0.45, 0.55],
        [0.99, 0.01],  # x (A): slices say B, B, A; mean A
        [0.6, 0.4],
        [0.3, 0.7],  # y (B): mean [0.45, 0.55] -> B
        [0.2, 0.8],
    ]  # z (A): B, wrong
    p = Predictions.from_arrays(
        "m", probs, [0, 0, 0, 1, 1, 0], ["A", "B"], specimen_ids=["x", "x", "x", "y", "y", "z"]
    )
    votes = specimen_votes(p)
    assert votes["specimen_id"].tolist() == ["x", "y", "z"]
    assert votes["true"].tolist() == ["A", "B", "A"]
    assert votes["predicted"].tolist() == ["A", "B", "B"]
    assert votes["n_slices"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(votes["confidence"], [1.89 / 3, 0.55, 0.8])
    assert specimen_accuracy(p) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(
        specimen_confusion(votes, ["A", "B"], normalize=False), [[1, 1], [0, 1]]
    )
    np.testing.assert_allclose(specimen_confusion(votes, ["A", "B"]), [[0.5, 0.5], [0, 1]])
    with pytest.raises(PredictionError, match=r"class\(es\) 'B' not in \['A', 'C'\]"):
        specimen_confusion(votes, ["A", "C"])


def test_with_probs_keeps_the_slices_and_specimens():
    p = Predictions.from_arrays(
        "m",
        [[0.9, 0.1], [0.4, 0.6]],
        [0, 1],
        ["A", "B"],
        slice_ids=["a:0", "b:0"],
        specimen_ids=["a", "b"],
        split="test",
        source="m.csv",
    )
    q = p.with_probs("Top-2", [[0.2, 0.8], [0.3, 0.7]])
    assert q.name == "Top-2" and q.slice_ids == ["a:0", "b:0"] and q.names == ["A", "B"]
    assert q.frame["specimen_id"].tolist() == ["a", "b"]
    assert q.frame["split"].tolist() == ["test", "test"]
    assert q.y_true.tolist() == [0, 1] and q.y_pred.tolist() == [1, 1]
    assert "m.csv" in q.source
    with pytest.raises(PredictionError, match=r"shape \(n, 2\), got \(1, 2\)|labels of shape"):
        p.with_probs("bad", [[0.5, 0.5]])


def test_specimen_vote_refusals():
    p = Predictions.from_arrays(
        "m", [[0.9, 0.1], [0.1, 0.9]], [0, 1], ["A", "B"], specimen_ids=["x", "x"], source="m.csv"
    )
    with pytest.raises(PredictionError, match=r"m\.csv.*specimen\(s\) 'x' have slices of more"):
        specimen_votes(p)
    p = Predictions.from_arrays("m", [[0.9, 0.1]], [0], ["A", "B"], source="m.csv")
    with pytest.raises(PredictionError, match=r"m\.csv\) have no 'specimen_id' column"):
        specimen_accuracy(p)
