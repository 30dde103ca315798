"""The Voila dashboard in a real (headless Chromium) browser, on a real tiny workspace.

Each test opens a fresh dashboard session (one Voila kernel) through the ``page``
fixture; uploads go through the browser's file chooser, as a user's would. The
expected answers come from the workspace's own pipeline outputs (saved test
predictions, foramlib's matcher), never from the dashboard.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import tifffile

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGES = ("home", "classify", "match")
ACTION_S = 120  # a classification or a match on a shared 2-core machine
MIME = {".png": "image/png", ".tif": "image/tiff", ".txt": "text/plain"}


# ------------------------------------------------------------------ helpers
def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def tiff16_bytes(image: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, image.astype(np.uint16) * 257)  # the full 16-bit range
    return buf.getvalue()


def upload(page, name: str, data: bytes) -> None:
    """Pick a file in the upload widget's file chooser (its <input> is not in the DOM)."""
    suffix = name[name.rfind(".") :]
    with page.expect_file_chooser() as chooser:
        page.click(".foram-upload")
    chooser.value.set_files(
        {"name": name, "mimeType": MIME.get(suffix, "application/octet-stream"), "buffer": data}
    )


def go_to(page, name: str) -> None:
    page.click(f".foram-nav-{name}")
    page.locator(f".foram-page-{name}").wait_for(state="visible")


def visible_pages(page) -> list[str]:
    return [p for p in PAGES if page.locator(f".foram-page-{p}").is_visible()]


def preview_src(page) -> str | None:
    return page.get_attribute(".foram-preview", "src")


def wait_preview_change(page, before: str | None) -> str:
    """Wait until the preview image's data differs from `before`; return the new src."""
    page.wait_for_function(
        """before => {
            const img = document.querySelector('.foram-preview');
            return img && img.getAttribute('src') && img.getAttribute('src') !== before
                && img.getAttribute('src').length > 40;
        }""",
        arg=before,
        timeout=ACTION_S * 1000,
    )
    return preview_src(page)


def wait_text(page, selector: str, *needles: str) -> str:
    """Wait until the element's text contains every needle (case-insensitive)."""
    page.wait_for_function(
        """([sel, needles]) => {
            const e = document.querySelector(sel);
            if (!e) return false;
            const t = e.innerText.toLowerCase();
            return needles.every(n => t.includes(n.toLowerCase()));
        }""",
        arg=[selector, list(needles)],
        timeout=ACTION_S * 1000,
    )
    return page.inner_text(selector)


def wait_result(page, result: str, error: str) -> str:
    """Wait for `result` to be visible, failing at once with the app's error message."""
    outcome = page.wait_for_function(
        """([ok, bad]) => {
            const r = document.querySelector(ok);
            if (r && r.offsetParent !== null) return {ok: r.innerText};
            const e = document.querySelector(bad);
            return e && e.innerText.trim() ? {error: e.innerText} : null;
        }""",
        arg=[result, error],
        timeout=ACTION_S * 1000,
    ).json_value()
    assert "ok" in outcome, f"the dashboard reported: {outcome['error']}"
    return outcome["ok"]


def classify(page) -> str:
    """Click classify and return the text of the top-1 row of the top-5 table."""
    page.click(".foram-classify-button")
    return wait_result(page, ".foram-top5 tr.foram-rank-1", ".foram-message .foram-msg-error")


def wait_image(page, selector: str) -> None:
    """Wait until the <img> is visible and holds a decoded picture."""
    page.locator(selector).wait_for(state="visible")
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && "
        "i.naturalWidth > 0; }",
        arg=selector,
        timeout=ACTION_S * 1000,
    )


def upload_and_classify(page, name: str, data: bytes) -> str:
    before = preview_src(page)
    upload(page, name, data)
    wait_preview_change(page, before)
    return classify(page)


# ------------------------------------------------------------------ tests
def test_landing_renders(page, screenshot):
    assert visible_pages(page) == ["home"]
    dataset = page.inner_text(".foram-dataset")
    assert "virtual" in dataset.lower(), dataset
    assert page.locator(".foram-performance").is_visible()
    assert page.inner_text(".foram-performance").strip()
    screenshot(page, "landing")


def test_navigation_shows_one_page_at_a_time(page):
    for name in ("classify", "match", "home", "match", "classify"):
        go_to(page, name)
        assert visible_pages(page) == [name]


def test_upload_preview_classify_shows_right_genus(page, clear_slice, screenshot):
    go_to(page, "classify")
    top1 = upload_and_classify(page, f"{clear_slice.slice_id}.png", png_bytes(clear_slice.image))
    assert clear_slice.genus in top1, (top1, clear_slice)
    assert "%" in top1
    # an exported stored slice is classified as it is, with the stored slice's answer
    assert "classified as it is" in page.inner_text(".foram-preview-info")
    # the upload button names the file in use (ipywidgets' own "(0)" count is hidden)
    label = page.evaluate(
        "() => getComputedStyle(document.querySelector('.foram-upload'), '::after').content"
    )
    assert f"{clear_slice.slice_id}.png — upload another" in label, label
    shown = float(re.search(r"([\d.]+)\s*%", top1).group(1))
    assert shown == pytest.approx(100 * clear_slice.probability, abs=0.11), top1
    rows = page.locator(".foram-top5 tr[class*='foram-rank-']")
    assert 2 <= rows.count() <= 5
    wait_image(page, ".foram-gradcam")
    wait_image(page, ".foram-probabilities")
    assert page.inner_text(".foram-metadata").strip()
    screenshot(page, "classify")


