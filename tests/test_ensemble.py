"""Ensembles: voting and the PatchEnsemble rule by hand; choices made on validation only."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from foramlib.evaluation.ensemble import (
    EnsembleError,
    EnsembleSpec,
    PatchEnsemble,
    build_ensembles,
    check_members,
    choose_patch,
    evaluate_spec,
    load_ensembles,
    majority_vote,
    rank_members,
    save_ensembles,
    soft_vote,
    top_k_specs,
)
from foramlib.evaluation.metrics import PredictionError, Predictions, report_from_probs

NAMES = ["A", "B", "C", "D"]


def probs_for(pred, conf, n_classes=4):
    """Rows with `conf` on the predicted class, the rest spread evenly."""
    pred = np.asarray(pred)
    conf = np.broadcast_to(np.asarray(conf, dtype=float), pred.shape)
    probs = np.repeat(((1 - conf) / (n_classes - 1))[:, None], n_classes, axis=1)
    probs[np.arange(len(pred)), pred] = conf
    return probs


def member(name, pred, conf, y, source=None):
    return Predictions.from_arrays(
        name, probs_for(pred, conf), y, NAMES, source=source or f"{name}/predictions_val.csv"
    )


# The crafted validation set: 20 slices per class.
#   M  : A, B right; 8 of 20 C slices called D (conf 0.6); D right (conf 0.6)
#        -> F1 A = B = 1, C = 0.75, D = 0.833: best macro-F1, weak = (C, D)
#   P1 : right and confident (0.9) on C and D, but calls 10 A slices B
#        -> patching M with P1 repairs every C slice: patched macro-F1 = 1
#   P2 : calls every C slice D with conf 0.95 -> patching M with it breaks C
Y = np.repeat(np.arange(4), 20)


def crafted_val():
    m_pred = Y.copy()
    m_pred[40:48] = 3
    m_conf = np.where(Y >= 2, 0.6, 0.9)
    p1_pred = Y.copy()
    p1_pred[:10] = 1
    p2_pred = Y.copy()
    p2_pred[40:60] = 3
    return {
        "M": member("M", m_pred, m_conf, Y),
        "P1": member("P1", p1_pred, 0.9, Y),
        "P2": member("P2", p2_pred, 0.95, Y),
    }


def crafted_test():
    """Same members on other slices: here P2 is perfect and M is poor."""
    m_pred = Y.copy()
    m_pred[:20] = 1
    p1_pred = Y.copy()
    p1_pred[20:40] = 0
    src = "{}/predictions_test.csv"
    return {
        "M": member("M", m_pred, 0.6, Y, src.format("M")),
        "P1": member("P1", p1_pred, 0.9, Y, src.format("P1")),
        "P2": member("P2", Y, 0.95, Y, src.format("P2")),
    }


# --------------------------------------------------------------------------- voting


def test_soft_vote_by_hand():
    a = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]
    b = [[0.2, 0.7, 0.1], [0.4, 0.4, 0.2]]
    np.testing.assert_allclose(soft_vote([a, b]), [[0.4, 0.5, 0.1], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(
        soft_vote([a, b], weights=[1, 3]), [[0.3, 0.6, 0.1], [0.35, 0.35, 0.3]]
    )


@pytest.mark.parametrize("weights", [[1], [1, -1], [0, 0], [1, np.nan]])
def test_soft_vote_refuses_bad_weights(weights):
    with pytest.raises(EnsembleError, match="weights must be 2 finite non-negative"):
        soft_vote([[[0.5, 0.5]], [[0.5, 0.5]]], weights=weights)


def test_vote_refuses_shape_mismatch():
    with pytest.raises(EnsembleError, match=r"one shape, got shapes \[\(1, 2\), \(1, 3\)\]"):
        majority_vote([[[0.5, 0.5]], [[0.2, 0.3, 0.5]]])


def test_majority_vote_by_hand():
    a = [[0.6, 0.3, 0.1]]  # votes A
    b = [[0.1, 0.5, 0.4]]  # votes B
    c = [[0.2, 0.45, 0.35]]  # votes B
    p = majority_vote([a, b, c])
    np.testing.assert_allclose(p, [[1 / 3, 2 / 3, 0.0]], atol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.argmax() == 1  # majority wins although the soft mean of A is high


def test_majority_vote_tie_is_broken_by_the_soft_mean():
    a = [[0.6, 0.0, 0.4], [0.9, 0.1, 0.0]]  # votes A, A
    b = [[0.0, 0.3, 0.7], [0.0, 0.4, 0.6]]  # votes C, C
    # row 0: soft mean A 0.30 < C 0.55 -> C; row 1: A 0.45 > C 0.30 -> A
    p = majority_vote([a, b])
    np.testing.assert_allclose(p, [[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]], atol=1e-6)
    assert p.argmax(axis=1).tolist() == [2, 0]


# --------------------------------------------------------------------------- patch rule


def test_patch_rule_switches_only_when_both_conditions_hold():
    rule = PatchEnsemble("m", "p", weak=("B",), names=("A", "B", "C"))
    main = np.array(
        [
            [0.1, 0.6, 0.3],  # top-1 weak, patch more confident -> switch
            [0.1, 0.6, 0.3],  # top-1 weak, patch less confident -> keep
            [0.6, 0.3, 0.1],  # top-1 not weak, patch more confident -> keep
            [0.1, 0.6, 0.3],
        ]
    )  # top-1 weak, patch equally confident -> keep
    patch = np.array([[0.0, 0.1, 0.9], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0], [0.6, 0.2, 0.2]])
    assert rule.switched(main, patch).tolist() == [True, False, False, False]
    expected = main.copy()
    expected[0] = patch[0]
    np.testing.assert_array_equal(rule.apply(main, patch), expected)


def test_patch_rule_with_several_weak_classes():
    rule = PatchEnsemble("m", "p", weak=("A", "C"), names=("A", "B", "C"))
    main = probs_for([0, 1, 2], 0.5, 3)
    patch = probs_for([1, 0, 1], 0.9, 3)
    assert rule.switched(main, patch).tolist() == [True, False, True]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"main": "m", "patch": "m", "weak": ("A",)}, "main and patch are the same model 'm'"),
        ({"main": "m", "patch": "p", "weak": ("Z",)}, r"weak class\(es\) \['Z'\] are not among"),
    ],
)
def test_patch_rule_refuses_bad_setup(kwargs, message):
    with pytest.raises(EnsembleError, match=message):
        PatchEnsemble(names=("A", "B"), **kwargs)


def test_patch_rule_refuses_shape_mismatch():
    rule = PatchEnsemble("m", "p", weak=("A",), names=("A", "B"))
    with pytest.raises(EnsembleError, match=r"shape \(n, 2\), got \(1, 2\) and \(1, 3\)"):
        rule.apply([[0.5, 0.5]], [[0.2, 0.3, 0.5]])


# --------------------------------------------------------------------------- choosing


def test_rank_members_by_validation_macro_f1_ties_by_name():
    val = crafted_val()
    val["M2"] = member("M2", val["M"].y_pred, val["M"].probs.max(axis=1), Y)  # copy of M
    assert rank_members(val) == ["M", "M2", "P1", "P2"]
    with pytest.raises(EnsembleError, match="unknown ranking metric 'n'"):
        rank_members(val, metric="n")


def test_choose_patch_on_crafted_validation_set():
    choice, evidence = choose_patch(crafted_val())
    assert (choice.main, choice.patch, choice.weak) == ("M", "P1", ("C", "D"))
    assert choice.names == tuple(NAMES)
    assert evidence["chosen_on"] == "validation"
    assert evidence["weak_f1"] == pytest.approx({"C": 0.75, "D": 2 * 20 / 28 / (20 / 28 + 1)})
    assert evidence["candidates"]["P1"]["macro_f1"] == 1.0
    assert evidence["candidates"]["P2"]["macro_f1"] < evidence["member_macro_f1"]["M"]
    assert evidence["candidates"]["P1"]["switched"] == 40  # every C and D slice
    json.dumps(evidence)  # recordable as is


def test_choose_patch_never_sees_test_data():
    val, test = crafted_val(), crafted_test()
    # choosing on test WOULD give another answer (P2 is the best model there) ...
    on_test, _ = choose_patch(test)
    assert on_test.main == "P2"
    # ... but the choosing functions only take validation predictions,
    for fn in (choose_patch, build_ensembles, top_k_specs, rank_members):
        params = inspect.signature(fn).parameters
        assert list(params)[0] == "val"
        assert not any("test" in p for p in params)
    # and the choice made on validation is applied to test unchanged.
    specs = build_ensembles(val, ks=(2, 3))
    patch = specs["PatchEnsemble"]
    assert (patch.main, patch.patch, patch.weak) == ("M", "P1", ("C", "D"))
    assert specs["Top-2"].members == ("M", "P1")
    rule = PatchEnsemble("M", "P1", ("C", "D"), tuple(NAMES))
    np.testing.assert_array_equal(patch.apply(test), rule.apply(test["M"].probs, test["P1"].probs))
    report = evaluate_spec("PatchEnsemble", patch, test)
    assert report.overall["accuracy"] < 1.0  # P2 alone would be perfect on test


def test_choose_patch_breaks_ties_by_name():
    val = crafted_val()
    val["P0"] = member("P0", val["P1"].y_pred, 0.9, Y)  # same predictions as P1
    choice, evidence = choose_patch(val)
    assert choice.patch == "P0"
    assert evidence["candidates"]["P0"] == evidence["candidates"]["P1"]


def test_choose_patch_with_given_main():
    choice, _ = choose_patch(crafted_val(), main="P1", n_weak=1)
    assert choice.main == "P1" and choice.weak == ("A",)  # P1's worst class on validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"main": "convnext"},
            r"main model 'convnext' has no validation predictions; "
            r"available members: \['M', 'P1', 'P2'\]",
        ),
        ({"n_weak": 0}, r"n_weak must be an integer in 1\.\.3, got 0"),
        ({"n_weak": 4}, r"n_weak must be an integer in 1\.\.3, got 4"),
    ],
)
def test_choose_patch_refusals(kwargs, message):
    with pytest.raises(EnsembleError, match=message):
        choose_patch(crafted_val(), **kwargs)


def test_choose_patch_needs_two_members():
    with pytest.raises(EnsembleError, match=r"at least 2 member\(s\).*got 1: \['M'\]"):
        choose_patch({"M": crafted_val()["M"]})


def test_members_must_align():
    val = crafted_val()
    val["P2"] = member("P2", Y[:40], 0.9, Y[:40])
    with pytest.raises(PredictionError, match="row counts differ: 80 vs 40"):
        build_ensembles(val)


# --------------------------------------------------------------------------- specs


def test_top_k_specs_and_k_too_large():
    specs = top_k_specs(crafted_val(), ks=(2, 3), mode="majority")
    assert list(specs) == ["Top-2", "Top-3"]
    assert specs["Top-3"].members == ("M", "P1", "P2") and specs["Top-3"].k == 3
    assert specs["Top-2"].mode == "majority"
    with pytest.raises(EnsembleError, match=r"Top-4 needs 4 members but only 3"):
        top_k_specs(crafted_val(), ks=(4,))
    with pytest.raises(EnsembleError, match="unknown top_k mode 'mean'"):
        top_k_specs(crafted_val(), mode="mean")


def test_build_ensembles_skips_top_k_with_too_few_members():
    specs = build_ensembles(crafted_val())
    assert list(specs) == ["Top-2", "Top-3", "PatchEnsemble"]
    for spec in specs.values():
        assert spec.evidence["skipped"] == ["Top-4 needs 4 members, 3 available"]
        assert spec.chosen_on == "validation"


@pytest.mark.parametrize(
    "name, mode", [("Top-2", "soft"), ("Top-3", "majority"), ("PatchEnsemble", "soft")]
)
def test_spec_round_trip_and_apply_equals_direct_computation(tmp_path, name, mode):
    val, test = crafted_val(), crafted_test()
    spec = build_ensembles(val, ks=(2, 3), mode=mode)[name]
    loaded = EnsembleSpec.load(spec.save(tmp_path / "spec.json"))
    assert loaded == spec
    assert EnsembleSpec.from_json(spec.to_json()) == spec
    arrays = {m: p.probs for m, p in test.items()}
    if spec.kind == "patch":
        direct = PatchEnsemble("M", "P1", ("C", "D"), tuple(NAMES)).apply(arrays["M"], arrays["P1"])
    elif mode == "soft":
        direct = (arrays["M"] + arrays["P1"]) / 2
    else:
        direct = majority_vote([arrays["M"], arrays["P1"], arrays["P2"]])
    np.testing.assert_allclose(loaded.apply(arrays), direct)
    np.testing.assert_allclose(loaded.apply(test), direct)
    report = evaluate_spec(name, loaded, test)
    expected = report_from_probs(name, Y, direct, NAMES)
    assert report.overall == expected.overall


def test_save_and_load_several_ensembles(tmp_path):
    specs = build_ensembles(crafted_val(), ks=(2, 3))
    assert load_ensembles(save_ensembles(specs, tmp_path / "ensemble.json")) == specs


def test_apply_refuses_missing_member_and_bad_shapes():
    spec = EnsembleSpec("top_k", ("M", "P1"), NAMES, k=2)
    with pytest.raises(
        EnsembleError,
        match=r"member\(s\) \['P1'\] not available; "
        r"available: \['M', 'P2'\]",
    ):
        spec.apply({"M": np.full((2, 4), 0.25), "P2": np.full((2, 4), 0.25)})
    with pytest.raises(EnsembleError, match="one shape"):
        spec.apply({"M": np.full((2, 4), 0.25), "P1": np.full((3, 4), 0.25)})
    with pytest.raises(EnsembleError, match="have 3 columns, the ensemble has 4 classes"):
        spec.apply({"M": np.full((2, 3), 0.3), "P1": np.full((2, 3), 0.3)})
    check_members(spec, {"M", "P1", "P2"})
    with pytest.raises(EnsembleError, match=r"\['P1'\] not available"):
        check_members(spec, ["M"])


def test_apply_refuses_predictions_in_another_class_order():
    spec = EnsembleSpec("top_k", ("a", "b"), ("A", "B"), k=2)
    a = Predictions.from_arrays("a", [[0.9, 0.1]], [0], ["A", "B"], source="a.csv")
    b = Predictions.from_arrays("b", [[0.9, 0.1]], [1], ["B", "A"], source="b.csv")
    with pytest.raises(EnsembleError, match=r"'b' \(b\.csv\) has classes \['B', 'A'\]"):
        spec.apply({"a": a, "b": b})


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"kind": "stacking", "members": ["a"], "names": ["A"]}', "unknown ensemble kind"),
        ('{"kind": "top_k", "members": ["a"]}', r"missing key\(s\) \['names'\]"),
        (
            '{"kind": "top_k", "members": ["a"], "names": ["A"], "extra": 1}',
            r"unknown key\(s\) \['extra'\]",
        ),
        ('{"kind": "top_k", "members": ["a", "b"], "names": ["A"], "k": 3}', "k=3 lists 2"),
        ('{"kind": "top_k", "members": "ab", "names": ["A"], "k": 2}', "must be a list"),
        (
            '{"kind": "patch", "members": ["a", "b"], "names": ["A"], "main": "a", "patch": "b",'
            ' "weak": ["Z"]}',
            r"weak class\(es\) \['Z'\]",
        ),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_refuses_malformed_files_naming_them(tmp_path, text, message):
    path = tmp_path / "ensemble.json"
    path.write_text(text)
    with pytest.raises(EnsembleError, match=message) as info:
        EnsembleSpec.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_missing_file(tmp_path):
    with pytest.raises(EnsembleError, match="does not exist"):
        EnsembleSpec.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"Top-2": {}}')
    with pytest.raises(EnsembleError, match=r"bad\.json must hold a JSON object with an "):
        load_ensembles(tmp_path / "bad.json")
