"""Build the Jupyter Book that publishes the pipeline's results, offline and strictly.

The book's sources live in ``book/`` (``_config.yml``, ``_toc.yml``, narrative pages).
The pipeline's products are copied in right before a build by :func:`prepare_book`,
into ``book/_generated/``:

- ``_generated/reports/<stage>.ipynb``: executed notebooks (``reports/``), never
  re-executed by the book;
- ``_generated/figures/*.png``: figures (``results/figures/``);
- ``_generated/tables/<name>.md``: each ``results/tables/<name>.csv`` as a MyST table,
  for ``{include}``;
- ``_generated/data_source.md``: an admonition naming the data source (virtual
  collection or the user's manifest).

:func:`build_book` runs the whole thing: local MathJax (:func:`ensure_mathjax`),
:func:`prepare_book`, ``jupyter-book build -W -n --keep-going`` and a final scan of
the HTML for assets loaded from the internet (:func:`find_external_assets`).
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from foramlib.io.atomic import atomic_dir, write_text

__all__ = [
    "BookBuildError",
    "prepare_book",
    "ensure_mathjax",
    "find_external_assets",
    "build_book",
    "csv_to_myst_table",
    "data_source_note",
]

GENERATED = "_generated"
MATHJAX_DIR = Path("_static") / "mathjax"
MATHJAX_ENTRY = "tex-chtml.js"

# Which DVC stage makes a product, when dvc.yaml cannot tell (see `_producing_stage`).
DEFAULT_PRODUCERS = {
    "figures/figure2_collection.png": "curate",
    "tables/taxa.csv": "curate",
}
# A report that may legitimately be absent, and the data source under which it is.
OPTIONAL_REPORTS = {"synthesize": "manifest"}


class BookBuildError(RuntimeError):
    """The book did not build, or the built HTML loads assets from the internet."""


# --------------------------------------------------------------------------- prepare


def prepare_book(
    book_dir: str | os.PathLike = "book",
    reports_dir: str | os.PathLike = "reports",
    results_dir: str | os.PathLike = "results",
    params_path: str | os.PathLike = "params.yaml",
    benchmarks_dir: str | os.PathLike = "benchmarks/results",
    models_dir: str | os.PathLike = "models",
) -> Path:
    """(Re)create ``<book_dir>/_generated/`` from the pipeline's products.

    The directory is replaced as a whole (:func:`foramlib.io.atomic.atomic_dir`), so an
    interrupted call leaves the previous content, never a mix.

    Parameters
    ----------
    book_dir : path-like
        The book's source folder (holds ``_toc.yml`` and the pages).
    reports_dir : path-like
        Folder of the executed stage notebooks, ``<stage>.ipynb``.
    results_dir : path-like
        Folder holding ``figures/*.png`` and ``tables/*.csv``.
    params_path : path-like
        The pipeline's ``params.yaml``; ``data.source`` decides the data-source note.
    benchmarks_dir : path-like
        Folder of benchmark results ``<name>.json``; each one a page includes as
        ``_generated/benchmarks/<name>.md`` is rendered as a table, and each PNG a page
        shows as ``_generated/benchmarks/<file>.png`` is copied.
    models_dir : path-like
        Folder of trained backbones ``<backbone>/summary.json``; summarised with their
        learning curves (``results/figures/history_<backbone>.png``) in
        ``_generated/training.md``.

    Returns
    -------
    Path
        The ``_generated`` folder.

    Raises
    ------
    FileNotFoundError
        If a notebook, figure or table that the toc or a page needs is missing; the
        message names the file and the DVC stage that makes it.
    ValueError
        If ``data.source`` is neither ``virtual`` nor ``manifest``.
    """
    book_dir, reports_dir, results_dir = Path(book_dir), Path(reports_dir), Path(results_dir)
    params = _load_params(params_path)
    source = params.get("data", {}).get("source")
    note = data_source_note(source, params.get("data", {}))
    needs = required_products(book_dir)
    dvc_yaml = Path(params_path).parent / "dvc.yaml"
    with atomic_dir(book_dir / GENERATED) as out:
        for stage in needs["reports"]:
            _copy_report(reports_dir, stage, out / "reports", source, dvc_yaml)
        for extra in sorted(reports_dir.glob("*.ipynb")):  # stages not named in the toc
            # not failed runs, nor the hidden temporaries of an interrupted run
            if (
                extra.stem not in needs["reports"]
                and not extra.name.endswith(".failed.ipynb")
                and not extra.name.startswith(".")
            ):
                _copy(extra, out / "reports" / extra.name)
        for name in sorted(_wanted(results_dir / "figures", "*.png", needs["figures"], dvc_yaml)):
            _copy(results_dir / "figures" / name, out / "figures" / name)
        for name in sorted(_wanted(results_dir / "tables", "*.csv", needs["tables"], dvc_yaml)):
            table = csv_to_myst_table(results_dir / "tables" / name)
            write_text(out / "tables" / f"{Path(name).stem}.md", table)
        for name in needs["benchmarks"]:
            src = Path(benchmarks_dir) / f"{name}.json"
            if not src.is_file():
                raise FileNotFoundError(
                    f"{src.as_posix()} is missing: run `python benchmarks/{name}.py` "
                    "(the book shows it)"
                )
            write_text(out / "benchmarks" / f"{name}.md", json_to_myst_table(src))
        for name in needs["benchmark_figures"]:
            src = Path(benchmarks_dir) / name
            if not src.is_file():
                script = name.split("_")[0].split(".")[0]
                raise FileNotFoundError(
                    f"{src.as_posix()} is missing: run `python benchmarks/{script}.py` "
                    "(the book shows it)"
                )
            _copy(src, out / "benchmarks" / name)
        training, curves = training_section(models_dir, results_dir / "figures")
        for curve in curves:
            _copy(results_dir / "figures" / curve, out / "figures" / curve)
        write_text(out / "training.md", training)
        write_text(out / "data_source.md", note)
    return book_dir / GENERATED


def training_section(models_dir, figures_dir) -> tuple[str, list[str]]:
    """Markdown summarising every trained backbone, and the learning-curve figures it shows.

    Reads ``<models_dir>/<backbone>/summary.json`` (written by
    :func:`foramlib.learn.training.train_backbone`); a backbone whose figure
    ``history_<backbone>.png`` is missing raises FileNotFoundError naming its stage.
    """
    summaries = []
    for path in sorted(Path(models_dir).glob("*/summary.json")):
        summaries.append(json.loads(path.read_text(encoding="utf-8")))
    if not summaries:
        return (
            "No backbone has been trained yet: run `dvc repro` (the `train@<backbone>` stages).\n",
            [],
        )
    cols = [
        ("backbone", "backbone"),
        ("input px", "input_size"),
        ("epochs", "epochs_run"),
        ("best val loss", "best_val_loss"),
        ("val accuracy", "val_accuracy"),
        ("train img/s", "train_images_per_s"),
        ("precision", "precision"),
        ("backend", "backend"),
        ("parameters", "parameters"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    figures = []
    for s in summaries:
        cells = []
        for _, key in cols:
            v = s.get(key, "")
            if isinstance(v, float):
                v = f"{v:.3f}" if key != "train_images_per_s" else f"{v:.1f}"
            if isinstance(v, dict):
                v = f"{sum(v.values()):,}"
            cells.append(_cell(v))
        lines.append("| " + " | ".join(cells) + " |")
        name = f"history_{s['backbone']}.png"
        if not (Path(figures_dir) / name).is_file():
            raise FileNotFoundError(_missing(Path(figures_dir) / name, f"train@{s['backbone']}"))
        figures.append(name)
    text = "\n".join(lines) + "\n"
    for name in figures:
        backbone = name[len("history_") : -len(".png")]
        text += (
            f"\n```{{figure}} _generated/figures/{name}\n:alt: Learning curves of {backbone}\n"
            f":width: 100%\n\nLearning curves of `{backbone}`: loss and accuracy on the "
            f"training (solid) and validation (dashed) splits; the shaded part is phase 2 "
            f"(fine-tuning). Drawn from the stage's DVCLive log "
            f"(`results/training/{backbone}/`), which `dvc plots show` and `dvc exp show` "
            f"read too.\n```\n"
        )
    return text, figures


def required_products(book_dir: str | os.PathLike) -> dict[str, list[str]]:
    """List the generated files that the book's toc and pages refer to.

    Parameters
    ----------
    book_dir : path-like
        The book's source folder.

    Returns
    -------
    dict
        ``reports``: stage names (toc entries ``_generated/reports/<stage>``);
        ``figures``: file names under ``_generated/figures/``; ``tables``: CSV names
        (``<name>.csv`` for each ``_generated/tables/<name>.md``); ``benchmarks``:
        result names (``benchmarks/results/<name>.json``); ``benchmark_figures``: PNG
        files a benchmark wrote next to its JSON.
    """
    book_dir = Path(book_dir)
    toc = yaml.safe_load((book_dir / "_toc.yml").read_text(encoding="utf-8"))
    reports = [Path(f).stem for f in _toc_files(toc) if f.startswith(f"{GENERATED}/reports/")]
    text = "\n".join(p.read_text(encoding="utf-8") for p in _page_sources(book_dir))
    figures = re.findall(rf"{GENERATED}/figures/([\w.\-]+\.\w+)", text)
    tables = re.findall(rf"{GENERATED}/tables/([\w.\-]+)\.md", text)
    benchmarks = re.findall(rf"{GENERATED}/benchmarks/([\w.\-]+)\.md", text)
    benchmark_figures = re.findall(rf"{GENERATED}/benchmarks/([\w.\-]+\.png)", text)
    return {
        "reports": list(dict.fromkeys(reports)),
        "figures": sorted(set(figures)),
        "tables": sorted({f"{t}.csv" for t in tables}),
        "benchmarks": sorted(set(benchmarks)),
        "benchmark_figures": sorted(set(benchmark_figures)),
    }


def csv_to_myst_table(csv_path: str | os.PathLike) -> str:
    """Render a CSV file as a MyST (GitHub-flavoured) markdown table.

    Cells are shown exactly as written in the CSV; numeric columns are right-aligned.

    Parameters
    ----------
    csv_path : path-like
        The CSV file (with a header row).

    Returns
    -------
    str
        The markdown table, ending with a newline.
    """
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv_path} is empty: expected a CSV table with a header row") from None
    numeric = [_is_numeric(df[c]) for c in df.columns]
    lines = [
        "| " + " | ".join(_cell(c) for c in df.columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def json_to_myst_table(json_path: str | os.PathLike) -> str:
    """Render a benchmark result (a JSON object) as a two-column markdown table.

    Nested objects are flattened with dotted keys (``machine.cpu_count``); a list of
    objects (several runs) becomes a table of its own; other lists are shown inline.

    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.json"
    >>> _ = p.write_text(json.dumps({"seconds": 1.5, "machine": {"cpus": 2}}))
    >>> print(json_to_myst_table(p))
    | measure | value |
    |---|---|
    | seconds | 1.5 |
    | machine.cpus | 2 |
    <BLANKLINE>
    """
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: expected a JSON object of benchmark results")

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    rows = list(flat(data))
    records = [
        (k, v) for k, v in rows if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows if (k, v) not in records]
    for key, items in records:  # a list of runs: one row per run
        cols = list(dict.fromkeys(c for item in items for c in item))
        lines += [
            "",
            f"{key}:",
            "",
            "| " + " | ".join(_cell(c) for c in cols) + " |",
            "|" + "---|" * len(cols),
        ]
        lines += ["| " + " | ".join(_cell(item.get(c, "")) for c in cols) + " |" for item in items]
    return "\n".join(lines) + "\n"


def data_source_note(source: str | None, data: dict | None = None) -> str:
    """Return the MyST admonition that says where the book's results come from.

    Parameters
    ----------
    source : {"virtual", "manifest"}
        ``data.source`` of ``params.yaml``.
    data : dict, optional
        The whole ``data`` section (``manifest`` and ``raw_dir`` are quoted).

    Returns
    -------
    str
        MyST markdown.

    Raises
    ------
    ValueError
        For any other `source`.
    """
    data = data or {}
    if source == "virtual":
        return (
            ":::{admonition} Data source: the VIRTUAL micro-CT collection\n"
            ":class: warning\n\n"
            "All results in this book were computed on the **virtual** collection: "
            "**synthetic** micro-CT volumes made by this project's seeded generator "
            "(`data.source: virtual`). They are **not** the paper's scans, which are not "
            "public, and they say nothing about how accurately real fossils are "
            "classified. See {doc}`/virtual-collection`; to use your own scans, see "
            "{doc}`/own-data`.\n"
            ":::\n"
        )
    if source == "manifest":
        manifest = data.get("manifest", "the manifest")
        raw_dir = data.get("raw_dir", "the volume folder")
        return (
            ":::{admonition} Data source: your own micro-CT collection\n"
            ":class: note\n\n"
            "All results in this book were computed on the user's own collection "
            f"(`data.source: manifest`): the volumes listed in `{manifest}`, read from "
            f"`{raw_dir}`. They are neither the virtual collection nor the paper's scans. "
            "See {doc}`/own-data`.\n"
            ":::\n"
        )
    raise ValueError(f"params.yaml: data.source must be 'virtual' or 'manifest', got {source!r}")


def _load_params(params_path: str | os.PathLike) -> dict:
    """Read ``params.yaml``; a clear error if it is missing."""
    path = Path(params_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the book needs it to name the data source")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _toc_files(node) -> list[str]:
    """All ``file:`` entries (and the root) of a parsed ``_toc.yml``, in order."""
    if isinstance(node, list):
        return [f for item in node for f in _toc_files(item)]
    if not isinstance(node, dict):
        return []
    found = [str(node[k]) for k in ("root", "file") if k in node]
    return found + [f for k, v in node.items() if k not in ("root", "file") for f in _toc_files(v)]


def _page_sources(book_dir: Path) -> list[Path]:
    """The hand-written pages of the book (not build products, not node_modules)."""
    skip = {"_build", GENERATED, "node_modules", "_static"}
    return sorted(
        p
        for p in book_dir.rglob("*.md")
        if not skip.intersection(p.relative_to(book_dir).parts)
        and not any(part.startswith(".") for part in p.relative_to(book_dir).parts)
    )


def _copy_report(reports_dir: Path, stage: str, out: Path, source, dvc_yaml: Path) -> None:
    """Copy ``<reports_dir>/<stage>.ipynb`` (or a stub for a stage that was skipped)."""
    src = reports_dir / f"{stage}.ipynb"
    if src.is_file():
        _copy(src, out / src.name)
    elif OPTIONAL_REPORTS.get(stage) == source:
        write_text(out / src.name, _skipped_report(stage, source))
    else:
        raise FileNotFoundError(_missing(src, _producing_stage(src, dvc_yaml, stage)))


def _skipped_report(stage: str, source: str) -> str:
    """A one-cell notebook saying that `stage` does not run for this data source."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells.append(
        nbformat.v4.new_markdown_cell(
            f"# {stage}\n\nThis stage did not run: it only makes the virtual collection, "
            f"and this book's results come from `data.source: {source}`."
        )
    )
    return nbformat.writes(nb)


def _wanted(folder: Path, pattern: str, needed: list[str], dvc_yaml: Path) -> set[str]:
    """Names of all files matching `pattern` in `folder`; error if a needed one is missing."""
    for name in needed:
        path = folder / name
        if not path.is_file():
            kind = f"{folder.name}/{name}"
            raise FileNotFoundError(
                _missing(path, _producing_stage(path, dvc_yaml, DEFAULT_PRODUCERS.get(kind)))
            )
    present = {p.name for p in folder.glob(pattern)} if folder.is_dir() else set()
    return present | set(needed)


def _missing(path: Path, stage: str | None) -> str:
    """The message for a missing pipeline product."""
    how = f"run `dvc repro {stage}`" if stage else "run `dvc repro`"
    return f"{path.as_posix()} is missing: {how} (the book shows it)"


def _producing_stage(path: Path, dvc_yaml: Path, default: str | None) -> str | None:
    """The dvc.yaml stage whose ``outs`` contain `path`, else `default`."""
    if not dvc_yaml.is_file():
        return default
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    target = path.resolve()
    for name, stage in stages.items():
        for out in (stage or {}).get("outs", []) if isinstance(stage, dict) else []:
            out = next(iter(out)) if isinstance(out, dict) else str(out)
            out_path = (dvc_yaml.parent / out).resolve()
            if target == out_path or out_path in target.parents:
                return name
    return default


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _cell(value) -> str:
    """One markdown table cell: pipes escaped, line breaks flattened."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _is_numeric(column: pd.Series) -> bool:
    values = column[column != ""]
    return bool(len(values)) and pd.to_numeric(values, errors="coerce").notna().all()


# --------------------------------------------------------------------------- mathjax


def ensure_mathjax(book_dir: str | os.PathLike = "book") -> Path:
    """Make sure a local MathJax 3 is in ``<book_dir>/_static/mathjax/``.

    If ``tex-chtml.js`` is not there, runs ``npm ci`` in `book_dir` (from the
    committed ``package.json`` and ``package-lock.json``) and copies
    ``node_modules/mathjax/es5`` into place (atomically).

    Parameters
    ----------
    book_dir : path-like
        The book's source folder.

    Returns
    -------
    Path
        The ``_static/mathjax`` folder.

    Raises
    ------
    RuntimeError
        If ``npm`` is not installed or ``npm ci`` fails.
    """
    book_dir = Path(book_dir)
    target = book_dir / MATHJAX_DIR
    if (target / MATHJAX_ENTRY).is_file():
        return target
    es5 = book_dir / "node_modules" / "mathjax" / "es5"
    if not (es5 / MATHJAX_ENTRY).is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                "npm is not installed: the book serves MathJax locally from the npm "
                "package `mathjax@3`. Install Node.js + npm, or copy MathJax 3's es5/ "
                f"folder to {target}."
            )
        print(f"[book] installing MathJax: npm ci in {book_dir}", flush=True)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=book_dir, check=False)
        if done.returncode != 0 or not (es5 / MATHJAX_ENTRY).is_file():
            raise RuntimeError(f"`npm ci` in {book_dir} failed (exit {done.returncode})")
    print(f"[book] copying {es5} -> {target}", flush=True)
    with atomic_dir(target) as tmp:
        shutil.copytree(es5, tmp, dirs_exist_ok=True)
    return target


# --------------------------------------------------------------------------- external assets

_REMOTE = r"(?:https?:)?//"
_CSS_URL = re.compile(r"""url\(\s*(['"]?)\s*((?:https?:)?//[^'")\s]+)\s*\1\s*\)""", re.I)
_CSS_IMPORT = re.compile(r"""@import\s+(['"])((?:https?:)?//[^'"]+)\1""", re.I)
# Remote assets that JavaScript code would load: markup in strings, `.src = "..."`,
# dynamic imports and worker imports.
_JS_PATTERNS = [
    re.compile(
        r"""<(?:script|img|iframe|source|video|audio|embed)\b[^<>]*?\bsrc\s*=\s*\\?['"]?"""
        rf"""({_REMOTE}[^'"\s<>\\]+)""",
        re.I,
    ),
    re.compile(rf"""<link\b[^<>]*?\bhref\s*=\s*\\?['"]?({_REMOTE}[^'"\s<>\\]+)""", re.I),
    re.compile(rf"""\.(?:src|href)\s*=\s*['"`]({_REMOTE}[^'"`\s]+)""", re.I),
    re.compile(rf"""\b(?:import|importScripts)\s*\(\s*['"`]({_REMOTE}[^'"`\s]+)""", re.I),
    re.compile(rf"""\bimport\b[^;'"`]*?\bfrom\s*['"`]({_REMOTE}[^'"`\s]+)""", re.I),
]
# In inline <script> blocks (configuration that extensions write into pages, e.g.
# `const THEBE_JS_URL = "https://unpkg.com/..."`) also any string literal that is the
# URL of a script, stylesheet or font. Not applied to vendor .js files, whose bundles
# carry such URLs as fallbacks for old browsers (MathJax's XPath polyfill).
_INLINE_LITERAL = re.compile(
    rf"""['"`]({_REMOTE}[^'"`\s]+\.(?:m?js|css|woff2?|ttf|otf|eot)(?:[?#][^'"`\s]*)?)['"`]""",
    re.I,
)
# <link rel=...> values that make the browser fetch (or connect to) the href.
_ASSET_RELS = {
    "stylesheet",
    "preload",
    "modulepreload",
    "prefetch",
    "preconnect",
    "dns-prefetch",
    "icon",
    "apple-touch-icon",
    "mask-icon",
    "manifest",
    "import",
}


def find_external_assets(html_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """Find assets that the built site would load from the internet.

    Scans every ``.html``, ``.css`` and ``.js`` file under `html_dir` for
    ``http(s)://`` or protocol-relative ``//`` URLs in: ``src``/``srcset`` attributes
    (``<script>``, ``<img>``, ``<iframe>``, ...), ``<link href>`` with an asset ``rel``
    (stylesheet, preload, icon, ...), ``<object data>``, CSS ``url()`` and ``@import``
    (in CSS files, ``<style>`` blocks and ``style`` attributes), and in JavaScript
    (files and inline ``<script>``): markup strings, ``.src = "..."`` and ``import``.
    Plain links (``<a href>``) are not assets and are not reported.

    Parameters
    ----------
    html_dir : path-like
        The built site, e.g. ``book/_build/html``.

    Returns
    -------
    list of (str, str)
        ``(file, url)`` pairs, the file relative to `html_dir` (POSIX), sorted.
    """
    html_dir = Path(html_dir)
    found: set[tuple[str, str]] = set()
    for path in sorted(html_dir.rglob("*")):
        scan = _SCANNERS.get(path.suffix.lower())
        if scan is None or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(html_dir).as_posix()
        found.update((rel, url) for url in scan(text))
    return sorted(found)


def _is_remote(url: str) -> bool:
    return url.strip().lower().startswith(("http://", "https://", "//"))


def _css_urls(text: str) -> list[str]:
    """Remote URLs in CSS ``url()`` and ``@import``."""
    return [m.group(2) for rx in (_CSS_URL, _CSS_IMPORT) for m in rx.finditer(text)]


def _js_urls(text: str) -> list[str]:
    """Remote URLs that JavaScript code loads as assets (see `_JS_PATTERNS`)."""
    return _css_urls(text) + [m.group(1) for rx in _JS_PATTERNS for m in rx.finditer(text)]


class _AssetParser(html.parser.HTMLParser):
    """Collect remote asset URLs of one HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v or "" for k, v in attrs}
        candidates = [a.get("src", ""), a.get("poster", "")]
        candidates += [part.split()[0] for part in a.get("srcset", "").split(",") if part.split()]
        if tag == "object":
            candidates.append(a.get("data", ""))
        if tag == "link" and (_ASSET_RELS & set(a.get("rel", "").lower().split()) or a.get("as")):
            candidates.append(a.get("href", ""))
        self.urls += [u.strip() for u in candidates if _is_remote(u)]
        self.urls += _css_urls(a.get("style", ""))
        self._inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside == "style":
            self.urls += _css_urls(data)
        elif self._inside == "script":
            self.urls += _js_urls(data) + [m.group(1) for m in _INLINE_LITERAL.finditer(data)]


def _html_urls(text: str) -> list[str]:
    parser = _AssetParser()
    parser.feed(text)
    parser.close()
    return parser.urls


_SCANNERS = {".html": _html_urls, ".htm": _html_urls, ".css": _css_urls, ".js": _js_urls}


# --------------------------------------------------------------------------- build


def build_book(
    book_dir: str | os.PathLike = "book",
    *,
    strict: bool = True,
    reports_dir: str | os.PathLike = "reports",
    results_dir: str | os.PathLike = "results",
    params_path: str | os.PathLike = "params.yaml",
    benchmarks_dir: str | os.PathLike = "benchmarks/results",
    models_dir: str | os.PathLike = "models",
    fresh: bool = True,
) -> Path:
    """Build the book to ``<book_dir>/_build/html`` and check it loads nothing remote.

    Steps: :func:`ensure_mathjax`, :func:`prepare_book`, ``jupyter-book build``
    (output shown as it runs), :func:`find_external_assets` on the result.

    Parameters
    ----------
    book_dir : path-like
        The book's source folder.
    strict : bool
        Turn warnings into errors (``-W -n --keep-going``): broken references, missing
        images, unknown directives... all fail the build.
    reports_dir, results_dir, params_path, benchmarks_dir, models_dir : path-like
        Where the pipeline's products are (see :func:`prepare_book`).
    fresh : bool
        Rebuild every page (``--all``), so that a strict build also sees warnings of
        pages that an earlier build left unchanged.

    Returns
    -------
    Path
        ``<book_dir>/_build/html/index.html``.

    Raises
    ------
    BookBuildError
        If ``jupyter-book build`` fails, or the HTML references external assets.
    FileNotFoundError
        If a product the book shows is missing (from :func:`prepare_book`).
    """
    book_dir = Path(book_dir)
    ensure_mathjax(book_dir)
    prepare_book(book_dir, reports_dir, results_dir, params_path, benchmarks_dir, models_dir)
    cmd = [_jupyter_book(), "build", str(book_dir), "--builder", "html"]
    cmd += ["-W", "-n", "--keep-going"] if strict else []
    cmd += ["--all"] if fresh else []
    if fresh:
        shutil.rmtree(book_dir / "_build" / "html", ignore_errors=True)
    print("[book] " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=False)
    index = book_dir / "_build" / "html" / "index.html"
    if done.returncode != 0 or not index.is_file():
        mode = " in strict mode (warnings are errors)" if strict else ""
        raise BookBuildError(
            f"jupyter-book build of {book_dir} failed{mode} (exit {done.returncode}); "
            "see the output above"
        )
    external = find_external_assets(index.parent)
    if external:
        listing = "\n".join(f"  {file}: {url}" for file, url in external[:20])
        raise BookBuildError(
            f"the built book loads {len(external)} asset(s) from the internet; it must "
            f"work offline:\n{listing}"
        )
    return index


def _jupyter_book() -> str:
    """The ``jupyter-book`` executable of this environment."""
    local = Path(sys.executable).parent / "jupyter-book"
    found = str(local) if local.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise BookBuildError("jupyter-book is not installed (pip install 'jupyter-book>=1,<2')")
    return found
