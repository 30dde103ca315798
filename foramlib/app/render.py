"""The dashboard's HTML and images: pure functions of results (no widgets here).

Each function turns a result (a :class:`~foramlib.inference.classify.Prediction`, a
:class:`~foramlib.inference.scan.ScanAnswer`, matches, ``metrics.json``) into the HTML or PNG
a page shows, so the wording and the numbers are tested without a browser. The CSS
classes (``foram-*``) are the browser tests' handles; see ``book/dashboard.md``.
"""

from __future__ import annotations

import base64
import html
import io

import cv2
import numpy as np

from foramlib.inference import classify, scan
from foramlib.io.volumes import stretch
from foramlib.viz.view3d import plane_words

__all__ = [
    "STYLE",
    "SCAN_THUMBNAILS",
    "png_bytes",
    "display_uint8",
    "thumbnail",
    "data_uri",
    "probability_chart",
    "message",
    "index_hint",
    "pct",
    "dataset_html",
    "performance_html",
    "disagreement_html",
    "chance_levels",
    "top5_html",
    "uncertain_html",
    "gradcam_png",
    "upload_label_css",
    "not_a_section_html",
    "unknown_genus_html",
    "verdict_html",
    "scan_table_html",
    "scan_uncertain_html",
    "scan_summary_html",
    "scan_sections_html",
    "metadata_html",
    "matches_html",
    "plane_polygon",
    "plane_icon",
    "plane_words",
    "MATCH_SCORES",
]

SCAN_THUMBNAILS = 8  # sections shown under a whole-scan answer

STYLE = """
<style>
.foram-app { max-width: 1200px; font-family: sans-serif; }
.foram-app table { border-collapse: collapse; margin: 4px 0; }
.foram-app th, .foram-app td { border-bottom: 1px solid #ddd; padding: 3px 10px;
  text-align: left; vertical-align: middle; }
.foram-app tr.foram-rank-1 td, .foram-app tr.foram-match-1 td { font-weight: bold; }
.foram-msg-error { color: #a40000; background: #fff0f0; padding: 6px; border-radius: 4px; }
.foram-msg-info { color: #1f3d66; background: #eef4fb; padding: 6px; border-radius: 4px; }
.foram-msg-warn { color: #6b4a00; background: #fff7dd; padding: 6px; border-radius: 4px; }
.foram-uncertain-box { color: #6b4a00; background: #fff3cd; border: 1px solid #e0b400;
  padding: 8px; border-radius: 4px; }
.foram-not-section-box { color: #7a0000; background: #fde8e8; border: 1px solid #c0392b;
  padding: 8px; border-radius: 4px; }
.foram-unknown-genus-box { color: #4a2a6b; background: #f3ecfb; border: 1px solid #8e5cc2;
  padding: 8px; border-radius: 4px; margin-bottom: 4px; }
.foram-muted { color: #666; font-size: 90%; }
.foram-app .foram-upload { font-size: 0; }
.foram-app .foram-upload i { font-size: 13px; margin-right: 6px; }
.foram-app .foram-upload::after { content: "Upload a slice or volume"; font-size: 13px; }
.foram-app tr.foram-scan-winner td { background: #fdebd3; }
.foram-scan-thumb { display: inline-block; margin: 2px 4px; text-align: center;
  font-size: 85%; }
.foram-scan-thumb img { display: block; image-rendering: pixelated; }
</style>
"""


def upload_label_css(name: str | None) -> str:
    """A ``<style>`` naming the current file on the upload button (or the plain label).

    ipywidgets' upload button always appends the number of files it holds, "(0)" once
    the app has taken the file; the page hides that text and shows this label instead.
    Every character but letters, digits, space, ``.``, ``_`` and ``-`` is written as a
    CSS escape, so a file name cannot end the string or the style.

    >>> upload_label_css(None)
    '<style>.foram-app .foram-upload::after { content: "Upload a slice or volume"; }</style>'
    >>> print(upload_label_css('a"b.png'))
    <style>.foram-app .foram-upload::after { content: "a\\000022b.png — upload another"; }</style>
    """
    if name is None:
        text = "Upload a slice or volume"
    else:
        short = name if len(name) <= 40 else name[:18] + "…" + name[-18:]
        text = f"{short} — upload another"
    safe = "".join(c if c.isalnum() or c in " ._-—…" else f"\\{ord(c):06x}" for c in text)
    return f'<style>.foram-app .foram-upload::after {{ content: "{safe}"; }}</style>'


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a 2-D (gray) or RGB uint8 image.

    >>> png_bytes(np.zeros((4, 4), np.uint8))[:4]
    b'\\x89PNG'
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {img.shape} as PNG")
    return buf.tobytes()