def test_16bit_tiff_upload_is_classified(page, clear_slice):
    go_to(page, "classify")
    top1 = upload_and_classify(page, "slice16.tif", tiff16_bytes(clear_slice.image))
    assert clear_slice.genus in top1, (top1, clear_slice)


def test_gallery_slice_reproduces_the_saved_test_prediction(page, saved_predictions):
    """A stored test slice picked from the gallery gets exactly the pipeline's saved answer
    (top-1 genus and its probability in results/predictions/<final>_test.csv)."""
    go_to(page, "classify")
    labels = page.eval_on_selector_all(".foram-gallery select option", "os => os.map(o => o.text)")
    saved = saved_predictions.assign(
        number=saved_predictions["slice_id"].str.rsplit(":", n=1).str[-1].astype(int)
    )
    candidates = []
    for label in labels:  # "<genus> — <specimen> #<number>" (spaces may be no-break ones)
        found = re.fullmatch(r"(.+) — (.+) #(\d+)", label.replace("\xa0", " ").strip())
        if not found:
            continue
        genus, specimen, number = found.groups()
        rows = saved[(saved["specimen_id"] == specimen) & (saved["number"] == int(number))]
        if len(rows) != 1:  # a repeat scan's slice can carry the same label: skip it
            continue
        row = rows.iloc[0]
        assert row["true"] == genus, (label, row["slice_id"])
        candidates.append((row["p_predicted"], label, row["predicted"]))
    assert candidates, f"no gallery label names a saved test slice: {labels}"
    p_saved, label, predicted = max(candidates)  # the most decided one: no near-ties
    before = preview_src(page)
    page.select_option(".foram-gallery select", label=label)
    wait_preview_change(page, before)
    top1 = classify(page)
    assert predicted in top1, (top1, label, predicted)
    shown = float(re.search(r"([\d.]+)\s*%", top1).group(1))
    assert shown == pytest.approx(100 * p_saved, abs=0.11), (top1, p_saved)


def test_sensitivity_change_updates_preview(page, clear_slice):
    go_to(page, "classify")
    upload(page, "slice.png", png_bytes(clear_slice.image))
    first = wait_preview_change(page, None)
    handle = page.locator(".foram-sensitivity .noUi-handle")
    value = float(handle.get_attribute("aria-valuenow"))
    handle.focus()
    for _ in range(4):  # four steps up (keyboard, as a user without a mouse would)
        page.keyboard.press("ArrowRight")
    second = wait_preview_change(page, first)
    assert float(handle.get_attribute("aria-valuenow")) > value
    page.click(".foram-clahe input[type=checkbox]")
    wait_preview_change(page, second)


def test_bad_uploads_show_a_message_and_the_app_keeps_working(page, clear_slice, screenshot):
    go_to(page, "classify")
    upload(page, "notes.txt", b"genus: Alveolina\nnot an image at all\n")
    text = wait_text(page, ".foram-message", "notes.txt")
    assert "image" in text.lower(), text
    screenshot(page, "message-not-an-image", full_page=False)

    rng = np.random.default_rng(0)
    big = rng.integers(0, 65535, size=(1024, 1024), dtype=np.uint16)  # 2 MiB, a real TIFF
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, big)
    upload(page, "huge.tif", buf.getvalue())
    wait_text(page, ".foram-message", "huge.tif", "too large")

    top1 = upload_and_classify(page, "slice.png", png_bytes(clear_slice.image))
    assert clear_slice.genus in top1, top1


def test_matching_finds_the_source_specimen(page, match_query, screenshot):
    go_to(page, "classify")
    before = preview_src(page)
    upload(page, "oblique-section.png", match_query.png)
    wait_preview_change(page, before)
    page.click(".foram-to-match")  # "find this slice in 3D": hand the upload over
    page.locator(".foram-page-match").wait_for(state="visible")
    predicted = page.locator(".foram-match-predicted input[type=checkbox]")
    if predicted.is_checked():  # search every genus: the test is about the specimen
        predicted.uncheck()
    page.click(".foram-match-button")
    best = wait_result(
        page, ".foram-match-results tr.foram-match-1", ".foram-match-message .foram-msg-error"
    )
    assert match_query.specimen_id in best, (best, match_query)
    # the workspace's calibrated match limit gives a verdict in words
    verdict = page.locator(".foram-match-message").inner_text()
    assert re.search(r"(Reliable|No reliable) match: the best fit \(score ", verdict), verdict
    if "Reliable match" in verdict:  # then the other specimens are compared, and it says
        page.wait_for_function(
            "() => /(It is|But is it) this specimen/"
            ".test(document.querySelector('.foram-match-message').innerText)"
        )
    wait_image(page, ".foram-match-view")
    screenshot(page, "match")
