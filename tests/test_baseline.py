"""The classical baseline (HOG + logistic regression) on tiny synthetic shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from foramlib.dataset.slicing import load_slices
from foramlib.evaluation.baseline import (
    BASELINE_NAME,
    compare_to_baseline,
    comparison_table,
    fit_baseline,
    hog_features,
    predict_proba,
    run_baseline,
    split_images,
    summary,
    write_predictions,
)
from foramlib.evaluation.metrics import load_predictions, report_from_probs, specimen_accuracy
from foramlib.io.atomic import write_csv
from foramlib.learn.loader import DataError, SliceBatches
from foramlib.learn.training import predictions_frame

SIDE = 32


def shape_image(kind: str, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A bright shape of random size and position on a noisy dark background."""
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.uniform(0.42, 0.58, 2) * side
    r = rng.uniform(0.18, 0.3) * side
    if kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    elif kind == "square":
        mask = (np.abs(yy - cy) <= r * 0.9) & (np.abs(xx - cx) <= r * 0.9)
    elif kind == "hbar":
        mask = (np.abs(yy - cy) <= 2) & (np.abs(xx - cx) <= r * 1.5)
    elif kind == "vbar":
        mask = (np.abs(xx - cx) <= 2) & (np.abs(yy - cy) <= r * 1.5)
    else:
        raise AssertionError(kind)
    image = 30 + 170 * mask + rng.normal(0, 12, (side, side))
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes(kinds, n_each: int, seed: int):
    rng = np.random.default_rng(seed)
    images = np.stack([shape_image(k, rng) for k in kinds for _ in range(n_each)])
    labels = np.repeat(np.arange(len(kinds)), n_each)
    return images, labels


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("side", [24, 48, 96, 192])
def test_hog_cells_scale_with_the_image_side(side):
    # 12 px cells at 96 px -> always 8 x 8 cells, 7 x 7 blocks of 2 x 2 cells x 9 bins
    x = hog_features(np.zeros((2, side, side), np.uint8))
    assert x.shape == (2, 7 * 7 * 2 * 2 * 9) and x.dtype == np.float32


def test_hog_resizes_with_the_training_resize():
    from foramlib.dataset.preprocess import resize_slice

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 50, 40), dtype=np.uint8)
    resized = np.stack([resize_slice(im, 32) for im in images])
    np.testing.assert_array_equal(hog_features(images, size=32), hog_features(resized))


def test_hog_settings_change_the_descriptor():
    x = hog_features(np.zeros((1, 96, 96)), orientations=6, pixels_per_cell=16, cells_per_block=3)
    assert x.shape == (1, 4 * 4 * 3 * 3 * 6)


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (np.zeros((32, 32)), {}, r"shape \(n, H, W\), got shape \(32, 32\)"),
        (np.zeros((0, 32, 32)), {}, r"images is empty: got shape \(0, 32, 32\)"),
        (np.zeros((2, 32, 30)), {}, r"square unless size is given, got 32x30"),
        (np.zeros((2, 32, 32)), {"orientations": 0}, r"orientations must be .* got 0"),
        (np.zeros((2, 32, 32)), {"cells_per_block": 2.5}, r"cells_per_block .* got 2\.5"),
        (np.zeros((2, 32, 32)), {"size": 1}, r"size must be an integer >= 2, got 1"),
        (np.zeros((2, 32, 32)), {"pixels_per_cell": 20}, r"20 px cells does not fit .* 32 px"),
        (np.full((2, 32, 32), np.nan), {}, r"image 0 holds NaN"),
    ],
)
def test_hog_bad_input_is_named(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hog_features(images, **kwargs)


def test_split_images_follow_index_order():
    arrays = {
        "a.npy": np.arange(4, dtype=np.uint8)[:, None, None] * np.ones((4, 2, 2), np.uint8),
        "b.npy": 10 + np.arange(2, dtype=np.uint8)[:, None, None] * np.ones((2, 2, 2), np.uint8),
    }
    index = pd.DataFrame(
        {
            "array": ["a.npy", "b.npy", "a.npy", "a.npy", "b.npy"],
            "row": [3, 1, 0, 2, 0],
            "split": ["test", "test", "val", "test", "test"],
        }
    )
    images, rows = split_images(index, arrays, "test")
    assert images[:, 0, 0].tolist() == [3, 11, 2, 10]
    assert rows["row"].tolist() == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="'train' split has no slices"):
        split_images(index, arrays, "train")
    with pytest.raises(ValueError, match=r"\['b.npy'\] of the 'test' split"):
        split_images(index, {"a.npy": arrays["a.npy"]}, "test")


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize(
    "kinds", [("disc", "square"), ("hbar", "vbar"), ("disc", "hbar", "square", "vbar")]
)
def test_separable_shapes_are_learned(kinds):
    train_x, train_y = shapes(kinds, 30, seed=1)
    val_x, val_y = shapes(kinds, 10, seed=2)
    test_x, test_y = shapes(kinds, 10, seed=3)
    fit = fit_baseline(hog_features(train_x), train_y, hog_features(val_x), val_y)
    assert fit.pipeline.score(hog_features(test_x), test_y) >= 0.9
    assert fit.val_accuracy >= 0.9