def display_uint8(image: np.ndarray) -> np.ndarray:
    """Any section → uint8 gray (or RGB) for display, stretched between 0.5/99.5 %.

    Shares :func:`foramlib.io.volumes.stretch` with the pipeline, but never refuses an
    image: an empty one stays empty, and one whose percentiles coincide is shown with
    that value black (the window widened by one grey level, not the min/max fallback
    of :func:`~foramlib.io.volumes.percentile_window`).

    >>> display_uint8(np.array([[0.0, 1.0, 2.0, 4.0]])).tolist()
    [[0, 64, 128, 255]]
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    arr = arr.astype(np.float32)
    lo, hi = np.percentile(arr, [0.5, 99.5]) if arr.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.round(stretch(arr, lo, hi, np.float64) * 255).astype(np.uint8)


def thumbnail(image: np.ndarray, side: int = 256) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), cv2.INTER_AREA
        )
    return image


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def probability_chart(probabilities: dict[str, float], highlight: str | None = None) -> bytes:
    """Horizontal bar chart (PNG) of every genus' probability, largest on top."""
    from matplotlib.figure import Figure

    items = sorted(probabilities.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(5.2, 0.26 * len(items) + 0.9), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#d9822b" if k == highlight else "#4a78a8" for k, _ in items]
    ax.barh([k for k, _ in items], [100 * v for _, v in items], color=colours)
    ax.set_xlim(0, 100)
    chance = 100 / max(len(items), 1)  # a random guess gives every genus this much
    ax.axvline(chance, color="#888888", linestyle=":", linewidth=1)
    ax.text(chance + 1, -0.6, f"chance {chance:.0f}%", fontsize=7, color="#666666", va="top")
    ax.set_xlabel("probability (%)")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("All genera", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def gradcam_png(image: np.ndarray, heat: np.ndarray, *, side: int = 288) -> bytes:
    """Grad-CAM over the slice, with its colour scale (PNG).

    Parameters
    ----------
    image : ndarray of uint8, shape (S, S)
        The cleaned slice.
    heat : ndarray of float in [0, 1]
        The heat map, any resolution (enlarged smoothly over the slice).
    side : int
        Width of the picture in pixels (the slice is shown enlarged, pixel for pixel).

    Examples
    --------
    >>> gradcam_png(np.zeros((16, 16), np.uint8), np.ones((4, 4), np.float32))[:4]
    b'\\x89PNG'
    """
    from matplotlib.figure import Figure

    img = np.asarray(image)
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    if heat.shape != img.shape:
        heat = cv2.resize(heat, img.shape[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 1)
    dpi = 100
    fig = Figure(figsize=(side / dpi, side / dpi * 0.82), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    shown = ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=0.42, interpolation="bilinear")
    ax.set_axis_off()
    bar = fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.02, ticks=[0, 0.5, 1])
    bar.solids.set_alpha(1)
    bar.ax.set_yticklabels(["none", "half", "most"], fontsize=7)
    bar.set_label("weight in the decision", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def message(kind: str, text: str) -> str:
    return f'<div class="foram-msg-{kind}">{html.escape(text)}</div>'


def match_verdict_html(verdict, check, best=None, other=None) -> str:
    """The match limits' verdict (:mod:`foramlib.matching.reliability`) in plain words.

    `best` is the best match and `other` the best among the other specimens (when it
    was searched): with them, a reliable verdict also says whether the specimen itself
    is clear, and what the two say about the genus when it is not.

    >>> from foramlib.matching.reliability import MatchCheck
    >>> check = MatchCheck(0.8, 0.95, (0.7, 0.85, 0.9), (False, True, True))
    >>> "No reliable match" in match_verdict_html(check.verdict(0.75), check)
    True
    """
    trials = (
        f"{check.kept_share():.0%} of {check.n_queries} sections cut at known places from "
        "specimens of this collection"
    )
    if verdict.not_a_section:
        return message(
            "warn",
            f"No reliable match: the section check refused your image "
            f"({html.escape(verdict.not_a_section)}). A photo, noise or another material "
            f"can still fit the outline of some section (here with a score of "
            f"{verdict.score:.2f}), so the matches below say nothing about where it sits.",
        )
    if not verdict.reliable:
        return message(
            "warn",
            f"No reliable match: the best fit (score {verdict.score:.2f}) is under the limit "
            f"{verdict.threshold:.2f} that {trials} reach. The fossil may not be in the "
            "collection, or the section may be too damaged or noisy to place: read the "
            "matches below as look-alikes, not as where your section sits.",
        )
    precision = check.precision()
    found = (
        f"; in those trials a fit this good named the right specimen and plane "
        f"{precision:.0%} of the time"
        if precision is not None
        else ""
    )
    reliable = (
        f"Reliable match: the best fit (score {verdict.score:.2f}) is at least as good "
        f"as the limit {verdict.threshold:.2f} that {trials} reach{found}."
    )
    if verdict.specimen_sure is None or other is None or best is None:
        return message("info", reliable)
    next_one = f"{html.escape(other.specimen_id)} ({html.escape(other.species)})"
    margin_trials = (
        f"the margin {verdict.margin_threshold:.2f} that {check.margin_kept_share():.0%} of "
        f"those sections clear"
    )
    if verdict.specimen_sure:
        return message(
            "info",
            f"{reliable} It is this specimen: no other fits as well (the next best, "
            f"{next_one}, scores {verdict.margin:.2f} lower, at least {margin_trials}).",
        )
    from foramlib.matching.reliability import genus_note

    note = genus_note(best.species, other.species)
    genus = html.escape(note[0].upper() + note[1:]) + "."
    return message(
        "warn",
        f"{reliable} But is it this specimen? The next best, {next_one}, fits nearly as well "
        f"({verdict.margin:+.2f}, under {margin_trials}): the section may come from a "
        f"specimen that is not in the collection, a look-alike of these. {genus}",
    )


def index_hint(exc: Exception) -> str:
    return (
        f"The 3D search index is not available ({exc}). Run `dvc repro index` in the "
        "workspace first (it indexes the specimen volumes into data/index), then reload."
    )


def pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def disagreement_html(genus: str, confidence: float, matches, accuracy: float | None) -> str:
    """A warning when the classifier and the 3D search name different genera, saying
    which to trust; empty when they agree (or there is no match).

    The 3D search finds the specimen a section was cut from (it compares the section
    with every plane of the reference specimens), so for a slice of a reference specimen
    it is the better witness; the classifier is the one measured on specimens it has
    never seen (`accuracy`, the final model's test accuracy). For a fossil outside the
    collection the search only finds the most alike reference section.

    Examples
    --------
    >>> from types import SimpleNamespace as M
    >>> ms = [M(species="Beta", specimen_id="S1"), M(species="Alpha", specimen_id="S0")]
    >>> disagreement_html("Beta", 0.9, ms, 0.5)
    ''
    >>> "disagree" in disagreement_html("Alpha", 0.9, ms, 0.5)
    True
    """
    if not matches or matches[0].species == genus:
        return ""
    top = matches[0]
    alike = sum(m.species == top.species for m in matches)
    measured = (
        f"about {pct(accuracy)} of the slices of specimens it never saw in training"
        if accuracy is not None
        else "slices of specimens it never saw in training"
    )
    return message(
        "warn",
        f"The classifier and the 3D search disagree: the classifier says {genus} "
        f"({pct(confidence)}), but the best match is a section of {top.species} "
        f"(specimen {top.specimen_id}; {alike} of the {len(matches)} best matches are "
        f"{top.species}). Which to trust: if your slice was cut from one of the reference "
        "specimens, the 3D search, which finds the specimen a section comes from; the "
        f"classifier gets {measured} right. If the fossil is not one of the reference "
        "specimens, the search only finds the most alike reference section: treat the "
        "genus as uncertain and check its diagnostic features.",
    )


def top5_html(pred: classify.Prediction) -> str:
    """The five most probable genera, with what a random guess would give each.

    >>> pred = classify.Prediction([("A", 0.5), ("B", 0.3)], {"A": 0.5, "B": 0.3, "C": 0.2},
    ...                            False, None, {})
    >>> "chance: 33.3% for each genus" in top5_html(pred)
    True
    """
    rows = "".join(
        f'<tr class="foram-rank-{i}"><td>{i}</td><td>{html.escape(g)}</td><td>{pct(p)}</td></tr>'
        for i, (g, p) in enumerate(pred.top5, start=1)
    )
    n = len(pred.probabilities)
    chance = (
        f"<caption class='foram-muted' style='caption-side:bottom'>chance: {pct(1 / n)} "
        f"for each genus (a random guess among {n})</caption>"
        if n
        else ""
    )
    return f"<table>{chance}<tr><th>Rank</th><th>Genus</th><th>Confidence</th></tr>{rows}</table>"


def uncertain_html(pred: classify.Prediction) -> str:
    cal = pred.threshold
    if cal is None:
        why = "no validation predictions were found to calibrate a confidence threshold."
    elif not cal.reached:
        why = (
            f"on the validation slices no confidence level reached the required "
            f"{pct(cal.target_precision)} precision, so every answer is flagged."
        )
    else:
        why = (
            f"the top probability {pct(pred.confidence)} is below the calibrated threshold "
            f"{pct(cal.threshold)} (validation predictions at or above it were right "
            f"{pct(cal.precision)} of the time)."
        )
    return (
        '<div class="foram-uncertain-box"><b>⚠ Uncertain result</b> — '
        f"{html.escape(why)} The slice may be ambiguous, badly segmented, or from a genus "
        "outside the trained genera; treat the ranking as a suggestion and check the other "
        "candidates.</div>"
    )


def not_a_section_html(pred: classify.Prediction) -> str:
    """The section check's refusal (:mod:`foramlib.inference.section_check`), in the page's words.

    >>> from foramlib.inference.section_check import Verdict
    >>> pred = classify.Prediction([("A", 0.9)], {"A": 0.9}, False, None, {},
    ...                            section=Verdict(False, "colour", None, 1.0, 0.97))
    >>> "does not look like a foraminifer section" in not_a_section_html(pred)
    True
    """
    verdict = pred.section
    why = verdict.message[0].upper() + verdict.message[1:]
    return (
        '<div class="foram-not-section-box"><b>✖ This does not look like a foraminifer '
        f"section</b> — {html.escape(why)}. The models name one of their genera for any "
        "image, so the ranking below means nothing here. A micro-CT section of a "
        f"foraminifer, cut and cleaned like the training slices, passes this check "
        f"({pct(verdict.keep)} of the validation sections did).</div>"
    )


def _unknown_genus_box(what: str, keep: float) -> str:
    return (
        '<div class="foram-unknown-genus-box"><b>? Maybe not one of these genera</b> — '
        f"{html.escape(what)} It may be a foraminifer of a genus the models were not "
        "trained on: they can only name their own genera. The check lets through "
        f"{pct(keep)} of the validation sections of new specimens of the known genera, but "
        "also most sections of unknown taxa (see the book's Results chapter), so a passed "
        "check is no proof of a known genus.</div>"
    )


def unknown_genus_html(pred: classify.Prediction) -> str:
    """The genus check's warning (:mod:`foramlib.inference.genus_check`), or "" when it
    passed or there is none.

    >>> from foramlib.inference.genus_check import GenusVerdict
    >>> pred = classify.Prediction([("A", 0.9)], {"A": 0.9}, False, None, {},
    ...                            novelty=GenusVerdict(False, 0.7, 0.5, 0.95))
    >>> "Maybe not one of these genera" in unknown_genus_html(pred)
    True
    """
    if not pred.maybe_unknown_genus:
        return ""
    v = pred.novelty
    return _unknown_genus_box(
        f"the model's features of this section are farther from every training slice "
        f"(novelty {v.novelty:.3f}, limit {v.threshold:.3f}) than sections of new specimens "
        "of the known genera usually are.",
        v.keep,
    )


def verdict_html(pred: classify.Prediction) -> str:
    """The boxes above a result: not a section; else maybe an unknown genus and/or
    uncertain; else nothing ("")."""
    if pred.not_a_section:
        return not_a_section_html(pred)
    return unknown_genus_html(pred) + (uncertain_html(pred) if pred.uncertain else "")


def scan_table_html(ranking, top: int = 5) -> str:
    """The whole-scan ranking as a table, the winner highlighted.

    Parameters
    ----------
    ranking : list of foramlib.inference.scan.GenusScore
        Most probable first (:func:`foramlib.inference.scan.rank_genera`).
    top : int
        Rows shown.

    Returns
    -------
    str
        A ``<table>``; row ``i`` has the class ``foram-rank-i`` (the first one also
        ``foram-scan-winner``).

    Examples
    --------
    >>> from foramlib.inference.scan import GenusScore
    >>> html_ = scan_table_html([GenusScore("A", 0.7, 0.1, 0.75), GenusScore("B", 0.3, 0.1, 0.25)])
    >>> 'class="foram-rank-1 foram-scan-winner"><td>1</td><td>A</td><td>70.0%</td>' in html_
    True
    """
    rows = "".join(
        f'<tr class="foram-rank-{i}{" foram-scan-winner" if i == 1 else ""}">'
        f"<td>{i}</td><td>{html.escape(g.genus)}</td><td>{pct(g.probability)}</td>"
        f"<td>±{pct(g.sd)}</td><td>{g.vote_share:.0%}</td></tr>"
        for i, g in enumerate(ranking[:top], start=1)
    )
    head = (
        "<tr><th>Rank</th><th>Genus</th><th>Mean probability</th><th>SD over sections</th>"
        "<th>Top-1 share</th></tr>"
    )
    return f"<table>{head}{rows}</table>"


def scan_uncertain_html(answer: scan.ScanAnswer, note: str | None = None) -> str:
    """The boxes above a whole-scan answer: the genus check's warning (when it fired),
    then which uncertainty rule applies (:func:`_scan_uncertainty_html`)."""
    box = ""
    if answer.maybe_unknown_genus:
        check = answer.metadata["genus_check"]
        box = _unknown_genus_box(
            f"{check['flagged']} of its {check['sections']} sections are farther from every "
            f"training slice than sections of new specimens of the known genera usually are "
            f"(median novelty {check['median_novelty']:.3f}, limit {check['threshold']:.3f}).",
            check["keep"],
        )
    return box + _scan_uncertainty_html(answer, note)


def _scan_uncertainty_html(answer: scan.ScanAnswer, note: str | None = None) -> str:
    """Which uncertainty rule applies to a whole-scan answer, in the page's words.

    Parameters
    ----------
    answer : foramlib.inference.scan.ScanAnswer
    note : str, optional
        Why there is no specimen-level calibration (shown when there is none).

    Returns
    -------
    str
        The warning box of :func:`uncertain_html` when the answer is uncertain (no
        calibration, target not reached, or under the threshold), else an info line
        naming the threshold it passed.
    """
    cal = answer.calibration
    winner = pct(answer.confidence)
    if answer.not_a_section:
        check = answer.metadata["section_check"]
        return (
            '<div class="foram-not-section-box"><b>✖ This does not look like a foraminifer'
            f"</b> — only {check['passed']} of its {check['sections']} sections look like "
            "foraminifer sections (shape, grey levels and texture unlike the training "
            f"sections; a genuine scan keeps about {pct(check['keep'])} of them). The models "
            "name one of their genera for anything, so the ranking below means little.</div>"
        )
    if cal is None:
        why = (
            "no threshold could be calibrated on the validation specimens"
            + (f" ({note})" if note else "")
            + ", so every whole-scan answer is flagged."
        )
    elif not cal.reached:
        why = (
            f"on the {cal.n_val} validation specimens no mean probability reached the "
            f"required {pct(cal.target_precision)} precision, so every whole-scan answer "
            "is flagged."
        )
    elif answer.uncertain:
        why = (
            f"the winner's mean probability {winner} is below the threshold "
            f"{pct(cal.threshold)} calibrated on {cal.n_val} validation specimens "
            f"(specimens at or above it were right {pct(cal.precision)} of the time)."
        )
    else:
        return message(
            "info",
            f"The winner's mean probability {winner} is at or above the threshold "
            f"{pct(cal.threshold)} calibrated on {cal.n_val} validation specimens "
            f"(specimens at or above it were right {pct(cal.precision)} of the time).",
        )
    return (
        '<div class="foram-uncertain-box"><b>⚠ Uncertain result</b> — '
        f"{html.escape(why)} The scan may hold a genus outside the trained genera, or "
        "its sections may be noisy or badly segmented; treat the ranking as a suggestion "
        "and check the other candidates and the sections below.</div>"
    )


def scan_summary_html(answer: scan.ScanAnswer, seconds: float) -> str:
    """One line: the answer, the sections cut and kept, the time and the settings.

    Parameters
    ----------
    answer : foramlib.inference.scan.ScanAnswer
    seconds : float
        Wall time of the whole classification.
    """
    md = answer.metadata
    kept = int(md.get("n_sections", len(answer.images)))
    cut = int(md.get("candidates", kept))
    dropped = int(md.get("low_content", cut - kept))
    parts = [
        f"{html.escape(answer.name)}: <b>{html.escape(answer.genus)}</b>, mean probability "
        f"{pct(answer.confidence)} over {kept} sections ({html.escape(md.get('ensemble', '?'))})."
    ]
    parts.append(
        f"Cut {cut} sections, kept {kept}"
        + (f" ({dropped} dropped: too little fossil)" if dropped else "")
        + f", in {seconds:.1f} s"
        + (f" ({md['seconds']['cut']:.1f} s cutting)" if "seconds" in md else "")
        + "."
    )
    extra = []
    if md.get("slicing_source"):
        extra.append(f"slicer settings from {html.escape(str(md['slicing_source']))}")
    if md.get("resampled_from_um"):
        sp = "×".join(f"{s:g}" for s in md["resampled_from_um"])
        extra.append(f"voxels resampled to isotropic from {sp} µm")
    if md.get("resampled_from_unitless"):
        sp = "×".join(f"{s:g}" for s in md["resampled_from_unitless"])
        extra.append(
            f"voxels resampled to isotropic from the header's {sp} (its unit is not stated; "
            "the ratios are enough)"
        )
    if md.get("assumed_isotropic"):
        extra.append("voxel size unknown (TIFF stack): voxels taken as isotropic")
    if md.get("binned"):
        f = int(md["binned"])
        extra.append(
            f"a large scan, read averaged by blocks of {f}×{f}×{f} voxels (still wide enough "
            "for the sections)"
        )
    if extra:
        parts.append("<span class='foram-muted'>" + "; ".join(extra) + ".</span>")
    return "<p>" + " ".join(parts) + "</p>"


def scan_sections_html(answer: scan.ScanAnswer, n: int = SCAN_THUMBNAILS) -> str:
    """Thumbnails of the `n` most confident sections, each with its own top-1.

    Parameters
    ----------
    answer : foramlib.inference.scan.ScanAnswer
    n : int
        Sections shown (the most confident first; ties in section order).
    """
    conf = np.asarray(answer.sections["confidence"], dtype=np.float64)
    picks = np.argsort(-conf, kind="stable")[:n]
    cells = []
    for i in picks:
        genus = str(answer.sections["top1"].iloc[i])
        uri = data_uri(thumbnail(np.asarray(answer.images[i], dtype=np.uint8), 96))
        cells.append(
            f'<div class="foram-scan-thumb"><img src="{uri}" width="72" height="72" '
            f'alt="section {i + 1}">{html.escape(genus)} {pct(conf[i])}</div>'
        )
    return (
        f"<div><b>The {len(picks)} most confident sections</b> <span class='foram-muted'>"
        "(as the models saw them, with their own top-1)</span></div>"
        f"<div>{''.join(cells)}</div>"
    )


def _on_off(flag) -> str:
    return "on" if flag else "off"


def _genus_txt(check: dict | None) -> str:
    if not check:
        return "none in this workspace (the evaluate stage writes it)"
    verdict = "passed" if check["known"] else "maybe not one of these genera"
    return (
        f"{verdict}: {check['novelty']:.2f} from the nearest training slices, where the "
        f"limit is {check['threshold']:.2f} (a distance between what the main model sees "
        f"in two sections; the limit lets through {pct(check['keep'])} of the validation "
        "sections, new specimens of the known genera)"
    )


def _section_txt(check: dict | None) -> str:
    if not check:
        return "none in this workspace (the evaluate stage writes it)"
    if check["reason"] == "colour":
        return "refused: a colour picture (micro-CT sections are grey)"
    verdict = "passed" if check["looks_like_section"] else "refused"
    return (
        f"{verdict}: strangeness {check['score']:.0f}, where the limit is "
        f"{check['threshold']:.0f} (how unlike the training sections it looks, higher is "
        f"stranger; the limit lets through {pct(check['keep'])} of the validation sections)"
    )


def metadata_html(pred: classify.Prediction, seconds: float, cam_note: str) -> str:
    md = pred.metadata
    pp = md.get("preprocessing") or {}
    cfg = pp.get("config", md.get("preprocessing_defaults", {}))
    members = ", ".join(
        f"{html.escape(m)} ({md['input_size'][m]} px)" + (" — main" if m == md["main"] else "")
        for m in md["members"]
    )
    crop = pp.get("crop", [0, 1, 0, 1])
    crop_txt = (
        "none"
        if list(crop) == [0.0, 1.0, 0.0, 1.0]
        else "rows {:.0%}–{:.0%}, columns {:.0%}–{:.0%}".format(*crop)
    )
    cal = md.get("calibration")
    cal_txt = (
        "not calibrated (no validation predictions)"
        if not cal
        else (
            f"{pct(cal['threshold'])}: {html.escape(cal['rule'])}; on "
            f"{cal['n_val']} validation slices precision {pct(cal['precision'])}, "
            f"coverage {pct(cal['coverage'])}"
            if cal["reached"]
            else f"target {pct(cal['target_precision'])} not reached on validation"
        )
    )
    kind = (
        f"main model {md['main']}, patch model for the weak genera " + ", ".join(md.get("weak", []))
        if md["kind"] == "patch"
        else f"soft vote of {len(md['members'])} model(s)"
    )
    switched = ""
    if "patch_switched" in md:
        switched = " (patch model used for this slice)" if md["patch_switched"] else ""
    rows = [
        ("Model", f"{html.escape(md['ensemble'])} — {kind}{switched}"),
        ("Members", members),
        ("Classes", str(md["classes"])),
        (
            "Preprocessing",
            f"{html.escape(pp.get('source', '?'))}; size {cfg.get('size')} px, outline "
            f"sensitivity {cfg.get('sensitivity')}; local contrast equalisation (CLAHE) "
            f"{_on_off(cfg.get('clahe'))}, denoising {_on_off(cfg.get('denoise'))}, "
            f"sharpening {_on_off(cfg.get('sharpen'))}; manual crop {crop_txt}"
            + (
                f"; shrunk from {pp['downscaled_from'][0]}×{pp['downscaled_from'][1]} px"
                if pp.get("downscaled_from")
                else ""
            ),
        ),
        ("Training settings from", html.escape(md["sources"].get("preprocessing", "?"))),
        ("Uncertainty threshold", cal_txt),
        ("Section check", _section_txt(md.get("section_check"))),
        ("Genus check", _genus_txt(md.get("genus_check"))),
        ("Heat map", html.escape(cam_note)),
        ("Time", f"{seconds:.2f} s (all members + combination)"),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<details open><summary><b>Details</b></summary><table>{body}</table></details>"


# The match table's scores in plain words: (key, column, what it measures). Every score
# is 1 for identical sections; the technical name stays in the column's tooltip.
MATCH_SCORES = (
    ("combined", "Overall", "what ranks the matches: 0.7 × wall pattern + 0.3 × grey "
     "pattern (foramlib.matching.search's combined score)"),
    ("dice", "Outline overlap", "how much the two outlines overlap (Dice coefficient: "
     "twice the shared area over the sum of both areas)"),
    ("ncc", "Grey pattern", "whether light and dark fall in the same places inside the "
     "outline (normalised cross-correlation of the grey values)"),
    ("texture", "Wall pattern", "whether walls, septa and chamberlets line up (correlation "
     "of the fine detail, the images with their smooth part removed)"),
    ("ssim", "Local structure", "similarity of small neighbourhoods, edges and contrast "
     "included (SSIM, structural similarity)"),
    ("descriptor", "Shape summary", "similarity of compact summaries of outline and texture "
     "that the first, fast search step compares (descriptor cosine)"),
)  # fmt: skip


_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
_CUBE_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8)
               if np.abs(_CUBE[i] - _CUBE[j]).sum() == 2]  # fmt: skip


def plane_polygon(normal) -> np.ndarray:
    """Where a plane through the centre of the cube [-1, 1]³ cuts it: its corners, in order.

    Parameters
    ----------
    normal : sequence of 3 float
        The plane's normal in the volume's axes (0, 1, 2); need not be unit length.

    Returns
    -------
    ndarray, shape (k, 3)
        The polygon's corners (k = 4 to 6), going round it.

    Examples
    --------
    >>> plane_polygon((0, 0, 1)).shape, plane_polygon((1, 1, 1)).shape
    ((4, 3), (6, 3))
    """
    n = np.asarray(normal, np.float64)
    if n.shape != (3,) or not np.isfinite(n).all() or not np.linalg.norm(n) > 0:
        raise ValueError(f"normal must be 3 finite numbers, not all 0, got {normal!r}")
    n = n / np.linalg.norm(n)
    d = _CUBE @ n
    points = []
    for i, j in _CUBE_EDGES:
        points.extend(_CUBE[k] for k in (i, j) if abs(d[k]) < 1e-12)  # a corner on the plane
        if d[i] * d[j] < 0:
            t = d[i] / (d[i] - d[j])
            points.append(_CUBE[i] + t * (_CUBE[j] - _CUBE[i]))
    pts = np.unique(np.round(np.array(points), 9), axis=0)
    # go round the polygon: angles in a basis of the plane
    u = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    return pts[np.argsort(np.arctan2(pts @ v, pts @ u))]


def _project(points: np.ndarray, side: int) -> np.ndarray:
    """Pixel positions of cube points in the plane icon's fixed view (axis 2 up, as in
    the 3D view of :mod:`foramlib.viz.view3d`)."""
    # matplotlib's view_init(elev=22, azim=-60), the 3D view's: screen right and up
    az, el = np.radians(-60.0), np.radians(22.0)
    right = np.array([-np.sin(az), np.cos(az), 0.0])
    up = np.array([-np.sin(el) * np.cos(az), -np.sin(el) * np.sin(az), np.cos(el)])
    scale = side * 0.24
    x = 0.57 * side + scale * (points @ right)  # the cube a little up and right, the
    y = 0.45 * side - scale * (points @ up)  # lower left corner free for the axes
    return np.stack([x, y], axis=-1)


def plane_icon(normal, side: int = 72) -> np.ndarray:
    """A small picture of a plane's orientation in the specimen: the scan's volume as a
    wire cube (axis 2 up, as in the 3D view; the axes' directions in a corner), the plane through
    its centre in blue, its normal as a red arrow.

    The offset of the plane is not drawn (the words beside it give it); the picture
    answers what a normal vector does not tell at a glance: which way the cut runs.

    Returns
    -------
    ndarray of uint8, shape (side, side, 3), RGB

    Examples
    --------
    >>> plane_icon((0, 0, 1)).shape
    (72, 72, 3)
    """
    if isinstance(side, bool) or not isinstance(side, int) or side < 24:
        raise ValueError(f"side must be an integer >= 24, got {side!r}")
    big = 4 * side  # drawn large, then shrunk: smooth lines without anti-aliasing calls
    canvas = np.full((big, big, 3), 255, np.uint8)
    corners = _project(_CUBE, big)
    poly = _project(plane_polygon(normal), big)
    fill = canvas.copy()
    cv2.fillPoly(fill, [np.round(poly).astype(np.int32)], (74, 120, 168))
    canvas = cv2.addWeighted(fill, 0.55, canvas, 0.45, 0)
    for i, j in _CUBE_EDGES:
        a, b = np.round(corners[[i, j]]).astype(int)
        cv2.line(canvas, tuple(a), tuple(b), (120, 120, 120), 4)
    cv2.polylines(canvas, [np.round(poly).astype(np.int32)], True, (31, 61, 102), 6)
    # the normal as a short arrow: it still shows the way the cut faces when the plane
    # is seen edge-on
    n = np.asarray(normal, np.float64) / np.linalg.norm(normal)
    tail, head = _project(np.stack([np.zeros(3), 0.9 * n]), big)
    cv2.arrowedLine(canvas, tuple(np.round(tail).astype(int)), tuple(np.round(head).astype(int)),
                    (178, 34, 34), 6, tipLength=0.3)  # fmt: skip
    # the axes as a small triad in the lower left corner, labelled 0, 1, 2
    base = np.array([0.12 * big, 0.86 * big])
    ends = _project(np.eye(3), big) - _project(np.zeros((1, 3)), big)
    for axis, step in enumerate(ends):
        tip = base + 0.7 * step
        cv2.line(canvas, tuple(np.round(base).astype(int)), tuple(np.round(tip).astype(int)),
                 (60, 60, 60), 4)  # fmt: skip
        at = np.clip(tip + 0.25 * step - [0.025 * big, -0.03 * big], 0, 0.95 * big)
        cv2.putText(canvas, str(axis), tuple(np.round(at).astype(int)),
                    cv2.FONT_HERSHEY_SIMPLEX, big / 240, (60, 60, 60), 5, cv2.LINE_AA)  # fmt: skip
    return cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)


def matches_html(query: np.ndarray, matches) -> str:
    """The match table in plain words, with a legend of the scores.

    Each score column says in words what it measures (its tooltip gives the technical
    name); the plane is given as a tilt from the nearest scan axis and a distance from
    the specimen's centre, beside a small picture of its orientation (:func:`plane_icon`;
    the exact normal in the tooltip; the 3D view below shows the plane in the specimen).
    """
    q = data_uri(thumbnail(display_uint8(query), 96))
    rows = []
    for i, m in enumerate(matches, start=1):
        s = m.scores
        img = data_uri(thumbnail(np.asarray(m.image, dtype=np.uint8), 96))
        cells = "".join(f"<td>{s.get(key, float('nan')):.2f}</td>" for key, _, _ in MATCH_SCORES)
        exact = html.escape(
            f"normal ({m.normal[0]:.3f}, {m.normal[1]:.3f}, {m.normal[2]:.3f}), offset "
            f"{m.offset:.2f} voxels, turned {m.angle_deg:.0f}° in its plane"
        )
        rows.append(
            f'<tr class="foram-match-{i}"><td>{i}</td><td>{html.escape(m.specimen_id)}</td>'
            f"<td>{html.escape(m.species)}</td>"
            f'<td><img src="{q}" width="72"> <img src="{img}" width="72"></td>{cells}'
            f'<td title="{exact}"><img class="foram-plane-icon" width="54" '
            f'src="{data_uri(plane_icon(m.normal))}" alt="the cut in the scan\'s volume"> '
            f"{html.escape(plane_words(m.normal, m.offset, m.angle_deg))}</td></tr>"
        )
    heads = "".join(
        f'<th title="{html.escape(what)}">{label}</th>' for _, label, what in MATCH_SCORES
    )
    head = (
        "<tr><th>#</th><th>Specimen</th><th>Genus</th><th>Your section | the match</th>"
        f"{heads}<th>Where the section lies in the specimen</th></tr>"
    )
    legend = "".join(
        f"<li><b>{label}</b>: {html.escape(what)}.</li>" for _, label, what in MATCH_SCORES
    )
    return (
        f"<table>{head}{''.join(rows)}</table>"
        '<details class="foram-score-legend"><summary>What the scores mean</summary>'
        "<p>Each score is 1 for identical sections. They are not chances: two sections "
        "of roundish shells share most of their outline and shading, so Outline overlap, "
        "Grey pattern and Shape summary are high for almost any pair (0.9 and more); the "
        "Wall pattern, and with it Overall, is what separates the right place from a "
        "look-alike, and the verdict above says whether the best one is good enough.</p>"
        f"<ul>{legend}</ul></details>"
    )


def dataset_html(source: str | None, counts: dict | None, workspace) -> str:
    """The landing page's dataset paragraph: virtual collections always say so.

    Examples
    --------
    >>> "not</i> real fossils" in dataset_html("virtual", None, ".")
    True
    """
    counts_text = ""
    if counts:
        counts_text = (
            f" {counts['specimens']} specimens ({counts['scans']} scans) of "
            f"{counts['genera']} genera after curation."
        )
    if source == "virtual":
        return (
            "<h3>Dataset</h3><p><b>The virtual micro-CT collection</b> — synthetic "
            "(virtual) specimens generated by this project to stand in for the authors' "
            f"scans; they are <i>not</i> real fossils.{html.escape(counts_text)} The numbers "
            "below describe how the pipeline behaves on these virtual genera, not on real "
            "material.</p>"
        )
    if source:
        return (
            f"<h3>Dataset</h3><p>Your own collection (data source "
            f"<code>{html.escape(source)}</code>).{html.escape(counts_text)}</p>"
        )
    return (
        "<h3>Dataset</h3><p>No pipeline outputs found in "
        f"<code>{html.escape(str(workspace))}</code>: run <code>dvc repro</code> "
        "(or <code>make demo</code>) first.</p>"
    )


# What each score of the performance table means, for readers who are not in ML
SCORE_NOTES = (
    ("Accuracy", "the share of test slices whose most probable genus is the right one"),
    (
        "Macro-F1",
        "accuracy-like, but computed per genus and averaged, so rare genera count as much "
        "as common ones",
    ),
    ("Top-3", "the share of test slices whose right genus is among the three most probable"),
    (
        "AUC",
        "how well the probabilities rank the right genus above the others "
        "(1 = always, 0.5 = no better than chance)",
    ),
)


def chance_levels(n_classes: int) -> dict[str, float]:
    """What a random guess among `n_classes` equally likely genera scores.

    Macro-F1 of uniform guessing equals accuracy's ``1/n`` when the genera are equally
    common (each genus' precision is its share, its recall ``1/n``); AUC is 0.5.

    Examples
    --------
    >>> chance_levels(12)["accuracy"], chance_levels(12)["top3"], chance_levels(2)["top3"]
    (0.08333333333333333, 0.25, 1.0)
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes = {n_classes!r} is invalid: expected an integer >= 1")
    return dict(
        accuracy=1 / n_classes,
        macro_f1=1 / n_classes,
        top3=min(3, n_classes) / n_classes,
        auc=0.5,
    )


def performance_html(metrics: dict | None, n_classes: int | None = None) -> str:
    """The landing page's table of the evaluated models (``results/metrics.json``).

    With `n_classes` (the genera the models choose among), a last row gives what a
    random guess scores (:func:`chance_levels`), and a note under the table explains
    each score in plain words.

    Examples
    --------
    >>> "No evaluation yet" in performance_html(None)
    True
    """
    m = metrics
    if not m or "final" not in m or m["final"] not in m.get("models", {}):
        return (
            "<h3>Performance</h3><p>No evaluation yet (results/metrics.json is missing): "
            "run <code>dvc repro</code> (or <code>make demo</code>) first.</p>"
        )
    final = m["final"]
    rows = []
    for name, r in m["models"].items():
        cells = [
            html.escape(name) + (" (final)" if name == final else ""),
            *(
                f"{100 * r[k]:.1f}%" if r.get(k) is not None else "–"
                for k in ("accuracy", "macro_f1", "top3")
            ),
            f"{r['auc']:.3f}" if r.get("auc") is not None else "–",
        ]
        style = ' style="font-weight:bold"' if name == final else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    notes = ""
    if n_classes:
        c = chance_levels(n_classes)
        cells = [
            f"chance: a random guess among {n_classes} genera",
            *(f"{100 * c[k]:.1f}%" for k in ("accuracy", "macro_f1", "top3")),
            f"{c['auc']:.3f}",
        ]
        rows.append(
            '<tr class="foram-chance" style="font-style:italic">'
            + "".join(f"<td>{html.escape(x)}</td>" for x in cells)
            + "</tr>"
        )
        notes = (
            "<p class='foram-score-notes foram-muted'>"
            + "; ".join(f"<b>{name}</b>: {html.escape(text)}" for name, text in SCORE_NOTES)
            + ".</p>"
        )
    r = m["models"][final]
    return (
        f"<h3>Performance</h3><p>Final model: <b>{html.escape(final)}</b> — accuracy "
        f"{100 * r['accuracy']:.1f}%, macro-F1 {100 * r['macro_f1']:.1f}% on "
        f"{m.get('test_slices', r.get('n', '?'))} held-out test slices "
        f"(specimens never seen in training).</p>"
        "<table><tr><th>Model</th><th>Accuracy</th><th>Macro-F1</th><th>Top-3</th>"
        "<th>AUC</th></tr>" + "".join(rows) + "</table>" + notes
    )
