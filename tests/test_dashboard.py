"""foramlib.dashboard: the App's pages and handlers, driven without a browser.

The workspace is built in a temporary folder (tiny untrained models, a hand-made
ensemble, a small slice store); the 3D collection is a fake with the real
``foramlib.indexing.Collection`` interface, and ``foramlib.matching.match`` is replaced
by a recorder where the test is about what the page passes and shows.
"""

from __future__ import annotations

import datetime
import gzip
import json
from dataclasses import replace

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_classify import NAMES, SIZE, disc_image, write_workspace

from foramlib import classify, dashboard
from foramlib.matching import Match
from foramlib.preprocess import PreprocessConfig


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
    """The foramlib.indexing.Collection interface, with two tiny volumes."""

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

    monkeypatch.setattr("foramlib.matching.match", fake_match)
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


def test_uncertain_notice_follows_the_calibration(app, loaded, monkeypatch):
    app.gallery.value = "S0:00000"
    for threshold, expected in [(1.0, True), (0.0, False)]:
        cal = classify.Calibration(threshold, 0.8, 0.8, 0.5, 40, True, "rule")
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
    assert "S1" in first and "0.800" in first
    assert app.match_view.value[:4] == b"\x89PNG"
    view = app.match_view.value
    app.match_choice.value = 1
    assert app.match_view.value != view


def test_the_message_says_which_reading_of_the_slice_matched(app, monkeypatch):
    import foramlib.matching as matching

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
    from foramlib.matching import MatchError

    def broken(*args, **kwargs):
        raise MatchError("query: the fossil covers only 0.1% of the image")

    monkeypatch.setattr("foramlib.matching.match", broken)
    app.load_upload("scan.png", png(disc_image()))
    app.to_match.click()
    app.run_match()
    assert "covers only" in app.match_message.value and app.match_results.value == ""