@pytest.fixture(scope="module")
def noise_problem():
    """Random features and labels: models of different C disagree on new points."""
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(60, 40))
    train_y = rng.integers(0, 3, 60)
    val_x = rng.normal(size=(80, 40))
    return train_x, train_y, val_x


CS = (1e-3, 1e-2, 0.1, 1.0)


@pytest.mark.parametrize("target", CS)
def test_c_is_chosen_on_the_validation_labels(noise_problem, target):
    train_x, train_y, val_x = noise_problem
    alone = {c: fit_baseline(train_x, train_y, val_x, np.zeros(80, int), Cs=[c]) for c in CS}
    preds = {c: f.pipeline.predict(val_x) for c, f in alone.items()}
    others = [c for c in CS if c != target]
    assert all((preds[target] != preds[c]).mean() > 0.1 for c in others)  # it matters
    # validation labels that agree with one C's model: that C must be picked
    fit = fit_baseline(train_x, train_y, val_x, preds[target], Cs=CS)
    assert fit.C == target
    assert fit.scores["chosen"].sum() == 1
    assert fit.scores.loc[fit.scores["C"] == target, "val_accuracy"].item() == fit.val_accuracy
    assert fit.val_accuracy == fit.scores["val_accuracy"].max() > 0.9


def test_ties_go_to_the_smaller_c():
    x, y = shapes(("disc", "square"), 10, seed=4)
    features = hog_features(x)
    fit = fit_baseline(features, y, features, y, Cs=[10.0, 1.0, 0.1])
    assert fit.scores["C"].tolist() == [0.1, 1.0, 10.0]
    assert fit.scores["val_accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert fit.C == 0.1


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((0, 3)), [], np.zeros((1, 3)), [0]), {}, r"training features .* \(0, 3\)"),
        ((np.zeros((4, 3)), [0, 1], np.zeros((1, 3)), [0]), {}, r"must have shape \(4,\)"),
        ((np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((1, 2)), [0]), {}, r"width: 3 vs 2"),
        ((np.zeros((4, 3)), [1, 1, 1, 1], np.zeros((1, 3)), [0]), {}, r"fewer than two"),
        ((np.full((4, 3), np.inf), [0, 1, 0, 1], np.zeros((1, 3)), [0]), {}, "NaN or inf"),
        ((np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((1, 3)), [0]), {"Cs": []}, r"got \[\]"),
        ((np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((1, 3)), [0]), {"Cs": [1, -2]}, r"\[1, -2\]"),
        ((np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((1, 3)), [0]), {"Cs": "1"}, r"got '1'"),
        ((np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((1, 3)), [0]), {"seed": -1}, r"got -1"),
    ],
)
def test_fit_bad_input_is_named(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_baseline(*args, **kwargs)


def test_predict_proba_refuses_a_class_outside_the_list():
    fit = fit_baseline([[0.0], [1.0]], ["b", "c"], [[0.0]], ["b"], Cs=[1.0])
    with pytest.raises(ValueError, match=r"class\(es\) \['c'\] are not in the class list"):
        predict_proba(fit.pipeline, [[0.0]], ["a", "b"])


# --------------------------------------------------------------------------- on a store


def make_store(root, kinds=("disc", "square"), names=("Discus", "Quadrus"), seed=0):
    """A slice store of one array per specimen and a split index, as the stages write."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * 3 + ["val"] + ["test"] * 2
    rows = []
    for kind, species in zip(kinds, names, strict=True):
        for s, split in enumerate(splits):
            specimen = f"{species[:3].upper()}-{s}"
            n = 8
            np.save(root / f"{specimen}.npy", np.stack([shape_image(kind, rng) for _ in range(n)]))
            for r in range(n):
                rows.append(
                    {
                        "slice_id": f"{specimen}:{r:05d}",
                        "file": f"{specimen}.nii.gz",
                        "specimen_id": specimen,
                        "species": species,
                        "array": f"{specimen}.npy",
                        "row": r,
                        "split": split,
                    }
                )
    index = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return index


@pytest.fixture
def store(tmp_path):
    return tmp_path, make_store(tmp_path)


def test_predictions_have_the_training_stage_format(store):
    root, index = store
    names = ["Quadrus", "Discus"]  # a class order other than sorted is kept
    run = run_baseline(index, root, names, size=None, Cs=(0.01, 1.0))
    assert set(run.predictions) == {"val", "test"}
    _, arrays = load_slices(root, index=index)
    for split, frame in run.predictions.items():
        rows = index[index["split"] == split].reset_index(drop=True)
        probs = frame[[f"p_{n}" for n in names]].to_numpy()
        expected = predictions_frame(probs, SliceBatches(rows, arrays, names), names, split)
        pd.testing.assert_frame_equal(frame, expected)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
        assert (frame["split"] == split).all()
    test = run.predictions["test"]
    assert (test["true"] == test["predicted"]).mean() >= 0.9
    assert run.fit.C in (0.01, 1.0) and run.settings["n_features"] == 1764
    assert set(run.seconds) == {"features", "fit", "predict"}


def test_prediction_files_are_read_by_the_metrics_code(store, tmp_path):
    root, index = store
    run = run_baseline(index, root, size=48, Cs=(0.1,))
    path = tmp_path / "predictions" / "baseline_hog_lr_test.csv"
    write_csv(run.predictions["test"], path)
    p = load_predictions(path, name=BASELINE_NAME, names=["Discus", "Quadrus"])
    assert p.name == BASELINE_NAME and len(p) == 32
    assert specimen_accuracy(p) == 1.0
    report = report_from_probs(p.name, p.y_true, p.probs, p.names)
    assert report.overall["accuracy"] >= 0.9


def test_test_labels_never_reach_the_fit(store):
    root, index = store
    run = run_baseline(index, root, size=None)
    # swap the species of the test slices: the fit and its choice of C cannot change
    swapped = index.copy()
    test = swapped["split"] == "test"
    swapped.loc[test, "species"] = swapped.loc[test, "species"].map(
        {"Discus": "Quadrus", "Quadrus": "Discus"}
    )
    again = run_baseline(swapped, root, size=None)
    assert again.fit.C == run.fit.C
    pd.testing.assert_frame_equal(again.fit.scores, run.fit.scores)
    for split in ("val", "test"):
        a, b = run.predictions[split], again.predictions[split]
        pd.testing.assert_frame_equal(a.filter(like="p_"), b.filter(like="p_"))
    assert (again.predictions["test"]["true"] != run.predictions["test"]["true"]).all()


def test_a_split_that_cannot_train_is_refused(store):
    root, index = store
    no_val = index[index["split"] != "val"]
    with pytest.raises(DataError, match="'val' split is empty"):
        run_baseline(no_val, root)
    with pytest.raises(DataError, match="'Tertius' has no slices"):
        run_baseline(index, root, ["Discus", "Quadrus", "Tertius"])


def test_margin_over_the_baseline_in_points():
    names = ["A", "B"]
    y = [0, 0, 1, 1]
    final = report_from_probs("final", y, [[1, 0], [1, 0], [0, 1], [0, 1]], names)
    base = report_from_probs("base", y, [[1, 0], [0, 1], [1, 0], [0, 1]], names)
    assert compare_to_baseline(final, base) == {"accuracy": 50.0, "macro_f1": 50.0}


def test_files_comparison_and_summary_for_the_evaluate_stage(store, tmp_path):
    root, index = store
    run = run_baseline(index, root, size=None, Cs=(0.1,))
    paths = write_predictions(run, tmp_path / "predictions")
    assert {s: p.name for s, p in paths.items()} == {
        "val": "baseline_hog_lr_val.csv",
        "test": "baseline_hog_lr_test.csv",
    }
    base = load_predictions(paths["test"], name=BASELINE_NAME)
    report = report_from_probs(BASELINE_NAME, base.y_true, base.probs, base.names)
    perfect = report_from_probs("Top-2", base.y_true, np.eye(2)[base.y_true], base.names)
    table = comparison_table(perfect, 1.0, report, 0.5)
    assert table["Model"].tolist() == ["Top-2 (final)", BASELINE_NAME, "Margin (points)"]
    margin = table.set_index("Model").loc["Margin (points)"]
    assert margin["Specimen accuracy"] == 50.0
    assert margin["Slice accuracy"] == round(100 * (1 - report.overall["accuracy"]), 1)
    entry = summary(run, report, 0.5, perfect)
    assert entry["model"] == BASELINE_NAME and entry["C"] == 0.1
    assert entry["accuracy"] == report.overall["accuracy"]
    assert entry["margin_points"]["accuracy"] == margin["Slice accuracy"]
