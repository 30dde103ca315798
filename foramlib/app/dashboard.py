"""The Voila dashboard (paper §2.5, §3.3): classify a section or a scan, find it in 3D.

:class:`App` is an ipywidgets ``VBox`` with three pages — landing, classification and 3D
slice matching — switched by navigation buttons. ``dashboard/app.ipynb`` only builds and
displays it; every handler is a method that tests call directly, without a browser.

What a page shows is rendered by :mod:`foramlib.app.render` and what it reads from
the workspace by :mod:`foramlib.app.workspace`. The heavy parts live elsewhere:
:mod:`foramlib.inference.classify` (upload decoding, the training preprocessing, the saved
ensemble, the calibrated uncertainty threshold, Grad-CAM),
:mod:`foramlib.inference.scan` (a whole uploaded volume: many sections, one ranked answer),
:mod:`foramlib.matching.index` (the 3D index of the collection), :mod:`foramlib.matching.search`
(the search) and :mod:`foramlib.viz.view3d` (the plane inside the specimen).

Widgets carry CSS classes (``foram-*``) that the browser tests rely on; see
``book/dashboard.md``.

Examples
--------
>>> import tempfile
>>> app = App(tempfile.mkdtemp())
>>> app.active_page
'home'
>>> "dvc repro" in app.message.value
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import threading
import time

import cv2
import ipywidgets as widgets
import numpy as np

from foramlib.app import render
from foramlib.app.render import SCAN_THUMBNAILS
from foramlib.app.workspace import (
    collection_counts,
    data_source,
    default_collection_loader,
    gallery_table,
    max_upload_bytes,
    read_json,
    resolve_workspace,
)
from foramlib.dataset.preprocess import PreprocessError
from foramlib.inference import classify, scan
from foramlib.inference.calibration import Calibration
from foramlib.io import uploads

__all__ = ["App", "resolve_workspace", "max_upload_bytes", "SCAN_THUMBNAILS"]


PAGES = ("home", "classify", "match")


MATCH_TIME_BUDGET_S = 30.0


SCAN_SECTIONS_RANGE = (8, 512)  # sections a whole-scan classification may cut


# How the preview says which path a slice took (classify.prepare's info["source"])
PATH_TAKEN = {
    "stored slice": "already a cleaned slice at the models' size, classified as it is",
    "preprocessed": "cut out and cleaned as the training slices were",
}
SCAN_SEED = 0  # orientations of the whole-scan sections (as `foram classify`)


@contextlib.contextmanager
def _busy(button, label: str):
    """`button` disabled and saying `label` while the block runs (then as it was).

    The browser receives the change at once, so a click cannot be queued twice and the
    user sees that the app is working."""
    before = (button.disabled, button.description, button.icon)
    button.disabled, button.description, button.icon = True, label, "hourglass-half"
    try:
        yield
    finally:
        button.disabled, button.description, button.icon = before


def _volume_section_name(volume: uploads.VolumeUpload, axis: int, index: int) -> str:
    """How the preview names a section of an uploaded volume (and its binning, if any).

    >>> import numpy as np
    >>> _volume_section_name(uploads.VolumeUpload("s.nii", np.zeros((4, 4, 4)), binned=2), 2, 1)
    's.nii (axis 2, slice 1 of the scan averaged by 2×2×2 voxel blocks as it was read)'
    """
    f = volume.binned
    binned = f" of the scan averaged by {f}×{f}×{f} voxel blocks as it was read" if f > 1 else ""
    return f"{volume.name} (axis {axis}, slice {index}{binned})"


def _hide(widget, hidden: bool = True) -> None:
    widget.layout.display = "none" if hidden else None


def _cls(widget, *names):
    for n in names:
        widget.add_class(n)
    return widget


def _image(*names) -> widgets.Image:
    """A PNG image widget that stays hidden while it holds no picture: browsers draw an
    empty image as a broken-image icon."""
    image = _cls(widgets.Image(format="png"), *names)
    _hide(image)
    image.observe(lambda change: _hide(image, not change["new"]), names="value")
    return image


class App(widgets.VBox):
    """The dashboard: landing, classification and 3D-matching pages.

    Parameters
    ----------
    workspace : path-like
        Folder holding the pipeline's ``models/``, ``results/`` and ``data/``
        (see :func:`resolve_workspace`).
    max_upload_mb : float, optional
        Upload limit in MB (default: ``FORAM_MAX_UPLOAD_MB``, 100 MB if unset).
    classifier : Classifier, optional
        Use this classifier instead of loading the workspace's (for tests).
    collection_loader : callable, optional
        ``loader(workspace) -> Collection`` (default:
        :func:`foramlib.matching.index.load_collection` on ``data/index``).
    """

    def __init__(
        self,
        workspace=".",
        *,
        max_upload_mb: float | None = None,
        classifier=None,
        collection_loader=None,
    ):
        self.workspace = resolve_workspace(workspace)
        limit, note = max_upload_bytes()
        self.max_upload = int(max_upload_mb * 2**20) if max_upload_mb else limit
        self._limit_note = note
        self._classifier = classifier
        self._classifier_error: str | None = None
        self._load_lock = threading.Lock()
        self._models_ready = classifier is not None
        self._collection_loader = collection_loader or default_collection_loader
        self._collection = None
        self.metrics = read_json(self.workspace / "results" / "metrics.json")
        self.base_config, self.base_source = classify.preprocess_defaults(self.workspace)

        self.source: np.ndarray | None = None  # the raw section (or stored slice)
        self.source_name = ""
        self.source_cleaned = False
        self.source_truth: str | None = None
        self.volume: uploads.VolumeUpload | None = None
        self.scan_answer: scan.ScanAnswer | None = None
        self._scan_calibration: tuple[Calibration | None, str | None] | None = None
        self.cleaned: np.ndarray | None = None
        self.cleaned_info: dict | None = None
        self.prediction: classify.Prediction | None = None
        self.match_query: np.ndarray | None = None
        self.match_query_name = ""
        self.matches: list = []
        self._quiet = False
        # the match limit as last read, keyed by its file's stat (see _match_check)
        self._match_check_read: tuple[tuple[int, int, int], object] | None = None

        self.nav = {
            "home": widgets.Button(description="Home", icon="home"),
            "classify": widgets.Button(description="Classify a slice", icon="search"),
            "match": widgets.Button(description="Find it in 3D", icon="cube"),
        }
        for name, button in self.nav.items():
            _cls(button, f"foram-nav-{name}")
            button.on_click(lambda _b, n=name: self.show_page(n))
        self.pages = {
            "home": self._build_home(),
            "classify": self._build_classify(),
            "match": self._build_match(),
        }
        for name, page in self.pages.items():
            _cls(page, f"foram-page-{name}")
        header = widgets.HBox(
            [widgets.HTML("<b>ForamDeepSlice</b>&nbsp;&nbsp;"), *self.nav.values()]
        )
        super().__init__([widgets.HTML(render.STYLE), header, *self.pages.values()])
        _cls(self, "foram-app")
        self.active_page = ""
        self.show_page("home")
        self._check_artefacts()

    # ================================================================== navigation
    def show_page(self, name: str) -> None:
        """Show page `name` ("home", "classify" or "match"); hide the others."""
        if name not in PAGES:
            raise ValueError(f"page must be one of {PAGES}, got {name!r}")
        # hide the others first: the browser applies the changes in order, so two
        # pages are never shown at once, not even for a frame
        for n, page in self.pages.items():
            if n != name:
                _hide(page)
        _hide(self.pages[name], False)
        for n, button in self.nav.items():
            button.button_style = "primary" if n == name else ""
        self.active_page = name
        if name == "match":
            self._enter_match()

    # ================================================================== landing
    def _build_home(self) -> widgets.VBox:
        intro = widgets.HTML(
            "<h2>Identify a foraminifera section — and find where it lies in 3D</h2>"
            "<p>This tool classifies a 2D section of a larger benthic foraminifer (a thin "
            "section photograph or a slice of a micro-CT scan) into one of the genera the "
            "models were trained on, shows how confident it is and which part of the image "
            "it looked at, and locates the section inside the 3D scans of the reference "
            "collection.</p>"
            "<h3>Quick start</h3><ol>"
            "<li>Open <b>Classify a slice</b>. Upload a PNG, JPEG or TIFF image (16-bit "
            "works) or a NIfTI or NRRD volume (then pick the axis and slice, or classify the whole "
            "scan), or pick a test slice from the gallery.</li>"
            "<li>Check the cleaned preview: the fossil is cut out of its background, cropped "
            "and resized exactly as for training. Adjust the segmentation sensitivity, "
            "contrast enhancement, sharpening or the manual crop if the fossil is cut badly."
            "</li>"
            "<li>Press <b>Classify</b>: the five most likely genera, every genus' "
            "probability, a heat map of the decisive region, and a warning when the answer "
            "is uncertain.</li>"
            "<li>Press <b>Find this slice in 3D</b> to search the reference specimens for "
            "the plane that best matches your section.</li></ol>"
        )
        self.dataset = _cls(widgets.HTML(self._dataset_html()), "foram-dataset")
        self.performance = _cls(widgets.HTML(self._performance_html()), "foram-performance")
        go_classify = widgets.Button(description="Classify a slice", button_style="success")
        go_match = widgets.Button(description="Find a slice in 3D", button_style="info")
        go_classify.on_click(lambda _b: self.show_page("classify"))
        go_match.on_click(lambda _b: self.show_page("match"))
        _cls(go_classify, "foram-home-classify")
        _cls(go_match, "foram-home-match")
        return widgets.VBox(
            [intro, self.dataset, self.performance, widgets.HBox([go_classify, go_match])]
        )

    # ================================================================== classify page
    def _dataset_html(self) -> str:
        return render.dataset_html(
            data_source(self.workspace, self.metrics),
            collection_counts(self.workspace),
            self.workspace,
        )

    def _performance_html(self) -> str:
        counts = collection_counts(self.workspace)  # the curated genera: the classes
        return render.performance_html(self.metrics, counts["genera"] if counts else None)

    # ================================================================== classify page
    def _build_classify(self) -> widgets.VBox:
        accept = ",".join(uploads.UPLOAD_SUFFIXES)
        self.upload = _cls(
            widgets.FileUpload(
                accept=accept, multiple=False, description="Upload a slice or volume"
            ),
            "foram-upload",
        )
        self.upload.layout.width = "300px"
        self.upload.tooltip = "PNG, JPEG, TIFF, NIfTI or NRRD"
        self.upload.observe(self._on_upload, names="value")
        # the button's own text ends in a file count, "(0)" once the app has the file:
        # the page shows this label instead (the current file's name after an upload)
        self.upload_label = _cls(widgets.HTML(render.upload_label_css(None)), "foram-upload-label")
        _hide(self.upload_label)
        self.gallery = _cls(
            widgets.Dropdown(
                options=self._gallery_options(), value=None, description="…or a test slice"
            ),
            "foram-gallery",
        )
        self.gallery.style.description_width = "initial"
        self.gallery.layout.width = "420px"
        self.gallery.observe(self._on_gallery, names="value")
        self.volume_axis = _cls(
            widgets.IntSlider(value=2, min=0, max=2, description="Axis"), "foram-volume-axis"
        )
        self.volume_index = _cls(
            widgets.IntSlider(value=0, min=0, max=1, description="Slice"), "foram-volume-index"
        )
        self.volume_axis.observe(self._on_volume_axis, names="value")
        self.volume_index.observe(self._on_option, names="value")
        self.volume_box = widgets.HBox([self.volume_axis, self.volume_index])
        _hide(self.volume_box)
        self.scan_box = self._build_scan()

        d = self.base_config
        self.sensitivity = _cls(
            widgets.FloatSlider(
                value=float(np.clip(d.sensitivity, 0.05, 0.95)),
                min=0.05,
                max=0.95,
                step=0.05,
                description="Segmentation sensitivity",
                readout_format=".2f",
                continuous_update=False,
            ),
            "foram-sensitivity",
        )
        self.sensitivity.style.description_width = "initial"
        self.clahe = _cls(
            widgets.Checkbox(value=bool(d.clahe), description="Contrast enhancement (CLAHE)"),
            "foram-clahe",
        )
        self.sharpen = _cls(
            widgets.Checkbox(value=bool(d.sharpen), description="Sharpen"), "foram-sharpen"
        )
        self.denoise = _cls(
            widgets.Checkbox(value=bool(d.denoise), description="Denoise"), "foram-denoise"
        )
        self.crop_rows = _crop_slider("Crop rows %", "foram-crop-rows")
        self.crop_cols = _crop_slider("Crop columns %", "foram-crop-cols")
        self.crop_rows.style.description_width = "initial"
        self.crop_cols.style.description_width = "initial"
        for w in (
            self.sensitivity,
            self.clahe,
            self.sharpen,
            self.denoise,
            self.crop_rows,
            self.crop_cols,
        ):
            w.observe(self._on_option, names="value")
        reset = widgets.Button(description="Training settings", tooltip="Reset the options")
        reset.on_click(lambda _b: self.reset_options())
        _cls(reset, "foram-reset")
        options = widgets.VBox(
            [
                widgets.HTML(
                    "<b>Preprocessing</b> <span class='foram-muted'>(defaults: the "
                    f"training settings, from {html.escape(self.base_source)})</span>"
                ),
                self.sensitivity,
                widgets.HBox([self.clahe, self.sharpen, self.denoise]),
                self.crop_rows,
                self.crop_cols,
                reset,
            ]
        )
        self.raw_view = _image("foram-raw")
        self.raw_view.layout.max_width = "256px"
        self.preview = _image("foram-preview")
        self.preview.layout.width = "192px"
        self.preview_info = _cls(widgets.HTML(), "foram-preview-info")
        previews = widgets.HBox(
            [
                widgets.VBox([widgets.HTML("<b>Input</b> (box: automatic crop)"), self.raw_view]),
                widgets.VBox(
                    [widgets.HTML("<b>Cleaned (model input)</b>"), self.preview, self.preview_info]
                ),
            ]
        )
        self.classify_button = _cls(
            widgets.Button(description="Classify", button_style="success", icon="check"),
            "foram-classify-button",
        )
        self.classify_button.on_click(lambda _b: self.classify())
        # whether the models are in memory yet: loading takes seconds on a fresh kernel
        self.models_status = _cls(widgets.HTML(), "foram-models-status")
        self._set_models_status()
        self.to_match = _cls(
            widgets.Button(description="Find this slice in 3D", icon="cube", disabled=True),
            "foram-to-match",
        )
        self.to_match.layout.width = "200px"
        self.to_match.on_click(lambda _b: self.go_to_match())
        self.message = _cls(widgets.HTML(), "foram-message")
        self.top5 = _cls(widgets.HTML(), "foram-top5")
        self.uncertain = _cls(widgets.HTML(), "foram-uncertain")
        _hide(self.uncertain)
        self.probabilities = _image("foram-probabilities")
        self.probabilities.layout.max_width = "480px"
        self.gradcam = _image("foram-gradcam")
        self.gradcam.layout.width = "288px"
        self.metadata = _cls(widgets.HTML(), "foram-metadata")
        self.results_box = widgets.VBox(
            [
                self.uncertain,
                widgets.HBox(
                    [
                        widgets.VBox([widgets.HTML("<b>Top 5</b>"), self.top5]),
                        widgets.VBox(
                            [
                                widgets.HTML("<b>Where the main model looked</b> (Grad-CAM)"),
                                self.gradcam,
                            ]
                        ),
                    ]
                ),
                self.probabilities,
                self.metadata,
            ]
        )
        _hide(self.results_box)
        inputs = widgets.VBox(
            [
                widgets.HTML(
                    "<h2>Classify a slice</h2><p class='foram-muted'>PNG, JPEG, TIFF (8/16-bit) "
                    "or a volume (NIfTI .nii/.nii.gz, NRRD .nrrd, TIFF stack), up to "
                    f"{self.max_upload / 2**20:.0f} MB.</p>"
                ),
                widgets.HBox([self.upload, self.upload_label, self.gallery]),
                self.volume_box,
                self.scan_box,
            ]
        )
        return widgets.VBox(
            [
                inputs,
                widgets.HBox([options, previews]),
                widgets.HBox([self.classify_button, self.to_match, self.models_status]),
                self.message,
                self.results_box,
            ]
        )

    def _build_scan(self) -> widgets.VBox:
        """The whole-scan controls and results (shown while a volume is uploaded)."""
        lo, hi = SCAN_SECTIONS_RANGE
        self.scan_sections = _cls(
            widgets.BoundedIntText(
                value=int(np.clip(scan.DEFAULT_SECTIONS, lo, hi)),
                min=lo,
                max=hi,
                step=8,
                description="Sections",
                tooltip=f"Sections to cut from the scan ({lo}–{hi})",
            ),
            "foram-scan-sections",
        )
        self.scan_sections.layout.width = "180px"
        self.scan_button = _cls(
            widgets.Button(
                description="Classify the whole scan", button_style="success", icon="cubes"
            ),
            "foram-scan-button",
        )
        self.scan_button.layout.width = "220px"
        self.scan_button.on_click(lambda _b: self.classify_scan())
        self.scan_progress = _cls(
            widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="Scan"),
            "foram-scan-progress",
        )
        self.scan_status = _cls(widgets.HTML(), "foram-scan-status")
        self.scan_uncertain = _cls(widgets.HTML(), "foram-scan-uncertain")
        self.scan_table = _cls(widgets.HTML(), "foram-scan-table")
        self.scan_summary = _cls(widgets.HTML(), "foram-scan-summary")
        self.scan_thumbs = _cls(widgets.HTML(), "foram-scan-sections-strip")
        self.scan_results = _cls(
            widgets.VBox(
                [
                    self.scan_uncertain,
                    widgets.HTML("<b>Whole scan: top 5</b>"),
                    self.scan_table,
                    self.scan_summary,
                    self.scan_thumbs,
                ]
            ),
            "foram-scan-results",
        )
        _hide(self.scan_results)
        box = widgets.VBox(
            [
                widgets.HTML(
                    "<b>…or classify the whole scan</b> <span class='foram-muted'>(cuts it "
                    "into many sections at varied orientations with the training slicer and "
                    "preprocessing — the options below apply to the single section only — "
                    "and combines them by their mean probability, as the evaluation votes "
                    "per specimen)</span>"
                ),
                widgets.HBox(
                    [self.scan_sections, self.scan_button, self.scan_progress, self.scan_status]
                ),
                self.scan_results,
            ]
        )
        _hide(box)
        return _cls(box, "foram-scan")

    # ------------------------------------------------------------------ gallery
    def _gallery_options(self) -> list:
        self._gallery = gallery_table(self.workspace)
        if self._gallery is None or self._gallery.empty:
            return [("(no test slices: run dvc repro)", None)]
        options = [("— pick a test slice —", None)]
        for sid, r in self._gallery.iterrows():
            specimen = sid.rsplit(":", 1)[0]  # the scan: repeat scans get their own label
            number = sid.rsplit(":", 1)[-1].lstrip("0") or "0"
            options.append((f"{r['species']} — {specimen} #{number}", sid))
        return options

    def select_gallery(self, slice_id: str) -> None:
        """Use the stored test slice `slice_id` (its store image, label known)."""
        r = self._gallery.loc[slice_id]
        self.upload_label.value = render.upload_label_css(None)  # no uploaded file in use
        arr = np.load(self.workspace / "data" / "slices" / r["array"], mmap_mode="r")
        self._set_source(
            np.array(arr[int(r["row"])]),
            name=f"test slice {slice_id}",
            cleaned=True,
            truth=str(r["species"]),
        )

    def _on_gallery(self, change) -> None:
        if self._quiet or change["new"] is None:
            return
        self._guard(lambda: self.select_gallery(change["new"]))

    # ------------------------------------------------------------------ upload
    def _on_upload(self, change) -> None:
        value = change["new"]
        if not value:
            return
        item = value[0]
        name, content = item["name"], item["content"]
        self.upload_label.value = render.upload_label_css(name)
        self._guard(lambda: self.load_upload(name, bytes(content)))
        self._quiet = True
        try:
            self.upload.value = ()  # the same file can be uploaded again
        finally:
            self._quiet = False

    def load_upload(self, name: str, data: bytes) -> None:
        """Decode an uploaded file and show its cleaned preview (or a clear message)."""
        self._reset_results()
        self._reset_scan()
        try:
            decoded = uploads.decode_upload(
                name, data, max_bytes=self.max_upload, volume_max_side=uploads.UPLOAD_VOLUME_SIDE
            )
        except uploads.UploadError as exc:
            self._clear_source()
            self.message.value = render.message("error", str(exc))
            return
        self._quiet = True
        try:
            self.gallery.value = None
        finally:
            self._quiet = False
        if isinstance(decoded, uploads.VolumeUpload):
            self.volume = decoded
            _hide(self.volume_box, False)
            _hide(self.scan_box, False)
            self._quiet = True
            try:
                self.volume_axis.value = 2
                n = decoded.shape[2]
                self.volume_index.max = max(1, n - 1)
                self.volume_index.value = n // 2
            finally:
                self._quiet = False
            self._set_source(
                decoded.section(2, n // 2),
                name=_volume_section_name(decoded, 2, n // 2),
                keep_volume=True,
            )
        else:
            # an exported stored slice is classified as it is, as in the gallery; a raw
            # section gets the training preprocessing (the preview says which)
            stored = classify.stored_slice(decoded, self.base_config)
            if stored is None:
                self._set_source(decoded, name=name)
            else:
                self._set_source(stored, name=name, cleaned=True)

    def _on_volume_axis(self, change) -> None:
        if self._quiet or self.volume is None:
            return
        n = self.volume.shape[change["new"]]
        self._quiet = True
        try:
            self.volume_index.max = max(1, n - 1)
            self.volume_index.value = n // 2
        finally:
            self._quiet = False
        self._on_option(None)

    def _set_source(self, image, *, name, cleaned=False, truth=None, keep_volume=False):
        if not keep_volume:
            self.volume = None
            _hide(self.volume_box)
            self._reset_scan()
            _hide(self.scan_box)
        self.source = np.asarray(image)
        self.source_name = name
        self.source_cleaned = cleaned
        self.source_truth = truth
        self.to_match.disabled = False
        self.refresh_preview()

    def _clear_source(self) -> None:
        self.source, self.source_name, self.cleaned, self.cleaned_info = None, "", None, None
        self.volume = None
        _hide(self.volume_box)
        self._reset_scan()
        _hide(self.scan_box)
        self.preview.value = b""
        self.raw_view.value = b""
        self.preview_info.value = ""
        self.to_match.disabled = True

    # ------------------------------------------------------------------ options
    def options(self) -> classify.PrepareOptions:
        """The preprocessing options currently set in the page."""
        r0, r1 = self.crop_rows.value
        c0, c1 = self.crop_cols.value
        return classify.PrepareOptions(
            sensitivity=round(float(self.sensitivity.value), 4),
            clahe=bool(self.clahe.value),
            denoise=bool(self.denoise.value),
            sharpen=bool(self.sharpen.value),
            crop=(r0 / 100, max(r1, r0 + 1) / 100, c0 / 100, max(c1, c0 + 1) / 100),
        )

    def reset_options(self) -> None:
        """Back to the training preprocessing (and no manual crop)."""
        d = self.base_config
        self._quiet = True
        try:
            self.sensitivity.value = float(np.clip(d.sensitivity, 0.05, 0.95))
            self.clahe.value, self.sharpen.value, self.denoise.value = (
                bool(d.clahe),
                bool(d.sharpen),
                bool(d.denoise),
            )
            self.crop_rows.value = (0.0, 100.0)
            self.crop_cols.value = (0.0, 100.0)
        finally:
            self._quiet = False
        self.refresh_preview()

    def _on_option(self, _change) -> None:
        if self._quiet:
            return
        if self.volume is not None:
            axis, index = self.volume_axis.value, self.volume_index.value
            self.source = self.volume.section(axis, index)
            self.source_name = _volume_section_name(self.volume, axis, index)
        self._guard(self.refresh_preview)

    def refresh_preview(self) -> None:
        """Run the preprocessing on the current source and show the cleaned slice."""
        self._reset_results()
        if self.source is None:
            return
        raw = self.source
        options = self.options()
        if options.cropped and not self.source_cleaned:
            raw = classify._manual_crop(raw, options.crop)
        shown = render.thumbnail(render.display_uint8(raw))
        try:
            cleaned, info = classify.prepare(
                self.source,
                options,
                self.base_config,
                cleaned=self.source_cleaned,
                name=self.source_name,
            )
        except (PreprocessError, classify.ClassifyError) as exc:
            self.cleaned, self.cleaned_info = None, None
            self.preview.value = b""
            self.raw_view.value = render.png_bytes(shown)
            self.preview_info.value = ""
            self.message.value = render.message(
                "error", f"{exc}. Try another sensitivity or crop, or another image."
            )
            return
        if info.get("box") and not self.source_cleaned:
            scale = shown.shape[0] / raw.shape[0] / info.get("scale", 1.0)
            r0, r1, c0, c1 = (int(round(b * scale)) for b in info["box"])
            shown = cv2.cvtColor(shown, cv2.COLOR_GRAY2RGB) if shown.ndim == 2 else shown.copy()
            cv2.rectangle(shown, (c0, r0), (c1 - 1, r1 - 1), (230, 120, 0), 1)
        self.raw_view.value = render.png_bytes(shown)
        self.cleaned, self.cleaned_info = cleaned, info
        self.preview.value = render.png_bytes(cleaned)
        truth = (
            f"; true genus: <b>{html.escape(self.source_truth)}</b>" if self.source_truth else ""
        )
        self.preview_info.value = (
            f"<span class='foram-muted'>{html.escape(self.source_name)}: fossil covers "
            f"{100 * info['fraction']:.1f}%; {PATH_TAKEN.get(info['source'], info['source'])}"
            f"{truth or ''}</span>"
        )
        low = info["fraction"] < self.base_config.min_fraction and not self.source_cleaned
        if low:
            self.message.value = render.message(
                "warn",
                f"The fossil covers only {100 * info['fraction']:.1f}% of the image — training "
                f"dropped sections under {100 * self.base_config.min_fraction:.0f}%. "
                "Crop closer or raise the sensitivity.",
            )
        elif not self._classifier_error:
            self.message.value = render.message("info", "Ready: press Classify.")

    # ------------------------------------------------------------------ classify
    def _check_artefacts(self) -> None:
        missing = classify.missing_artefacts(self.workspace) if self._classifier is None else []
        if missing:
            self._classifier_error = (
                "The trained models are not there yet (missing: "
                + ", ".join(missing[:4])
                + "). Run `dvc repro` (or `make demo`) in "
                + str(self.workspace)
                + " first, then reload this page."
            )
            self.message.value = render.message("error", self._classifier_error)
            self.classify_button.disabled = True
            self.scan_button.disabled = True
            self._set_models_status(error=self._classifier_error)

    def classifier(self):
        """The workspace's classifier, loaded on first use (thread-safe)."""
        with self._load_lock:
            if self._classifier is None:
                self._classifier = classify.Classifier.from_workspace(self.workspace)
            return self._classifier

    def _set_models_status(self, error: str | None = None) -> None:
        if error:
            text = "⚠ The models are not available; the message below (or Classify) says why."
        elif self._classifier is None:
            text = "⏳ Loading the models in the background (a few seconds, once)…"
        elif self._models_ready:
            text = "✔ Models loaded and ready."
        else:
            text = "⏳ Preparing the models (a few seconds, once)…"
        self.models_status.value = f"<span class='foram-muted'>{text}</span>"

    def preload(self) -> threading.Thread | None:
        """Start loading the models in the background (the page renders meanwhile).

        A preheated kernel (``foramlib.app.serve``'s ``--preheat``) runs this before
        anyone opens the page, so its first answer does not wait for them."""
        if self._classifier is not None or self._classifier_error:
            return None

        def work():
            try:
                self.classifier().warm_up()
                self._models_ready = True
                self._set_models_status()
            except Exception as exc:  # the reason is reported when the user presses Classify
                self._set_models_status(error=str(exc))

        thread = threading.Thread(target=work, name="foram-load-models", daemon=True)
        thread.start()
        return thread

    def classify(self) -> None:
        """Classify the cleaned slice and fill the result widgets."""
        with _busy(self.classify_button, "Classifying…"):
            self._guard(self._classify)

    def _classify(self) -> None:
        t_click = time.perf_counter()  # what the user waits is measured from here
        if self._classifier_error:
            self.message.value = render.message("error", self._classifier_error)
            return
        if self.cleaned is None:
            self.message.value = render.message(
                "error",
                "Nothing to classify yet: upload an image or volume, or pick a test slice "
                "(and make sure the cleaned preview shows the fossil).",
            )
            return
        loads_now = self._classifier is None  # else loaded, or being loaded by preload
        if loads_now:
            self.message.value = render.message("info", "Loading the models (first time only)…")
        try:
            clf = self.classifier()
        except classify.ArtefactError as exc:
            self._classifier_error = str(exc)
            self.message.value = render.message("error", str(exc))
            return
        loading = time.perf_counter() - t_click
        if not self._models_ready:
            self._models_ready = True
            self._set_models_status()
        t0 = time.perf_counter()
        pred = clf.predict(self.cleaned, preprocessing=self.cleaned_info)
        seconds = time.perf_counter() - t0
        self.prediction = pred
        self.top5.value = render.top5_html(pred)
        self.probabilities.value = render.probability_chart(
            pred.probabilities, highlight=pred.genus
        )
        # "not a foraminifer section" outranks the others; "maybe not one of these
        # genera" and "uncertain" can both apply
        self.uncertain.value = render.verdict_html(pred)
        _hide(self.uncertain, not self.uncertain.value)
        try:
            heat = clf.grad_cam(self.cleaned, pred.genus)
            self.gradcam.value = render.gradcam_png(self.cleaned, heat)
            cam_note = (
                f"Grad-CAM of {clf.main} for {pred.genus}: red where the slice weighed most "
                "in that answer, blue where it did not count (relative to this slice's "
                "strongest evidence, not a probability)."
            )
        except classify.ClassifyError as exc:
            self.gradcam.value = b""
            cam_note = f"No heat map: {exc}"
        self.metadata.value = render.metadata_html(pred, seconds, cam_note)
        truth = ""
        if self.source_truth:
            verdict = "correct" if self.source_truth == pred.genus else "not correct"
            truth = f" The true genus is {self.source_truth}: {verdict}."
        waited = f"{time.perf_counter() - t_click:.2f} s" + (
            f" ({loading:.1f} s of it loading the models)" if loads_now or loading >= 0.5 else ""
        )
        if pred.not_a_section:
            self.message.value = render.message(
                "warn",
                f"Classified {self.source_name} in {waited}, but it does not look "
                "like a foraminifer section (see the red box).",
            )
        elif pred.maybe_unknown_genus:
            self.message.value = render.message(
                "warn",
                f"Classified {self.source_name} in {waited}, but it may not be one of these "
                f"genera (see the purple box).{truth}",
            )
        else:
            self.message.value = render.message(
                "info", f"Classified {self.source_name} in {waited}.{truth}"
            )
        # shown after the message: the browser applies widget updates in order, so the
        # answer never appears beside the previous "Ready: press Classify."
        _hide(self.results_box, False)

    def _reset_results(self) -> None:
        self.prediction = None
        self.top5.value = ""
        self.uncertain.value = ""
        _hide(self.uncertain)
        self.probabilities.value = b""
        self.gradcam.value = b""
        self.metadata.value = ""
        _hide(self.results_box)
        if not self._classifier_error:
            self.message.value = ""

    def _guard(self, action) -> None:
        """Run a handler; any error becomes a message and the app keeps working."""
        try:
            action()
        except (PreprocessError, classify.ClassifyError, ValueError) as exc:
            self.message.value = render.message("error", str(exc))
        except Exception as exc:  # noqa: BLE001 - the page must survive anything
            self.message.value = render.message(
                "error", f"Unexpected error ({type(exc).__name__}): {exc}"
            )

    # ------------------------------------------------------------------ whole scan
    def scan_calibration(self) -> tuple[Calibration | None, str | None]:
        """The specimen-level uncertainty rule, computed on first use and kept.

        Returns
        -------
        calibration : Calibration or None
            :func:`foramlib.inference.scan.calibrate_specimens` on the classifier's validation
            predictions; None when they cannot be voted per specimen.
        note : str or None
            Why there is no calibration (the :class:`~foramlib.inference.classify.ArtefactError`).
        """
        clf = self.classifier()
        with self._load_lock:
            if self._scan_calibration is None:
                try:
                    found = scan.calibrate_specimens(clf.spec, self.workspace / "models")
                    self._scan_calibration = (found, None)
                except classify.ArtefactError as exc:
                    self._scan_calibration = (None, str(exc))
            return self._scan_calibration

    def classify_scan(self) -> None:
        """Classify the uploaded volume as a whole and fill the whole-scan results."""
        self._guard(self._classify_scan)

    def _classify_scan(self) -> None:
        if self._classifier_error:
            self.message.value = render.message("error", self._classifier_error)
            return
        if self.volume is None:
            self.message.value = render.message(
                "error",
                "No scan to classify: upload a NIfTI or NRRD volume or a TIFF stack first.",
            )
            return
        self._reset_scan()
        self.scan_button.disabled = True
        result = None
        try:
            result = self._run_scan(self.volume)
        finally:
            self.scan_button.disabled = bool(self._classifier_error)
            if result is None:  # an error (shown by _guard) or no models
                self.scan_progress.value = 0.0
                self.scan_status.value = ""
        if result is not None:
            self._show_scan(*result)

    def _run_scan(self, volume: uploads.VolumeUpload):
        """Run :func:`foramlib.inference.scan.classify_scan` as ``foram classify`` does.

        Returns
        -------
        tuple of (ScanAnswer, float, str or None) or None
            The answer, its wall time and the no-calibration note; None (with the error
            shown) when the models cannot be loaded.
        """
        self._scan_progress(0.0, "loading the models and the specimen calibration")
        try:
            clf = self.classifier()
            calibration, note = self.scan_calibration()
        except classify.ArtefactError as exc:
            self._classifier_error = str(exc)
            self.message.value = render.message("error", str(exc))
            return None
        config, source = scan.slicing_defaults(self.workspace)
        config = dataclasses.replace(config, preprocess=clf.preprocess)
        self.message.value = render.message("info", f"Classifying the whole scan {volume.name}…")
        t0 = time.perf_counter()
        answer = scan.classify_scan(
            clf,
            volume,
            n_sections=int(self.scan_sections.value),
            seed=SCAN_SEED,
            slicing=config,
            calibration=calibration,
            progress=self._scan_progress,
        )
        answer.metadata["slicing_source"] = source
        return answer, time.perf_counter() - t0, note

    def _scan_progress(self, fraction: float, message: str) -> None:
        self.scan_progress.value = float(np.clip(fraction, 0.0, 1.0))
        self.scan_status.value = f"<span class='foram-muted'>{html.escape(message)}</span>"

    def _show_scan(self, answer: scan.ScanAnswer, seconds: float, note: str | None) -> None:
        """Fill the whole-scan results with `answer` (made in `seconds`)."""
        self.scan_answer = answer
        self.scan_uncertain.value = render.scan_uncertain_html(answer, note)
        self.scan_table.value = render.scan_table_html(answer.ranking)
        self.scan_summary.value = render.scan_summary_html(answer, seconds)
        self.scan_thumbs.value = render.scan_sections_html(answer)
        self.scan_progress.value = 1.0
        self.scan_status.value = ""
        _hide(self.scan_results, False)
        flag = " (uncertain)" if answer.uncertain else ""
        self.message.value = render.message(
            "info",
            f"Classified the whole scan {answer.name}: {answer.genus}{flag}, from "
            f"{answer.metadata.get('n_sections', len(answer.images))} sections in "
            f"{seconds:.1f} s.",
        )

    def _reset_scan(self) -> None:
        self.scan_answer = None
        self.scan_uncertain.value = ""
        self.scan_table.value = ""
        self.scan_summary.value = ""
        self.scan_thumbs.value = ""
        self.scan_progress.value = 0.0
        self.scan_status.value = ""
        _hide(self.scan_results)

    # ================================================================== match page
    def _build_match(self) -> widgets.VBox:
        self.match_query_view = _image("foram-match-query")
        self.match_query_view.layout.width = "160px"
        self.match_query_info = widgets.HTML()
        self.match_genera = _cls(
            widgets.SelectMultiple(options=[], rows=8, description="Genera"),
            "foram-match-genera",
        )
        self.match_specimens = _cls(
            widgets.SelectMultiple(options=[], rows=8, description="Specimens"),
            "foram-match-specimens",
        )
        self.match_genera.observe(self._on_match_genera, names="value")
        self.match_predicted = _cls(
            widgets.Checkbox(value=False, description="within the predicted genus only"),
            "foram-match-predicted",
        )
        self.match_predicted.style.description_width = "initial"
        self.match_button = _cls(
            widgets.Button(description="Find in 3D", button_style="success", icon="cube"),
            "foram-match-button",
        )
        self.match_button.on_click(lambda _b: self.run_match())
        self.match_progress = _cls(
            widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="Search"),
            "foram-match-progress",
        )
        self.match_status = widgets.HTML()
        self.match_message = _cls(widgets.HTML(), "foram-match-message")
        self.match_results = _cls(widgets.HTML(), "foram-match-results")
        self.match_choice = _cls(
            widgets.Dropdown(options=[], description="Show match"), "foram-match-choice"
        )
        self.match_choice.observe(self._on_match_choice, names="value")
        self.match_view = _image("foram-match-view")
        self.match_view.layout.max_width = "900px"
        return widgets.VBox(
            [
                widgets.HTML(
                    "<h2>Find the slice in 3D</h2><p>Searches the indexed specimen volumes for "
                    "the plane whose section best matches your slice (silhouette overlap, "
                    "texture correlation and structural similarity). Leave the lists empty to "
                    "search everything; select genera or specimens (Ctrl/Cmd-click) to narrow "
                    "the search.</p>"
                ),
                widgets.HBox(
                    [
                        widgets.VBox([widgets.HTML("<b>Query</b>"), self.match_query_view]),
                        self.match_query_info,
                    ]
                ),
                widgets.HBox([self.match_genera, self.match_specimens]),
                self.match_predicted,
                widgets.HBox([self.match_button, self.match_progress, self.match_status]),
                self.match_message,
                self.match_results,
                self.match_choice,
                self.match_view,
            ]
        )

    def collection(self):
        """The 3D index and its volumes, loaded on first use (None with a message if absent)."""
        if self._collection is None:
            self._collection = self._collection_loader(self.workspace)
        return self._collection

    def _enter_match(self) -> None:
        self._show_query()
        try:
            col = self.collection()
        except Exception as exc:  # noqa: BLE001 - missing index, old index, import error
            self.match_message.value = render.message("error", render.index_hint(exc))
            self.match_button.disabled = True
            return
        self.match_button.disabled = False
        if not self.match_genera.options:
            self.match_genera.options = list(col.genera)
            self._fill_specimens()

    def _fill_specimens(self) -> None:
        col = self._collection
        if col is None:
            return
        spec = col.specimens
        chosen = set(self.match_genera.value)
        if chosen:
            spec = spec[spec["species"].isin(chosen)]
        keep = [s for s in self.match_specimens.value if s in set(spec["specimen_id"])]
        self.match_specimens.options = [
            (f"{r.specimen_id} ({r.species})", r.specimen_id) for r in spec.itertuples()
        ]
        self.match_specimens.value = tuple(keep)

    def _on_match_genera(self, _change) -> None:
        self._fill_specimens()

    def go_to_match(self) -> None:
        """Carry the current slice to the matching page ("find this slice in 3D")."""
        if self.source is None:
            self.message.value = render.message("error", "Upload or pick a slice first.")
            return
        options = self.options()
        try:
            # the matcher preprocesses with the index's own settings: pass the section
            # as the user framed it (manual crop), without intensity enhancements
            if self.source_cleaned:
                query = np.asarray(self.source)
            else:
                query = (
                    classify._manual_crop(self.source, options.crop)
                    if options.cropped
                    else np.asarray(self.source)
                )
        except classify.ClassifyError as exc:
            self.message.value = render.message("error", str(exc))
            return
        self.match_query = query
        self.match_query_name = self.source_name
        self.show_page("match")

    def _show_query(self) -> None:
        if self.match_query is None:
            self.match_query_view.value = b""
            self.match_query_info.value = (
                "<p>No slice yet: upload or pick one on the <b>Classify a slice</b> page and "
                "press <b>Find this slice in 3D</b>.</p>"
            )
            return
        self.match_query_view.value = render.png_bytes(
            render.thumbnail(render.display_uint8(self.match_query))
        )
        predicted = (
            f"<br>Predicted genus: <b>{html.escape(self.prediction.genus)}</b>"
            if self.prediction is not None
            else "<br><span class='foram-muted'>Not classified yet (classify it to search "
            "within the predicted genus).</span>"
        )
        self.match_query_info.value = f"<p>{html.escape(self.match_query_name)}{predicted}</p>"

    def run_match(self) -> None:
        """Run the matcher on the carried slice with the chosen restrictions."""
        try:
            # seconds of work: one search at a time, and the button says it is busy
            with _busy(self.match_button, "Searching…"):
                self._run_match()
        except Exception as exc:  # noqa: BLE001 - the page must survive anything
            self.match_message.value = render.message("error", f"{exc}")
            self.match_status.value = ""

    def _run_match(self) -> None:
        from foramlib.matching import search as matching  # noqa: F401 - view3d checked early
        from foramlib.viz import view3d  # noqa: F401 - view3d checked early

        if self.match_query is None:
            self.match_message.value = render.message(
                "error",
                "No slice to match: upload or pick one on the classification page, then "
                "press 'Find this slice in 3D'.",
            )
            return
        t0 = time.perf_counter()  # what the user waits for, the collection's loading too
        try:
            col = self.collection()
        except Exception as exc:  # noqa: BLE001
            self.match_message.value = render.message("error", render.index_hint(exc))
            return
        species = list(self.match_genera.value) or None
        specimens = list(self.match_specimens.value) or None
        if self.match_predicted.value:
            if self.prediction is None:
                self.match_message.value = render.message(
                    "error",
                    "No predicted genus yet: classify the slice first, or untick 'within the "
                    "predicted genus only'.",
                )
                return
            genus = self.prediction.genus
            if genus not in col.genera:
                self.match_message.value = render.message(
                    "error", f"The predicted genus {genus} has no indexed specimens."
                )
                return
            species = [genus]
            if specimens:
                ids = set(col.specimens.loc[col.specimens["species"] == genus, "specimen_id"])
                specimens = [s for s in specimens if s in ids] or None
        self.matches = []
        self.match_results.value = ""
        self.match_view.value = b""
        self.match_choice.options = []
        self.match_message.value = render.message("info", "Searching…")

        def progress(fraction, message):
            self.match_progress.value = float(np.clip(fraction, 0.0, 1.0))
            self.match_status.value = f"<span class='foram-muted'>{html.escape(message)}</span>"

        try:
            matches = matching.match(
                col.index,
                self.match_query,
                top_k=5,
                specimens=specimens,
                species=species,
                refine=True,
                volumes=col.volumes,
                time_budget_s=MATCH_TIME_BUDGET_S,
                progress=progress,
            )
        except (matching.MatchError, PreprocessError, ValueError) as exc:
            self.match_progress.value = 0.0
            self.match_status.value = ""
            self.match_message.value = render.message("error", str(exc))
            return
        seconds = time.perf_counter() - t0
        self.match_progress.value = 1.0
        self.matches = matches
        if not matches:
            self.match_message.value = render.message("warn", "No candidate sections matched.")
            return
        where = []
        if species:
            where.append("genera " + ", ".join(species))
        if specimens:
            where.append("specimens " + ", ".join(specimens))
        head = render.message(
            "info",
            f"{len(matches)} best matches in {seconds:.1f} s"
            + (f" (within {'; '.join(where)})" if where else " (whole collection)")
            + "."
            + (
                f" Your slice as given matched weakly; these matches are for another "
                f"reading of it: {matches[0].reading}."
                if matches[0].reading != matching.READINGS[0].name
                else ""
            ),
        )
        check = self._match_check()
        verdict = None if check is None else check.verdict(matches[0].scores["combined"])
        if verdict is not None:
            # a photo or noise can fit some section's outline: the section check decides
            from foramlib.matching.reliability import not_a_section_verdict

            refusal = classify.section_refusal(self.match_query, self.workspace)
            if refusal:
                verdict = not_a_section_verdict(verdict, refusal)
        disagreement = ""
        if self.prediction is not None and not (species or specimens):
            final = (self.metrics or {}).get("models", {}).get((self.metrics or {}).get("final"))
            disagreement = render.disagreement_html(
                self.prediction.genus,
                self.prediction.confidence,
                matches,
                final.get("accuracy") if final else None,
            )

        def say(verdict, other=None) -> None:
            shown = (
                ""
                if verdict is None
                else render.match_verdict_html(verdict, check, matches[0], other)
            )
            self.match_message.value = head + shown + disagreement

        say(verdict)
        self.match_results.value = render.matches_html(self.match_query, matches)
        self._quiet = True
        try:
            self.match_choice.options = [
                (f"{i}. {m.specimen_id} ({m.species})", i - 1)
                for i, m in enumerate(matches, start=1)
            ]
            self.match_choice.value = 0
        finally:
            self._quiet = False
        self.show_match(0)
        if verdict is not None and verdict.reliable and check.margin_threshold is not None:
            # the matches are on screen; now, is it this specimen or a look-alike?
            self._check_specimen(col, matches[0], check, say, specimens, species)

    def _check_specimen(self, col, best, check, say, specimens, species) -> None:
        """Search the other specimens in reach; word the specimen margin's verdict."""
        from foramlib.matching import reliability

        self.match_status.value = (
            "<span class='foram-muted'>checking whether another specimen fits as well…</span>"
        )
        self.match_progress.value = 0.0
        t0 = time.perf_counter()
        verdict, other = reliability.specimen_verdict(
            check,
            col.index,
            self.match_query,
            best,
            volumes=col.volumes,
            specimens=specimens,
            species=species,
            time_budget_s=MATCH_TIME_BUDGET_S,
            progress=lambda f, m: setattr(self.match_progress, "value", float(f)),
        )
        self.match_progress.value = 1.0
        self.match_status.value = (
            f"<span class='foram-muted'>other specimens compared in "
            f"{time.perf_counter() - t0:.1f} s</span>"
            if other is not None
            else ""
        )
        if other is not None:  # else nothing to compare with: the verdict stays as it was
            say(verdict, other)

    def _match_check(self):
        """The workspace's match limit (``calibrate_match`` stage); None without one.

        Read again only when the file changed (another inode, time or size), so a search
        does not reread it while a rerun of the stage still shows without a restart.
        """
        from foramlib.matching.reliability import MatchCheckError, load_match_check

        path = self.workspace / "results" / "match_check.json"
        try:
            st = path.stat()
        except OSError:
            return None  # no limit (yet): nothing to verdict with
        # the inode too: the stage writes the file atomically (a new inode), so a rewrite
        # within the file system's timestamp granularity and of the same size still shows
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._match_check_read is not None and self._match_check_read[0] == key:
            return self._match_check_read[1]
        try:
            check = load_match_check(path)
        except (MatchCheckError, OSError):
            check = None  # an unreadable limit gives no verdict rather than a broken page
        # stat before reading: a file replaced in between is read again on the next call
        self._match_check_read = (key, check)
        return check

    def _on_match_choice(self, change) -> None:
        if self._quiet or change["new"] is None:
            return
        try:
            self.show_match(int(change["new"]))
        except Exception as exc:  # noqa: BLE001
            self.match_message.value = render.message("error", f"Cannot draw the 3D view: {exc}")

    def show_match(self, i: int) -> None:
        """Draw match `i`'s plane inside its specimen (the 3D view)."""
        from foramlib.dataset.slicing import Plane
        from foramlib.viz import view3d

        m = self.matches[i]
        volume = self._collection.volume(m.specimen_id)
        source = data_source(self.workspace, self.metrics)
        label = " (virtual specimen)" if source == "virtual" else ""
        fig = view3d.plane_figure(
            volume,
            Plane(tuple(m.normal), float(m.offset), float(m.angle_deg)),
            title=f"{m.specimen_id} — {m.species}{label}: fit {m.scores['combined']:.2f} "
            "(1 is a perfect fit)",
            section=[("your slice", render.display_uint8(self.match_query)), ("matched", m.image)],
        )
        self.match_view.value = view3d.figure_png(fig, dpi=80)


def _crop_slider(description: str, css_class: str):
    """A 0–100 % range slider of the manual crop (applied on release, not while dragging)."""
    slider = widgets.FloatRangeSlider(
        value=(0.0, 100.0),
        min=0.0,
        max=100.0,
        step=1.0,
        description=description,
        continuous_update=False,
    )
    return _cls(slider, css_class)
