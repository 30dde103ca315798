"""foramlib.app.dashboard: the App's pages and handlers, driven without a browser.

The workspace is built in a temporary folder (tiny untrained models, a hand-made
ensemble, a small slice store); the 3D collection is a fake with the real
``foramlib.matching.index.Collection`` interface, and ``foramlib.matching.search.match`` is replaced
by a recorder where the test is about what the page passes and shows.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import re
import time
from dataclasses import replace

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile
from test_classify import NAMES, SIZE, disc_image, write_workspace

from foramlib.app import dashboard
from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.inference import classify, scan
from foramlib.inference.calibration import Calibration
from foramlib.io import uploads
from foramlib.matching.search import Match


def png(img) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def visible(widget) -> bool:
    return widget.layout.display != "none"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = write_workspace(tmp_path_factory.mktemp("dash"))
    rows = []
    store = ws / "data" / "slices"
    for k, genus in enumerate(NAMES):
        arrays = []
        for r in range(3):
            cleaned, _ = classify.prepare(
                disc_image(radius=12 + 4 * r + k), base=PreprocessConfig(size=SIZE)
            )
            arrays.append(cleaned)
            rows.append(
                dict(
                    slice_id=f"S{k}:{r:05d}",
                    specimen_id=f"S{k}",
                    species=genus,
                    array=f"S{k}.npy",
                    row=r,
                    split="test" if r < 2 else "train",
                )
            )
        np.save(store / f"S{k}.npy", np.stack(arrays))
    (ws / "data" / "split").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(ws / "data" / "split" / "index.csv", index=False)
    metrics = json.loads((ws / "results" / "metrics.json").read_text())
    metrics["models"]["PatchEnsemble"] = dict(accuracy=0.5, macro_f1=0.4, top3=0.9, auc=0.7, n=6)
    metrics["test_slices"] = 6
    (ws / "results" / "metrics.json").write_text(json.dumps(metrics))
    return ws


@pytest.fixture(scope="module")
def loaded(workspace):
    """One classifier shared by the tests (loading Keras models takes seconds)."""
    return classify.Classifier.from_workspace(workspace)


@pytest.fixture
def app(workspace, loaded):
    return dashboard.App(workspace, classifier=loaded, collection_loader=_fake_loader)


# --------------------------------------------------------------------------- fake 3D side


class FakeCollection:
    """The foramlib.matching.index.Collection interface, with two tiny volumes."""

    def __init__(self):
        vol = np.zeros((24, 24, 24), np.float32)
        vol[6:18, 6:18, 8:16] = 1.0
        self._volumes = {"S0": vol, "S1": vol[::-1].copy(), "S2": vol.transpose(2, 1, 0).copy()}
        self.index = "the-index"
        self.volumes = {k: v for k, v in self._volumes.items()}
        self.specimens = pd.DataFrame(
            {"specimen_id": ["S0", "S1", "S2"], "species": NAMES, "file": ["a", "b", "c"]}
        )

    @property
    def genera(self):
        return sorted(self.specimens["species"].unique())

    def volume(self, specimen_id):
        return self._volumes[specimen_id]


def _fake_loader(workspace):
    return FakeCollection()


@pytest.fixture
def recorder(monkeypatch):
    """Replace matching.match: record the call, report progress, return two matches."""
    calls = []

    def fake_match(index, image, **kwargs):
        calls.append(dict(index=index, image=image, **kwargs))
        kwargs["progress"](0.5, "half way")
        scores = dict(dice=0.9, ncc=0.8, ssim=0.7, descriptor=0.6, combined=0.8)
        img = np.zeros((32, 32), np.uint8)
        img[8:24, 8:24] = 200
        return [
            Match("S1", "Beta", (0.0, 0.0, 1.0), 1.5, 30.0, scores, img),
            Match("S0", "Alpha", (1.0, 0.0, 0.0), -2.0, 0.0, dict(scores, combined=0.5), img),
        ]

    monkeypatch.setattr("foramlib.matching.search.match", fake_match)
    return calls


# --------------------------------------------------------------------------- pages


def test_app_has_the_contract_classes(app):
    classes = set(app._dom_classes)
    assert "foram-app" in classes
    for name in ("home", "classify", "match"):
        assert f"foram-nav-{name}" in app.nav[name]._dom_classes
        assert f"foram-page-{name}" in app.pages[name]._dom_classes
    for widget, cls in [
        (app.upload, "foram-upload"),
        (app.gallery, "foram-gallery"),
        (app.sensitivity, "foram-sensitivity"),
        (app.clahe, "foram-clahe"),
        (app.sharpen, "foram-sharpen"),
        (app.preview, "foram-preview"),
        (app.classify_button, "foram-classify-button"),
        (app.top5, "foram-top5"),
        (app.probabilities, "foram-probabilities"),
        (app.uncertain, "foram-uncertain"),
        (app.gradcam, "foram-gradcam"),
        (app.metadata, "foram-metadata"),
        (app.message, "foram-message"),
        (app.to_match, "foram-to-match"),
        (app.volume_axis, "foram-volume-axis"),
        (app.volume_index, "foram-volume-index"),
        (app.match_genera, "foram-match-genera"),
        (app.match_specimens, "foram-match-specimens"),
        (app.match_predicted, "foram-match-predicted"),
        (app.match_button, "foram-match-button"),
        (app.match_progress, "foram-match-progress"),
        (app.match_results, "foram-match-results"),
        (app.match_view, "foram-match-view"),
        (app.match_message, "foram-match-message"),
    ]:
        assert cls in widget._dom_classes, cls
    assert (app.sensitivity.min, app.sensitivity.max) == (0.05, 0.95)


@pytest.mark.parametrize("page", ["classify", "match", "home"])
def test_only_the_active_page_is_visible(app, page):
    app.nav[page].click()
    assert app.active_page == page
    assert [n for n, p in app.pages.items() if visible(p)] == [page]


def test_landing_page_names_the_virtual_collection_and_performance(app):
    assert "virtual" in app.dataset.value
    assert "PatchEnsemble" in app.performance.value and "50.0%" in app.performance.value


def test_gallery_lists_test_slices_with_their_genus(app):
    labels = [label for label, value in app.gallery.options if value is not None]
    assert labels[0] == "Alpha — S0 #0"
    assert len(labels) == 6  # the train rows are not offered
    assert {lab.split(" — ")[0] for lab in labels} == set(NAMES)


# --------------------------------------------------------------------------- classify page


def test_gallery_slice_is_classified_as_in_the_test_run(app, loaded):
    app.gallery.value = "S1:00001"
    assert app.preview.value[:4] == b"\x89PNG" and app.cleaned_info["source"] == "stored slice"
    stored = np.load(app.workspace / "data" / "slices" / "S1.npy")[1]
    np.testing.assert_array_equal(app.cleaned, stored)
    app.classify_button.click()
    pred = app.prediction
    assert pred is not None
    assert '<tr class="foram-rank-1">' in app.top5.value
    assert pred.genus in app.top5.value.split('class="foram-rank-1"')[1].split("</tr>")[0]
    assert f"{100 * pred.confidence:.1f}%" in app.top5.value
    assert app.probabilities.value[:4] == b"\x89PNG"
    assert app.gradcam.value[:4] == b"\x89PNG"
    assert "m1" in app.metadata.value and "stored slice" in app.metadata.value
    assert visible(app.uncertain) == pred.uncertain
    assert ("uncertain" in app.uncertain.value.lower()) == pred.uncertain
    assert "Beta" in app.message.value  # the true genus is stated


def test_noise_and_photos_get_the_not_a_section_verdict(workspace, loaded):
    import copy

    from test_classify import _check_for

    checked = copy.copy(loaded)
    checked.section_check = _check_for(SIZE)
    app = dashboard.App(workspace, classifier=checked, collection_loader=_fake_loader)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    app.load_upload("noise.png", png(noise))
    app.classify()
    assert app.prediction.not_a_section and visible(app.uncertain)
    assert "foram-not-section-box" in app.uncertain.value
    assert "does not look like a foraminifer section" in app.uncertain.value
    assert "foram-msg-warn" in app.message.value
    assert "Section check</th><td>refused" in app.metadata.value
    rgb = cv2.cvtColor(
        np.dstack([disc_image(), disc_image() // 3, disc_image() // 2]), cv2.COLOR_RGB2BGR
    )
    app.load_upload("photo.png", png(rgb))
    app.classify()
    assert "colour picture" in app.uncertain.value
    app.load_upload("scan.png", png(disc_image()))
    app.classify()
    assert not app.prediction.not_a_section
    assert "foram-not-section-box" not in app.uncertain.value
    assert visible(app.uncertain) == app.prediction.uncertain
    assert "Section check</th><td>passed" in app.metadata.value


def test_classify_button_is_busy_while_classifying(app, monkeypatch):
    seen = []
    real = app._classifier.predict

    def predict(*args, **kwargs):
        b = app.classify_button
        seen.append((b.disabled, b.description, b.icon))
        return real(*args, **kwargs)

    monkeypatch.setattr(app._classifier, "predict", predict)
    app.gallery.value = "S1:00001"
    app.classify_button.click()
    assert seen == [(True, "Classifying…", "hourglass-half")]
    b = app.classify_button
    assert (b.disabled, b.description, b.icon) == (False, "Classify", "check")


def test_match_button_is_busy_while_searching_and_the_time_is_the_wait(app, monkeypatch):
    import foramlib.matching.search as matching

    seen = []
    scores = dict(dice=0.9, ncc=0.6, ssim=0.7, descriptor=0.6, combined=0.7)
    found = [Match("S1", "Beta", (0.0, 0.0, 1.0), 1.5, 30.0, scores, np.zeros((32, 32), np.uint8))]

    def search(*args, **kwargs):
        b = app.match_button
        seen.append((b.disabled, b.description, b.icon))
        return found

    monkeypatch.setattr(matching, "match", search)
    slow = app.collection

    def slow_collection():  # loading the collection is part of the wait
        time.sleep(0.3)
        return slow()

    monkeypatch.setattr(app, "collection", slow_collection)
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    app.match_button.click()
    assert seen == [(True, "Searching…", "hourglass-half")]
    b = app.match_button
    assert not b.disabled and b.description != "Searching…"
    said = app.match_message.value
    assert float(said.split(" best matches in ")[1].split(" s")[0]) >= 0.3, said


def test_models_status_and_the_wait_the_user_sees(workspace):
    app = dashboard.App(workspace, collection_loader=_fake_loader)
    assert "Loading the models in the background" in app.models_status.value
    app.gallery.value = "S1:00001"
    app.classify()  # no preload: the click waits for the models, and the page says so
    assert "Models loaded and ready" in app.models_status.value
    message = app.message.value
    assert "of it loading the models" in message, message
    waited = float(message.split(" in ")[1].split(" s")[0])
    loading = float(message.split("(")[1].split(" s of it")[0])
    assert waited >= loading > 0
    fresh = dashboard.App(workspace, collection_loader=_fake_loader)
    fresh.preload().join()
    assert "Models loaded and ready" in fresh.models_status.value
    fresh.gallery.value = "S1:00001"
    fresh.classify()
    assert "of it loading the models" not in fresh.message.value


def test_images_stay_hidden_until_they_hold_a_picture(app):
    """An empty image is drawn as a broken-image icon: none is shown before it has one."""
    images = ("raw_view", "preview", "probabilities", "gradcam", "match_query_view")
    assert not any(visible(getattr(app, name)) for name in images)
    app.load_upload("scan.png", png(disc_image()))
    assert visible(app.preview) and visible(app.raw_view)
    assert not visible(app.gradcam) and not visible(app.probabilities)
    app.classify()
    assert visible(app.gradcam) and visible(app.probabilities)
    app.load_upload("notes.txt", b"not an image")  # a bad upload clears the pictures
    assert not any(visible(getattr(app, name)) for name in images[:4])


def test_an_uploaded_stored_slice_gets_the_stored_slices_answer(app, workspace):
    """Every test slice of every genus, saved as PNG and uploaded, is classified exactly
    as when picked from the gallery: the stored array, not a second preprocessing."""
    index = pd.read_csv(workspace / "data" / "split" / "index.csv")
    test = index[index["split"] == "test"]
    assert test["species"].nunique() == len(NAMES)
    for row in test.itertuples():
        stored = np.load(workspace / "data" / "slices" / row.array)[row.row]
        app.gallery.value = row.slice_id
        app.classify()
        picked = app.prediction
        app.load_upload(f"{row.slice_id}.png", png(stored))
        assert "classified as it is" in app.preview_info.value, app.preview_info.value
        np.testing.assert_array_equal(app.cleaned, stored)
        app.classify()
        uploaded = app.prediction
        assert uploaded.genus == picked.genus
        assert uploaded.probabilities == pytest.approx(picked.probabilities, abs=1e-6)
        assert uploaded.metadata["preprocessing"]["source"] == "stored slice"
    # a raw section still gets the training preprocessing, and the preview says so
    app.load_upload("scan.png", png(disc_image()))
    assert "cut out and cleaned as the training slices were" in app.preview_info.value


def test_uncertain_notice_follows_the_calibration(app, loaded, monkeypatch):
    app.gallery.value = "S0:00000"
    for threshold, expected in [(1.0, True), (0.0, False)]:
        cal = Calibration(threshold, 0.8, 0.8, 0.5, 40, True, "rule")
        monkeypatch.setattr(loaded, "calibration", cal)
        app.classify()
        assert visible(app.uncertain) is expected
        assert ("uncertain" in app.uncertain.value.lower()) is expected


def test_upload_updates_the_preview_and_options_change_it(app):
    app.load_upload("scan.png", png(disc_image()))
    first = app.preview.value
    assert first[:4] == b"\x89PNG" and "Ready" in app.message.value
    app.clahe.value = True
    second = app.preview.value
    assert second != first
    app.sharpen.value = True
    assert app.preview.value != second
    app.sensitivity.value = 0.8
    assert app.cleaned_info["config"]["sensitivity"] == 0.8
    app.crop_cols.value = (0.0, 50.0)
    assert app.cleaned_info["crop"] == [0.0, 1.0, 0.0, 0.5]
    app.reset_options()
    assert app.cleaned_info["config"]["clahe"] is False and app.sensitivity.value == 0.5


def test_upload_through_the_widget(app):
    content = png(disc_image())
    app.upload.value = (
        {
            "name": "w.png",
            "type": "image/png",
            "size": len(content),
            "content": memoryview(content),
            "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        },
    )
    assert app.source_name == "w.png" and app.preview.value[:4] == b"\x89PNG"
    assert app.upload.value == ()  # cleared, so the same file can be uploaded again
    # the button names the file in use, not the widget's "(0)" count
    assert 'content: "w.png — upload another"' in app.upload_label.value
    app.gallery.value = "S0:00000"
    assert 'content: "Upload a slice or volume"' in app.upload_label.value


def test_sixteen_bit_tiff_upload(app):
    img = disc_image(dtype=np.uint16, value=50000)
    app.load_upload("scan16.tif", cv2.imencode(".tif", img)[1].tobytes())
    assert app.cleaned is not None and app.cleaned.shape == (SIZE, SIZE)
    app.classify()
    assert '<tr class="foram-rank-1">' in app.top5.value


@pytest.mark.parametrize(
    ("name", "data", "text"),
    [
        ("notes.txt", b"just some text", "not a readable image"),
        ("blank.png", png(np.zeros((60, 60), np.uint8)), "blank"),
        ("tiny.png", png(np.eye(8, dtype=np.uint8) * 255), "too small"),
    ],
)
def test_bad_uploads_give_a_message_and_the_app_keeps_working(app, name, data, text):
    app.load_upload(name, data)
    assert text in app.message.value and name in app.message.value
    assert app.cleaned is None and not visible(app.results_box)
    app.classify()
    assert "Nothing to classify" in app.message.value
    app.load_upload("good.png", png(disc_image()))
    app.classify()
    assert '<tr class="foram-rank-1">' in app.top5.value


def test_oversized_upload_is_refused(workspace, loaded):
    small = dashboard.App(workspace, classifier=loaded, max_upload_mb=0.001)
    small.load_upload("big.png", png(np.random.default_rng(0).integers(0, 255, (200, 200))))
    assert "too large" in small.message.value


def test_upload_limit_from_the_environment(workspace, loaded, monkeypatch):
    monkeypatch.setenv("FORAM_MAX_UPLOAD_MB", "0.001")
    app = dashboard.App(workspace, classifier=loaded)
    app.load_upload("big.png", png(np.random.default_rng(0).integers(0, 255, (200, 200))))
    assert "too large" in app.message.value


def test_nifti_volume_upload_picks_a_section(app):
    vol = np.zeros((40, 44, 30), np.float32)
    yy, xx = np.mgrid[:40, :44]
    for z in range(30):
        vol[..., z] = ((yy - 20) ** 2 + (xx - 22) ** 2 < (6 + z // 3) ** 2) * 100.0
    data = gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes())
    app.load_upload("scan.nii.gz", data)
    assert visible(app.volume_box)
    assert (app.volume_axis.value, app.volume_index.value, app.volume_index.max) == (2, 15, 29)
    assert app.source.shape == (40, 44)
    before = app.cleaned_info["fraction"]
    app.volume_index.value = 29
    assert app.cleaned_info["fraction"] > before  # the disc grows along z
    app.volume_axis.value = 0
    assert app.source.shape == (44, 30) and app.volume_index.max == 39
    app.load_upload("plain.png", png(disc_image()))
    assert not visible(app.volume_box)


def test_missing_models_say_what_to_run(tmp_path):
    app = dashboard.App(tmp_path)
    assert "dvc repro" in app.message.value and "make demo" in app.message.value
    assert app.classify_button.disabled
    assert "models are not available" in app.models_status.value  # not "loading"
    assert "dvc repro" in app.performance.value and "dvc repro" in app.dataset.value
    app.load_upload("scan.png", png(disc_image()))  # preview still works
    assert app.preview.value[:4] == b"\x89PNG"
    app.classify()
    assert "dvc repro" in app.message.value and app.top5.value == ""


def test_missing_index_says_what_to_run(tmp_path):
    app = dashboard.App(tmp_path)
    app.show_page("match")
    assert "dvc repro index" in app.match_message.value
    assert app.match_button.disabled


def test_workspace_of_the_notebook_folder_is_the_repository(workspace):
    (workspace / "dashboard").mkdir(exist_ok=True)
    assert dashboard.resolve_workspace(workspace / "dashboard") == workspace.resolve()


# --------------------------------------------------------------------------- match page


def test_match_page_lists_genera_and_filters_specimens(app):
    app.show_page("match")
    assert list(app.match_genera.options) == NAMES
    assert [v for _, v in app.match_specimens.options] == ["S0", "S1", "S2"]
    app.match_genera.value = ("Beta",)
    assert [v for _, v in app.match_specimens.options] == ["S1"]


def test_match_without_a_query_explains(app, recorder):
    app.show_page("match")
    app.match_button.click()
    assert "No slice to match" in app.match_message.value and recorder == []


def test_find_in_3d_runs_the_matcher_and_shows_the_plane(app, recorder):
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    assert app.active_page == "match" and app.match_query_view.value[:4] == b"\x89PNG"
    app.match_specimens.value = ("S1",)
    app.match_button.click()
    (call,) = recorder
    assert call["specimens"] == ["S1"] and call["species"] is None
    assert call["index"] == "the-index" and call["volumes"]["S0"].shape == (24, 24, 24)
    np.testing.assert_array_equal(call["image"], app.source)  # the raw section
    assert app.match_progress.value == 1.0
    first = app.match_results.value.split('<tr class="foram-match-1">')[1].split("</tr>")[0]
    assert "S1" in first and "<td>0.80</td>" in first  # the overall score, 2 decimals
    assert app.match_view.value[:4] == b"\x89PNG"
    view = app.match_view.value
    app.match_choice.value = 1
    assert app.match_view.value != view


def test_a_disagreement_between_classifier_and_3d_search_is_pointed_out(app, recorder):
    app.load_upload("scan.png", png(disc_image()))
    app.classify()
    app.to_match.click()
    accuracy = app.metrics["models"][app.metrics["final"]]["accuracy"]
    # the fake search's best match is a Beta section, the second an Alpha one
    for top5, disagree in (
        ([("Alpha", 0.7), ("Beta", 0.2), ("Gamma", 0.1)], True),
        ([("Beta", 0.7), ("Alpha", 0.2), ("Gamma", 0.1)], False),
    ):
        app.prediction = replace(app.prediction, top5=top5)
        app.match_button.click()
        note = app.match_message.value
        assert ("disagree" in note) is disagree, note
        if disagree:
            assert "foram-msg-warn" in note and "the classifier says Alpha (70.0%)" in note
            assert "section of Beta (specimen S1; 1 of the 2 best matches are Beta)" in note
            assert f"about {100 * accuracy:.1f}% of the slices" in note
    # restricted to some specimens, the answer is not the whole collection's: no note
    app.prediction = replace(app.prediction, top5=[("Alpha", 0.7), ("Beta", 0.3)])
    app.match_specimens.value = ("S0",)
    app.match_button.click()
    assert "disagree" not in app.match_message.value


def test_the_message_says_which_reading_of_the_slice_matched(app, monkeypatch):
    import foramlib.matching.search as matching

    scores = dict(dice=0.9, ncc=0.6, ssim=0.7, descriptor=0.6, combined=0.7)
    read = Match("S1", "Beta", (0.0, 0.0, 1.0), 1.5, 30.0, scores, np.zeros((32, 32), np.uint8))
    for reading, note in (("as given", False), ("brightest class removed", True)):
        found = [replace(read, reading=reading)]
        monkeypatch.setattr(matching, "match", lambda *a, found=found, **k: found)
        app.load_upload("scan.png", png(disc_image()))
        app.to_match.click()
        app.run_match()
        said = (
            "matched weakly; these matches are for another reading of it: brightest class removed"
        )
        assert (said in app.match_message.value) == note, app.match_message.value


def test_the_calibrated_match_limit_gives_a_plain_verdict(app, monkeypatch):
    import foramlib.matching.search as matching
    from foramlib.matching.reliability import MatchCheck

    scores = dict(dice=0.9, ncc=0.6, ssim=0.7, descriptor=0.6, combined=0.7)
    found = [Match("S1", "Beta", (0.0, 0.0, 1.0), 1.5, 30.0, scores, np.zeros((32, 32), np.uint8))]
    monkeypatch.setattr(matching, "match", lambda *a, **k: found)
    limit = app.workspace / "results" / "match_check.json"
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    try:
        app.run_match()  # no limit in the workspace: no verdict
        assert "reliable match" not in app.match_message.value.lower()
        for threshold, said, kind in (
            (0.6, "Reliable", "info"),
            (0.8, "No reliable", "warn"),
        ):
            MatchCheck(threshold, 0.95, (0.5, 0.9, 0.95), (False, True, True)).save(limit)
            app.run_match()
            note = app.match_message.value
            assert f'<div class="foram-msg-{kind}">{said} match' in note, note
            assert f"the limit {threshold:.2f} that 67% of 3 sections cut at known places" in note
        limit.write_text("{broken")  # an unreadable limit: no verdict, the page still works
        app.run_match()
        assert "reliable match" not in app.match_message.value.lower()
        assert app.match_results.value
    finally:
        limit.unlink(missing_ok=True)


def test_a_match_for_an_image_that_is_no_section_is_never_called_reliable(app, monkeypatch):
    """The match limit would pass the fit; the workspace's section check refuses the
    colour picture, and the verdict says so instead (and no specimen check is run)."""
    from test_classify import _check_for

    import foramlib.matching.reliability as reliability
    import foramlib.matching.search as matching
    from foramlib.matching.reliability import MatchCheck

    scores = dict(dice=0.9, ncc=0.6, ssim=0.7, descriptor=0.6, combined=0.9)
    found = [Match("S1", "Beta", (0.0, 0.0, 1.0), 1.5, 30.0, scores, np.zeros((32, 32), np.uint8))]
    monkeypatch.setattr(matching, "match", lambda *a, **k: found)
    monkeypatch.setattr(reliability, "runner_up", lambda *a, **k: pytest.fail("searched"))
    limit = app.workspace / "results" / "match_check.json"
    section_check = app.workspace / classify.SECTION_CHECK
    MatchCheck(0.6, 0.95, (0.7, 0.9), margin_threshold=0.05, margins=(0.1, 0.2)).save(limit)
    _check_for(classify.preprocess_defaults(app.workspace)[0].size).save(section_check)
    rgb = cv2.cvtColor(
        np.dstack([disc_image(), disc_image() // 3, disc_image() // 2]), cv2.COLOR_RGB2BGR
    )
    try:
        app.load_upload("photo.png", png(rgb))
        app.to_match.click()
        app.run_match()
        note = app.match_message.value
        assert '<div class="foram-msg-warn">No reliable match: the section check refused ' in note
        assert "(this is a colour picture" in note and "score of 0.90" in note
        assert app.match_results.value  # the closest sections are still shown
        app.load_upload("scan.png", png(disc_image()))  # a section: the limit decides
        app.to_match.click()
        monkeypatch.setattr(reliability, "runner_up", lambda *a, **k: None)
        app.run_match()
        assert '<div class="foram-msg-info">Reliable match' in app.match_message.value
    finally:
        limit.unlink(missing_ok=True)
        section_check.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "other_genus, other_score, said, kind",
    [
        (
            "Beta",
            0.70,
            "It is this specimen: no other fits as well (the next best, S2 (Beta)",
            "info",
        ),
        ("Beta", 0.89, "But is it this specimen? The next best, S2 (Beta), fits nearly", "warn"),
        ("Gamma", 0.89, "They are of two genera (Beta and Gamma)", "warn"),
    ],
)
def test_the_specimen_margin_says_whether_it_is_this_specimen(
    app, monkeypatch, other_genus, other_score, said, kind
):
    """After the matches are shown, the other specimens are searched: the verdict then
    says whether the best specimen fits clearly better than any other."""
    import foramlib.matching.reliability as reliability
    import foramlib.matching.search as matching
    from foramlib.matching.reliability import MatchCheck

    scores = dict(dice=0.9, ncc=0.6, ssim=0.7, descriptor=0.6, combined=0.9)
    img = np.zeros((32, 32), np.uint8)
    best = Match("S1", "Beta", (0.0, 0.0, 1.0), 1.5, 30.0, scores, img)
    other = Match(
        "S2", other_genus, (0.0, 1.0, 0.0), 0.0, 0.0, dict(scores, combined=other_score), img
    )
    asked = []
    monkeypatch.setattr(matching, "match", lambda *a, **k: [best])

    def runner_up(index, image, first, **kwargs):
        asked.append(dict(first=first.specimen_id, **kwargs))
        return other

    monkeypatch.setattr(reliability, "runner_up", runner_up)
    limit = app.workspace / "results" / "match_check.json"
    MatchCheck(0.6, 0.95, (0.7, 0.9), margin_threshold=0.05, margins=(0.02, 0.1, 0.2)).save(limit)
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    try:
        app.run_match()
        note = app.match_message.value
        assert f'<div class="foram-msg-{kind}">Reliable match' in note, note
        assert said in note, note
        assert "the margin 0.05 that 67% of those sections clear" in note
        assert asked[-1]["first"] == "S1" and asked[-1]["specimens"] is None
        assert "other specimens compared in" in app.match_status.value
        assert app.match_results.value  # the matches stay on screen
        # a weak best match: no second search, nothing said about the specimen
        MatchCheck(0.95, 0.95, (0.7, 0.9), margin_threshold=0.05, margins=(0.1,)).save(limit)
        n = len(asked)
        app.run_match()
        weak = app.match_message.value
        assert len(asked) == n and "No reliable match" in weak
        assert "this specimen" not in weak
    finally:
        limit.unlink(missing_ok=True)


def test_match_within_the_predicted_genus(app, recorder):
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    app.match_predicted.value = True
    app.run_match()
    assert "classify the slice first" in app.match_message.value and recorder == []
    app.show_page("classify")
    app.classify()
    genus = app.prediction.genus
    app.to_match.click()
    app.match_genera.value = tuple(g for g in NAMES if g != genus)  # overridden
    app.run_match()
    assert recorder[-1]["species"] == [genus]
    app._collection.specimens = app._collection.specimens[
        app._collection.specimens["species"] != genus
    ]
    app.run_match()
    assert "has no indexed specimens" in app.match_message.value and len(recorder) == 1


def test_matcher_errors_become_messages(app, monkeypatch):
    from foramlib.matching.search import MatchError

    def broken(*args, **kwargs):
        raise MatchError("query: the fossil covers only 0.1% of the image")

    monkeypatch.setattr("foramlib.matching.search.match", broken)
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    app.run_match()
    assert "covers only" in app.match_message.value and app.match_results.value == ""


# --------------------------------------------------------------------------- whole scan


def shell_volume(shape=(40, 40, 40), seed=0):
    """A hollow ellipsoid with a septum on a dim noisy matrix (as tests/test_scan.py's)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = ((x - c[0]) / 15) ** 2 + ((y - c[1]) / 12) ** 2 + ((z - c[2]) / (shape[2] / 4)) ** 2
    vol = 0.1 + 0.02 * rng.standard_normal(shape)
    vol[(r < 1.0) & (r > 0.6)] = 0.8
    vol[(r < 0.6) & (np.abs(x - c[0]) < 1.5)] = 0.7
    return (1000 * vol).astype(np.float32)


def nifti_bytes(vol, spacing=(1.0, 1.0, 1.0), unit="micron") -> bytes:
    img = nib.Nifti1Image(vol, np.diag([*spacing, 1.0]))
    img.header.set_xyzt_units(unit)
    return gzip.compress(img.to_bytes())


def scan_rows(table_html):
    """(rank, genus) of the whole-scan table's rows, top first."""
    return re.findall(r'<tr class="foram-rank-(\d)[^"]*"><td>\d</td><td>([^<]*)</td>', table_html)


@pytest.fixture
def scanned(app):
    """The app after a whole-scan classification of a 40³ synthetic fossil."""
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    app.scan_sections.value = 16
    app.scan_button.click()
    return app


def test_whole_scan_controls_appear_for_volumes_only(app):
    assert "foram-scan-button" in app.scan_button._dom_classes
    assert "foram-scan-sections" in app.scan_sections._dom_classes
    assert "foram-scan-results" in app.scan_results._dom_classes
    assert not visible(app.scan_box)
    app.load_upload("plain.png", png(disc_image()))
    assert not visible(app.scan_box)
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    assert visible(app.scan_box) and visible(app.volume_box) and not visible(app.scan_results)
    assert app.scan_sections.value == scan.DEFAULT_SECTIONS
    assert (app.scan_sections.min, app.scan_sections.max) == dashboard.SCAN_SECTIONS_RANGE
    app.scan_sections.value = 10_000
    assert app.scan_sections.value == dashboard.SCAN_SECTIONS_RANGE[1]  # bounded
    app.gallery.value = "S0:00000"  # a stored slice replaces the volume
    assert not visible(app.scan_box) and app.volume is None


def test_whole_scan_table_is_the_librarys_answer(scanned, loaded):
    app = scanned
    answer = app.scan_answer
    assert answer is not None and visible(app.scan_results)
    assert app.scan_progress.value == 1.0 and app.scan_status.value == ""
    # the page cut the scan as `foram classify` does: same slicer settings and seed
    config = replace(scan.slicing_defaults(app.workspace)[0], preprocess=loaded.preprocess)
    again = scan.classify_scan(loaded, app.volume, n_sections=16, seed=0, slicing=config)
    np.testing.assert_allclose(answer.probabilities, again.probabilities)
    ranking = scan.rank_genera(answer.probabilities, NAMES)
    rows = scan_rows(app.scan_table.value)
    assert rows == [(str(i), g.genus) for i, g in enumerate(ranking[:5], start=1)]
    winner = app.scan_table.value.split("foram-scan-winner")[1].split("</tr>")[0]
    assert f"<td>{ranking[0].genus}</td><td>{100 * ranking[0].probability:.1f}%</td>" in winner
    assert f"{ranking[0].vote_share:.0%}" in winner
    n = answer.metadata["n_sections"]
    assert f"kept {n}" in app.scan_summary.value and " s" in app.scan_summary.value
    assert "data/slices/slicing.json" in app.scan_summary.value
    assert app.scan_thumbs.value.count("<img") == min(dashboard.SCAN_THUMBNAILS, n)
    assert "https://" not in app.scan_thumbs.value and "data:image/png;base64," in (
        app.scan_thumbs.value
    )
    best = int(np.argmax(answer.sections["confidence"].to_numpy()))
    assert app.scan_thumbs.value.split("<img")[1].count(f'alt="section {best + 1}"') == 1
    assert "Classified the whole scan fossil.nii.gz" in app.message.value
    assert ranking[0].genus in app.message.value


def test_whole_scan_without_specimen_ids_is_flagged_and_says_why(scanned):
    # the tiny workspace's validation predictions carry no specimen ids
    assert scanned.scan_answer.uncertain and scanned.scan_answer.calibration is None
    box = scanned.scan_uncertain.value
    assert "foram-uncertain-box" in box and "Uncertain result" in box
    assert "no threshold could be calibrated on the validation specimens" in box
    assert "specimen_id" in box


@pytest.mark.parametrize(
    ("cal", "uncertain", "text"),
    [
        (Calibration(1.0, 0.8, 0.9, 0.1, 9, True, "r"), True, "is below the threshold"),
        (Calibration(0.0, 0.8, 0.9, 1.0, 9, True, "r"), False, "is at or above"),
        (Calibration(1.0, 0.8, 0.5, 0.0, 9, False, "r"), True, "no mean probability"),
    ],
)
def test_whole_scan_uncertainty_names_the_rule(app, monkeypatch, cal, uncertain, text):
    monkeypatch.setattr(app, "scan_calibration", lambda: (cal, None))
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    app.scan_sections.value = 8
    app.classify_scan()
    assert app.scan_answer.uncertain is uncertain and app.scan_answer.calibration == cal
    box = app.scan_uncertain.value
    assert text in box and "9 validation specimens" in box
    assert ("Uncertain result" in box) is uncertain


def test_whole_scan_calibration_is_computed_once(app, monkeypatch):
    calls = []

    def fake(spec, models_dir):
        calls.append(models_dir)
        return Calibration(0.5, 0.8, 0.9, 0.5, 9, True, "r")

    monkeypatch.setattr(scan, "calibrate_specimens", fake)
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    app.scan_sections.value = 8
    app.classify_scan()
    app.classify_scan()
    assert calls == [app.workspace / "models"]
    assert app.scan_answer.calibration.threshold == 0.5


def test_whole_scan_uses_the_validation_specimens(tmp_path):
    ws = write_workspace(tmp_path)
    for m in ("m1", "m2"):  # give the validation slices specimen ids, 9 specimens
        path = ws / "models" / m / "predictions_val.csv"
        frame = pd.read_csv(path)
        frame["specimen_id"] = frame["true"] + "-" + (frame.index % 3).astype(str)
        frame.to_csv(path, index=False)
    app = dashboard.App(ws)
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    app.scan_sections.value = 8
    app.classify_scan()
    expected = scan.calibrate_specimens(app.classifier().spec, ws / "models")
    assert app.scan_answer.calibration == expected and expected.n_val == 9
    assert "9 validation specimens" in app.scan_uncertain.value


def test_new_uploads_clear_the_whole_scan_results(scanned):
    app = scanned
    app.load_upload("other.nii.gz", nifti_bytes(shell_volume(seed=1)))
    assert visible(app.scan_box) and not visible(app.scan_results)
    assert app.scan_answer is None and app.scan_table.value == "" and app.scan_progress.value == 0
    app.scan_button.click()
    assert app.scan_answer.name == "other.nii.gz"
    app.load_upload("plain.png", png(disc_image()))
    assert not visible(app.scan_box) and not visible(app.scan_results)
    assert app.scan_answer is None and app.scan_table.value == ""
    app.classify()  # the single-section flow is untouched
    assert '<tr class="foram-rank-1">' in app.top5.value


def test_anisotropic_scan_is_resampled_and_says_so(app):
    vol = shell_volume((40, 40, 20))
    app.load_upload("thick.nii.gz", nifti_bytes(vol, (5.0, 5.0, 10.0)))
    app.scan_sections.value = 8
    app.classify_scan()
    assert app.scan_answer.metadata["shape"] == [40, 40, 40]
    assert "resampled to isotropic from 5×5×10 µm" in app.scan_summary.value
    assert "taken as isotropic" not in app.scan_summary.value


def test_a_large_scan_is_binned_on_upload_and_says_so(app, monkeypatch):
    monkeypatch.setattr(uploads, "UPLOAD_VOLUME_SIDE", 20)  # a 40³ upload is "large" here
    app.load_upload("big.nii.gz", nifti_bytes(shell_volume((40, 40, 40)), (5.0, 5.0, 5.0)))
    assert app.volume.binned == 2 and app.volume.shape == (20, 20, 20)
    assert app.volume.spacing_um == pytest.approx((10.0, 10.0, 10.0))
    assert "averaged by 2×2×2 voxel blocks" in app.preview_info.value
    app.scan_sections.value = 8
    app.classify_scan()
    assert app.scan_answer.metadata["shape"] == [20, 20, 20]
    assert "read averaged by blocks of 2×2×2 voxels" in app.scan_summary.value


def test_a_scan_over_the_voxel_limit_gets_a_clear_message(app, monkeypatch):
    monkeypatch.setenv("FORAM_MAX_VOLUME_MVOX", "0.01")
    app.load_upload("huge.nii.gz", nifti_bytes(shell_volume((40, 40, 40)), (5.0, 5.0, 5.0)))
    assert "huge.nii.gz: 40 × 40 × 40 voxels" in app.message.value
    assert "FORAM_MAX_VOLUME_MVOX" in app.message.value and app.volume is None


def test_anisotropic_scan_without_a_unit_is_resampled_by_its_ratios(app):
    vol = shell_volume((40, 40, 20))
    app.load_upload("nounit.nii.gz", nifti_bytes(vol, (5.0, 5.0, 10.0), unit="unknown"))
    assert app.volume.spacing_um is None  # never guessed as millimetres
    app.scan_sections.value = 8
    app.classify_scan()
    assert app.scan_answer.metadata["shape"] == [40, 40, 40]
    assert "from the header's 5×5×10 (its unit is not stated" in app.scan_summary.value


def test_tiff_stack_scan_is_taken_as_isotropic(app):
    stack = io.BytesIO()
    tifffile.imwrite(stack, shell_volume().transpose(2, 1, 0).astype(np.uint16))
    app.load_upload("stack.tif", stack.getvalue())
    assert visible(app.scan_box)
    app.scan_sections.value = 8
    app.classify_scan()
    assert app.scan_answer is not None and app.scan_answer.metadata["assumed_isotropic"]
    assert "voxels taken as isotropic" in app.scan_summary.value


def test_blank_scan_gives_a_message_and_the_app_keeps_working(app):
    rng = np.random.default_rng(0)
    noise = (100 + 2 * rng.standard_normal((30, 30, 30))).astype(np.float32)  # no fossil
    app.load_upload("empty.nii.gz", nifti_bytes(noise))
    assert visible(app.scan_box)
    app.scan_button.click()
    assert "foram-msg-error" in app.message.value and "empty.nii.gz" in app.message.value
    assert "nothing stands out" in app.message.value
    assert app.scan_answer is None and not visible(app.scan_results)
    assert app.scan_progress.value == 0 and not app.scan_button.disabled
    app.load_upload("flat.nii.gz", nifti_bytes(np.full((20, 20, 20), 3.0, np.float32)))
    assert "constant" in app.message.value and not visible(app.scan_box)
    app.classify_scan()
    assert "No scan to classify" in app.message.value
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    app.scan_sections.value = 8
    app.scan_button.click()
    assert app.scan_answer is not None and scan_rows(app.scan_table.value)


def test_whole_scan_without_models_says_what_to_run(tmp_path):
    app = dashboard.App(tmp_path)
    assert app.scan_button.disabled
    app.load_upload("fossil.nii.gz", nifti_bytes(shell_volume()))
    app.classify_scan()
    assert "dvc repro" in app.message.value and app.scan_answer is None
