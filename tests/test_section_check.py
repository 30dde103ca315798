"""foramlib.inference.section_check: "does this look like a foraminifer section?" on tiny arrays."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.inference import section_check as sc

SIZE = 48


def shell(rng, size=SIZE):
    """A cleaned slice like the slicer's: a bright ring (the wall) around darker
    chambers split by a septum, on a 0 background."""
    img = np.zeros((size, size), np.uint8)
    c = (size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3)))
    axes = (int(rng.integers(14, 21)), int(rng.integers(11, 18)))
    angle = float(rng.uniform(0, 180))
    cv2.ellipse(img, c, axes, angle, 0, 360, int(rng.integers(60, 90)), -1)
    cv2.ellipse(img, c, axes, angle, 0, 360, int(rng.integers(200, 250)), 2)
    cv2.line(img, (c[0] - axes[0] // 2, c[1]), (c[0] + axes[0] // 2, c[1]), 220, 1)
    return img


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train = np.stack([shell(rng) for _ in range(200)])
    val = np.stack([shell(rng) for _ in range(100)])
    return sc.fit_section_check(train, val, keep=0.95, components=2, seed=0), rng


# --------------------------------------------------------------------------- colour


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.full((8, 8), 90, np.uint8), 0.0),
        (np.dstack([np.full((8, 8), 90, np.uint8)] * 3), 0.0),  # grey saved as RGB
        (np.dstack([np.full((8, 8), 90, np.uint16)] * 3 + [np.zeros((8, 8), np.uint16)]), 0.0),
        (
            np.dstack(
                [
                    np.full((8, 8), 255, np.uint8),
                    np.zeros((8, 8), np.uint8),
                    np.zeros((8, 8), np.uint8),
                ]
            ),
            1.0,
        ),  # fmt: skip
        (np.dstack([np.full((8, 8), 0.5), np.full((8, 8), 0.5), np.zeros((8, 8))]), 1.0),
        (np.zeros((8, 8, 3), np.float32), 0.0),  # all equal: no range to speak of
    ],
)
def test_colourfulness(image, expected):
    assert sc.colourfulness(image) == pytest.approx(expected)


def test_colourfulness_of_a_faint_tint_is_under_the_limit():
    grey = np.random.default_rng(1).integers(0, 255, (32, 32)).astype(np.uint8)
    tinted = np.dstack([grey, grey, np.clip(grey.astype(int) + 2, 0, 255).astype(np.uint8)])
    assert 0 < sc.colourfulness(tinted) < sc.COLOUR_LIMIT


# --------------------------------------------------------------------------- features


def test_features_are_named_and_finite():
    f = sc.section_features(shell(np.random.default_rng(2)))
    assert f.shape == (len(sc.FEATURE_NAMES),) and np.isfinite(f).all()
    assert len(set(sc.FEATURE_NAMES)) == len(sc.FEATURE_NAMES)


def test_features_describe_shape():
    square = np.zeros((40, 40), np.uint8)
    square[10:30, 10:30] = 200
    two = square.copy()
    two[10:30, 19:21] = 0  # cut in two pieces
    f1 = dict(zip(sc.FEATURE_NAMES, sc.section_features(square).tolist(), strict=True))
    f2 = dict(zip(sc.FEATURE_NAMES, sc.section_features(two).tolist(), strict=True))
    assert f1["area_share"] == pytest.approx(0.25)
    assert f1["solidity"] == pytest.approx(1.0, abs=0.02)
    assert f2["log_pieces"] == pytest.approx(np.log1p(2))
    assert f2["largest_piece_share"] == pytest.approx(0.5)


def test_blank_slice_has_zero_features():
    assert not sc.section_features(np.zeros((16, 16), np.uint8)).any()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((16, 16), np.float32), np.zeros((16, 16, 3), np.uint8), np.zeros((4, 4), np.uint8)],
)
def test_features_refuse_what_is_not_a_cleaned_slice(bad):
    with pytest.raises(sc.SectionCheckError, match="expected a cleaned 2-D uint8 slice"):
        sc.section_features(bad)


def test_features_of_stack_match_one_by_one_in_threads():
    rng = np.random.default_rng(3)
    stack = np.stack([shell(rng) for _ in range(80)])
    one = np.stack([sc.section_features(s) for s in stack])
    np.testing.assert_allclose(sc.features_of(stack, n_jobs=2), one)


def test_features_of_refuses_empty_stack():
    with pytest.raises(sc.SectionCheckError, match="non-empty stack"):
        sc.features_of(np.zeros((0, 8, 8), np.uint8))


# --------------------------------------------------------------------------- the check


def test_threshold_keeps_the_asked_share_of_validation(fitted):
    check, _ = fitted
    rng = np.random.default_rng(0)
    for _ in range(200):  # replay the training draws
        shell(rng)
    val = np.stack([shell(rng) for _ in range(100)])
    assert check.accepts(sc.features_of(val)).mean() == pytest.approx(0.95, abs=0.011)
    assert check.info == {"n_train": 200, "n_val": 100, "components": 2, "seed": 0, "size": SIZE}


def test_new_sections_pass_and_other_inputs_do_not(fitted):
    check, rng = fitted
    new = np.stack([shell(np.random.default_rng(100 + i)) for i in range(60)])
    assert check.accepts(sc.features_of(new)).mean() >= 0.85
    noise = rng.integers(0, 256, (20, SIZE, SIZE)).astype(np.uint8)
    square = np.zeros((1, SIZE, SIZE), np.uint8)
    square[0, 4:44, 4:44] = 255
    text = np.zeros((SIZE, SIZE), np.uint8)
    cv2.putText(text, "Ab", (2, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 255, 2)
    others = np.concatenate([noise, square, text[None]])
    assert not check.accepts(sc.features_of(others)).any()


def test_verdicts(fitted):
    check, _ = fitted
    ok = check.verdict(shell(np.random.default_rng(7)))
    assert ok.looks_like_section and ok.reason == "ok" and ok.score <= ok.threshold
    assert ok.message == "looks like the training sections"
    noise = np.random.default_rng(8).integers(0, 256, (SIZE, SIZE)).astype(np.uint8)
    bad = check.verdict(noise)
    assert (bad.looks_like_section, bad.reason) == (False, "unlike")
    assert "does not look like a foraminifer section" in bad.message
    colour = check.verdict(shell(np.random.default_rng(7)), colour=0.3)
    assert (colour.looks_like_section, colour.reason, colour.score) == (False, "colour", None)
    assert "colour picture" in colour.message
    assert json.loads(json.dumps(bad.as_dict()))["reason"] == "unlike"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"keep": 1.0}, "keep = 1.0 is invalid"),
        ({"keep": 0.3}, "keep = 0.3 is invalid"),
        ({"components": 0}, "components = 0 is invalid"),
        ({"components": True}, "components = True is invalid"),
    ],
)
def test_fit_rejects_bad_settings(kwargs, match):
    rng = np.random.default_rng(0)
    stack = np.stack([shell(rng) for _ in range(30)])
    with pytest.raises(sc.SectionCheckError, match=match):
        sc.fit_section_check(stack, stack[:10], **kwargs)


def test_fit_needs_enough_slices():
    rng = np.random.default_rng(0)
    stack = np.stack([shell(rng) for _ in range(19)])
    with pytest.raises(sc.SectionCheckError, match="at least 20 training and 10 validation"):
        sc.fit_section_check(stack, stack)


def test_components_shrink_with_few_slices(fitted):
    rng = np.random.default_rng(0)
    stack = np.stack([shell(rng) for _ in range(150)])
    assert sc.fit_section_check(stack, stack[:20], components=8).info["components"] == 1


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip(fitted, tmp_path):
    check, _ = fitted
    path = check.save(tmp_path / "check.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.npz"]  # no temp left
    loaded = sc.SectionCheck.load(path)
    rng = np.random.default_rng(5)
    x = sc.features_of(np.stack([shell(rng) for _ in range(10)]))
    np.testing.assert_allclose(loaded.scores(x), check.scores(x))
    assert (loaded.threshold, loaded.keep, loaded.info) == (check.threshold, 0.95, check.info)


def test_load_reports_missing_foreign_and_stale_files(fitted, tmp_path):
    with pytest.raises(sc.SectionCheckError, match="no section check here"):
        sc.SectionCheck.load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(sc.SectionCheckError, match="not a readable section check"):
        sc.SectionCheck.load(tmp_path / "junk.npz")
    check, _ = fitted
    path = check.save(tmp_path / "check.npz")
    with np.load(path) as z:
        arrays = dict(z)
    header = json.loads(str(arrays["header"]))
    header["features"] = header["features"][:-1]
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(sc.SectionCheckError, match="another format or feature set"):
        sc.SectionCheck.load(tmp_path / "old.npz")


def test_inconsistent_arrays_are_refused(fitted):
    check, _ = fitted
    with pytest.raises(sc.SectionCheckError, match="means has shape"):
        sc.SectionCheck(
            check.centre, check.scale, check.weights, check.means[:, :3], check.covariances,
            check.threshold, check.keep, check.info,
        )  # fmt: skip
    with pytest.raises(sc.SectionCheckError, match="features per row"):
        check.scores(np.zeros((2, 5)))


# --------------------------------------------------------------------------- probes


def test_probe_sets_are_seeded_offline_raw_images():
    a = sc.probe_sets(3, n_noise=10, per_picture=1, per_volume=2)
    b = sc.probe_sets(3, n_noise=10, per_picture=1, per_volume=2)
    assert list(a) == ["noise", "pictures", "unrelated volumes"]
    assert [len(v) for v in a.values()] == [10, len(sc.PROBE_PICTURES), 10]
    for family in a:
        for x, y in zip(a[family], b[family], strict=True):
            assert x.dtype == np.uint8 and min(x.shape[:2]) >= 16
            np.testing.assert_array_equal(x, y)
    colour = [sc.colourfulness(p) > sc.COLOUR_LIMIT for p in a["pictures"]]
    assert 0 < sum(colour) < len(colour)  # some colour photos, some grey pictures


def test_screen_counts_every_outcome(fitted):
    check, _ = fitted
    base = PreprocessConfig(size=SIZE)
    good = shell(np.random.default_rng(9))  # a stored slice: taken as it is
    colour = np.dstack([good, good, good // 3])
    blank = np.zeros((64, 64), np.uint8)  # the preprocessing refuses it
    noise = np.random.default_rng(9).integers(0, 256, (64, 64)).astype(np.uint8)
    counts = sc.screen(check, [good, colour, blank, noise], base)
    assert counts == {
        "n": 4, "accepted": 1, "refused": 2, "colour": 1, "unreadable": 1,
        "accepted_share": 0.25,
    }  # fmt: skip


def test_measure_reports_goals(fitted):
    check, _ = fitted
    rng = np.random.default_rng(11)
    genuine = np.stack([shell(rng) for _ in range(20)])
    genera = ["A"] * 10 + ["B"] * 10
    noise = [rng.integers(0, 256, (64, 64)).astype(np.uint8) for _ in range(5)]
    table = sc.measure(check, genuine, genera, {"noise": noise}, PreprocessConfig(size=SIZE))
    assert table["family"].tolist()[0] == "test sections (genuine)"
    assert table["family"].tolist()[1].startswith("worst genus (")
    row = table.set_index("family").loc["noise"]
    assert (row["inputs"], row["accepted"], bool(row["met"])) == (5, 0.0, True)
