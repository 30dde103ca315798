"""foramlib.inference.genus_check: "is it one of these genera?", and where it is reported."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from test_classify import NAMES, SIZE, disc_image, write_workspace

from foramlib.app import render
from foramlib.inference import classify, genus_check, scan
from foramlib.inference.errors import ArtefactError
from foramlib.inference.genus_check import GenusCheck, GenusCheckError, fit_genus_check


def clusters(n_per, centres, seed=0, spread=0.3):
    """Feature rows around the given unit directions (one cluster per 'genus')."""
    rng = np.random.default_rng(seed)
    rows = [c + spread * rng.normal(size=(n_per, len(c))) for c in centres]
    labels = np.repeat(np.arange(len(centres)), n_per)
    return np.concatenate(rows), labels


EYE = np.eye(6)
KNOWN = [EYE[0], EYE[1], EYE[2]]


@pytest.fixture(scope="module")
def check():
    train, labels = clusters(60, KNOWN, seed=0)
    val, _ = clusters(20, KNOWN, seed=1)
    return fit_genus_check(train, val, keep=0.9, k=3, labels=labels, member="m1", size=SIZE)


def test_threshold_keeps_the_asked_share_of_validation():
    train, labels = clusters(60, KNOWN, seed=0)
    val, _ = clusters(40, KNOWN, seed=1)
    for keep in (0.8, 0.95):
        c = fit_genus_check(train, val, keep=keep, k=3, labels=labels)
        kept = c.known(val).mean()
        assert keep - 1 / len(val) <= kept <= keep + 1 / len(val)
        assert c.info["n_train"] == len(train) and c.info["n_val"] == len(val)


def test_sections_of_an_unseen_cluster_are_flagged_and_seen_ones_kept(check):
    new_specimens, _ = clusters(30, KNOWN, seed=5)
    unknown, _ = clusters(30, [EYE[3], EYE[4]], seed=6)
    assert check.known(new_specimens).mean() >= 0.8
    assert not check.known(unknown).any()
    v = check.verdict(unknown[0])
    assert not v.known and v.novelty > v.threshold and "may not be one of these" in v.message
    assert check.verdict(EYE[0]).known
    assert json.dumps(v.as_dict())


def test_novelty_is_scale_free_and_the_kth_neighbours_distance():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float16)
    c = GenusCheck(ref, 2, 0.5, 0.95, {})
    # (2, 0) normalises to (1, 0): 1st neighbour at 0, 2nd at sqrt(2)
    assert c.novelty([[2.0, 0.0]])[0] == pytest.approx(np.sqrt(2), rel=1e-3)
    assert c.novelty([[7.0, 0.0]])[0] == pytest.approx(c.novelty([[1.0, 0.0]])[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keep": 0.4}, "keep = 0.4 is invalid"),
        ({"keep": 1.0}, "keep = 1.0 is invalid"),
        ({"keep": True}, "keep = True is invalid"),
        ({"k": 0}, "k = 0 is invalid"),
        ({"k": 2.5}, "k = 2.5 is invalid"),
        ({"max_reference": 2, "k": 5}, "max_reference = 2 is invalid"),
        ({"labels": np.zeros(3)}, "labels has 3 rows, train has 180"),
    ],
)
def test_fit_rejects_bad_settings(kwargs, match):
    train, _ = clusters(60, KNOWN)
    val, _ = clusters(10, KNOWN, seed=1)
    with pytest.raises(GenusCheckError, match=match):
        fit_genus_check(train, val, **kwargs)


def test_fit_rejects_too_little_or_mismatched_data():
    train, _ = clusters(60, KNOWN)
    with pytest.raises(GenusCheckError, match="at least 20 training and 10 validation"):
        fit_genus_check(train[:10], train[:30])
    with pytest.raises(GenusCheckError, match="differ in width: 6 and 4"):
        fit_genus_check(train, train[:30, :4])
    with pytest.raises(GenusCheckError, match="NaN or infinite"):
        fit_genus_check(np.where(train > 0.5, np.nan, train), train[:30])


def test_a_big_reference_is_cut_down_evenly_over_the_genera():
    labels = np.repeat([0, 1, 2], [100, 10, 100])
    rows = genus_check._reference_rows(labels, 30, seed=0)
    counts = np.bincount(labels[rows])
    assert counts.tolist() == [10, 10, 10] and len(np.unique(rows)) == 30
    np.testing.assert_array_equal(rows, genus_check._reference_rows(labels, 30, seed=0))
    # a small genus keeps all it has; the rest goes to the others
    rows = genus_check._reference_rows(np.repeat([0, 1, 2], [100, 4, 100]), 30, seed=0)
    assert np.bincount(np.repeat([0, 1, 2], [100, 4, 100])[rows]).tolist() == [13, 4, 13]
    feats = np.random.default_rng(0).normal(size=(210, 6))
    c = fit_genus_check(feats, feats[:20], labels=labels, max_reference=30)
    assert c.reference.shape == (30, 6) and c.info["n_reference"] == 30


def test_save_load_round_trip_and_bad_files(check, tmp_path):
    path = check.save(tmp_path / "g.npz")
    back = GenusCheck.load(path)
    assert (back.k, back.keep, back.threshold) == (check.k, check.keep, check.threshold)
    assert back.info == check.info and back.member == "m1"
    np.testing.assert_array_equal(back.reference, check.reference)
    probe = np.random.default_rng(3).normal(size=(5, 6))
    np.testing.assert_allclose(back.novelty(probe), check.novelty(probe))
    with pytest.raises(GenusCheckError, match="no genus check here"):
        GenusCheck.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(GenusCheckError, match="not a readable genus check"):
        GenusCheck.load(tmp_path / "bad.npz")
    header = json.dumps({"format": 99, "k": 1, "keep": 0.9, "threshold": 0.1})
    np.savez(tmp_path / "old.npz", header=np.array(header), reference=np.eye(2))
    with pytest.raises(GenusCheckError, match="another format"):
        GenusCheck.load(tmp_path / "old.npz")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reference": np.zeros(4)}, "reference has shape"),
        ({"k": 9}, r"k = 9 is invalid: expected an integer in \[1, 3\]"),
        ({"keep": 1.5}, "keep must be in"),
        ({"threshold": float("nan")}, "threshold finite"),
    ],
)
def test_check_rejects_inconsistent_fields(kwargs, match):
    fields = dict(reference=np.eye(3), k=1, threshold=0.5, keep=0.9, info={})
    with pytest.raises(GenusCheckError, match=match):
        GenusCheck(**{**fields, **kwargs})


def test_novelty_of_the_wrong_width_says_which_member(check):
    with pytest.raises(GenusCheckError, match="expected 6 features per row .member 'm1'., got 4"):
        check.novelty(np.ones((2, 4)))


def test_scan_verdict_is_the_median_rule(check):
    t = check.threshold
    v = check.scan_verdict([t / 2, t * 3, t * 3])
    assert not v["known"] and v["flagged"] == 2 and v["sections"] == 3
    assert check.scan_verdict([t / 2, t / 2, t * 3])["known"]
    with pytest.raises(GenusCheckError, match="at least one section"):
        check.scan_verdict([])


def test_measure_counts_sections_and_scans(check):
    genuine, _ = clusters(20, KNOWN, seed=7)
    unknown, _ = clusters(20, [EYE[4]], seed=8)
    table = genus_check.measure(
        check, genuine, np.repeat(["s1", "s2", "s3"], 20), unknown, np.repeat(["u1", "u2"], 10)
    )
    rows = table.set_index("family")
    assert rows.loc["known genera: scans", "inputs"] == 3
    assert rows.loc["known genera: scans", "accepted"] == 1.0
    assert rows.loc["unknown taxa (virtual): sections", "inputs"] == 20
    assert rows.loc["unknown taxa (virtual): scans", "accepted"] == 0.0
    assert rows.loc["unknown taxa (virtual): scans", "met"]
    assert set(table["goal"]) == {">= 0.95", "<= 0.05"}


# --------------------------------------------------------------------------- features


def test_features_are_what_the_head_reads():
    from foramlib.learn.models import build_model

    model = build_model("tiny_cnn", input_size=SIZE, n_classes=3, seed=0)
    fm = genus_check.feature_model(model)
    x = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE, 1)).astype(np.float32)
    raw = np.asarray(fm(x))
    head = np.asarray(model.get_layer("predictions")(raw))
    np.testing.assert_allclose(head, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)
    emb = genus_check.embed(fm, x[..., 0].astype(np.uint8))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(GenusCheckError, match="cleaned uint8 slices"):
        genus_check.embed(fm, x[..., 0])


def test_unknown_taxa_sections_are_virtual_pseudo_taxa_cut_like_the_collection():
    from foramlib.dataset.preprocess import PreprocessConfig
    from foramlib.dataset.slicing import SlicingConfig

    cut = SlicingConfig(preprocess=PreprocessConfig(size=32), offsets_per_orientation=1)
    kwargs = dict(n_taxa=2, specimens_per_taxon=2, sections_per_specimen=3, shape=40)
    images, rows = genus_check.unknown_taxa_sections(cut, seed=1, supersample=1, **kwargs)
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32)
    assert len(rows) == len(images) > 0
    assert rows["specimen_id"].str.startswith("P-Shell-").all()
    assert rows["taxon"].nunique() == 2 and not set(rows["taxon"]) & set(NAMES)
    again, _ = genus_check.unknown_taxa_sections(cut, seed=1, supersample=1, **kwargs)
    np.testing.assert_array_equal(images, again)
    other, _ = genus_check.unknown_taxa_sections(cut, seed=2, supersample=1, **kwargs)
    assert other.shape != images.shape or not np.array_equal(other, images)


# --------------------------------------------------------------------------- served


def _workspace_with_check(tmp_path):
    ws = write_workspace(tmp_path)
    clf = classify.Classifier.from_workspace(ws)
    rng = np.random.default_rng(0)
    discs = [
        clf.prepare(disc_image(value=int(rng.integers(150, 250)), radius=int(r)))[0]
        for r in rng.integers(18, 30, 40)
    ]
    feats = clf.features(np.stack(discs))
    model = ws / "models" / "m1" / "model.keras"
    c = fit_genus_check(
        feats[:30], feats[30:], keep=0.9, k=3, member="m1",
        model_sha256=genus_check.file_digest(model), size=SIZE,
    )  # fmt: skip
    c.save(ws / classify.GENUS_CHECK)
    return ws, c


def test_classifier_reports_the_genus_check(tmp_path):
    ws, c = _workspace_with_check(tmp_path)
    clf = classify.Classifier.from_workspace(ws)
    assert clf.sources["genus_check"] == classify.GENUS_CHECK and clf.genus_check is not None
    clean, info = clf.prepare(disc_image())
    pred = clf.predict(clean, preprocessing=info)
    assert pred.novelty is not None
    assert pred.novelty.novelty == pytest.approx(float(c.novelty(clf.features(clean))[0]))
    assert pred.metadata["genus_check"]["known"] == pred.novelty.known
    # a check that flags everything: the genus is still given, the warning beside it
    clf.genus_check = GenusCheck(c.reference, c.k, 1e-9, c.keep, c.info)
    pred = clf.predict(clean, preprocessing=info)
    assert pred.maybe_unknown_genus and pred.genus in NAMES
    box = render.verdict_html(pred)
    assert "foram-unknown-genus-box" in box and "Maybe not one of these genera" in box


def test_stale_or_foreign_genus_check_is_not_used(tmp_path):
    ws, c = _workspace_with_check(tmp_path)
    (ws / "models" / "m1" / "model.keras").write_bytes(
        (ws / "models" / "m2" / "model.keras").read_bytes()
    )  # m1 trained again since
    clf = classify.Classifier.from_workspace(ws)
    assert clf.genus_check is None and "trained again" in clf.sources["genus_check"]
    GenusCheck(c.reference, c.k, c.threshold, c.keep, {**c.info, "member": "m2"}).save(
        ws / classify.GENUS_CHECK
    )
    clf = classify.Classifier.from_workspace(ws)
    assert clf.genus_check is None and "fitted on 'm2'" in clf.sources["genus_check"]
    (ws / classify.GENUS_CHECK).write_bytes(b"garbage")
    clf = classify.Classifier.from_workspace(ws)
    assert clf.genus_check is None and clf.sources["genus_check"].startswith("unusable")
    with pytest.raises(ArtefactError, match="reads 'm2''s features, the main model is 'm1'"):
        classify.Classifier(
            clf.spec, clf.models, clf.preprocess,
            genus_check=GenusCheck(c.reference, 1, 0.1, 0.9, {"member": "m2"}),
        )  # fmt: skip


def test_without_a_genus_check_nothing_is_claimed(tmp_path):
    clf = classify.Classifier.from_workspace(write_workspace(tmp_path))
    assert "missing" in clf.sources["genus_check"]
    pred = clf.predict(clf.prepare(disc_image())[0])
    assert pred.novelty is None and not pred.maybe_unknown_genus
    assert pred.metadata["genus_check"] is None
    assert "foram-unknown-genus-box" not in render.verdict_html(pred)


def test_a_scan_is_flagged_by_its_median_section(tmp_path):
    from test_scan import shell

    ws, c = _workspace_with_check(tmp_path)
    clf = classify.Classifier.from_workspace(ws)
    answer = scan.classify_scan(clf, shell(), n_sections=8)
    check = answer.metadata["genus_check"]
    assert check["sections"] == len(answer.images) == len(answer.sections["novelty"])
    assert check["median_novelty"] == pytest.approx(answer.sections["novelty"].median(), abs=1e-3)
    flagging = copy.copy(clf)
    flagging.genus_check = GenusCheck(c.reference, c.k, 1e-9, c.keep, c.info)
    answer = scan.classify_scan(flagging, shell(), n_sections=8)
    assert (
        answer.maybe_unknown_genus
        and json.loads(json.dumps(answer.as_dict()))["maybe_unknown_genus"]
    )
    assert "NOT ONE OF THESE GENERA?" in scan.format_answer(answer)
    assert "foram-unknown-genus-box" in render.scan_uncertain_html(answer)


def test_render_details_name_the_genus_check():
    pred = classify.Prediction([("A", 0.9)], {"A": 0.9}, False, None, {"genus_check": None})
    assert render._genus_txt(None).startswith("none in this workspace")
    md = {"known": False, "novelty": 0.6, "threshold": 0.4, "keep": 0.95}
    said = render._genus_txt(md)
    assert said.startswith("maybe not one of these genera: 0.60 from the nearest training")
    assert "where the limit is 0.40" in said
    assert render.unknown_genus_html(pred) == ""


def test_cli_says_when_a_section_may_be_of_another_genus(tmp_path, capsys):
    import cv2

    from foramlib.tools.cli import main

    ws, c = _workspace_with_check(tmp_path)
    image = tmp_path / "disc.png"
    cv2.imwrite(str(image), disc_image())
    assert main(["classify", str(image), "--workspace", str(ws), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["genus_check"]) == {"known", "novelty", "threshold", "keep"}
    assert out["maybe_unknown_genus"] is (not out["genus_check"]["known"])
    # the same workspace with a limit no section reaches
    GenusCheck(c.reference, c.k, 1e-9, c.keep, c.info).save(ws / classify.GENUS_CHECK)
    assert main(["classify", str(image), "--workspace", str(ws)]) == 0
    assert "NOT ONE OF THESE GENERA? this may not be one of these genera" in capsys.readouterr().out
    assert main(["classify", str(image), "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["maybe_unknown_genus"] is True
