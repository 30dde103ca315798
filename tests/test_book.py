"""Tests of foramlib.tools.book: external-asset scan, book preparation, strict offline build."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import nbformat
import pytest

from foramlib.tools import book

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
# Build products and installs that are not book sources.
NOT_SOURCES = ("_build", "_generated", "node_modules", "mathjax")


# --------------------------------------------------------------------------- fakes


def tiny_png(width: int = 8, height: int = 6) -> bytes:
    """A valid grey-gradient PNG, made without any imaging library."""
    rows = b"".join(
        b"\x00" + bytes((x * 30 + y * 10) % 256 for x in range(width)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def fake_notebook(stage: str) -> nbformat.NotebookNode:
    """An 'executed' notebook: markdown, a code cell with text output, one with a PNG."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    text_out = nbformat.v4.new_output("stream", name="stdout", text=f"{stage} done\n")
    png_out = nbformat.v4.new_output(
        "display_data",
        data={"image/png": base64.b64encode(tiny_png()).decode(), "text/plain": "<Figure>"},
    )
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# Stage `{stage}`\n\nA fake report with maths: $n \\ge 4$."
        ),
        nbformat.v4.new_code_cell(f"print('{stage} done')", execution_count=1, outputs=[text_out]),
        nbformat.v4.new_code_cell("show()", execution_count=2, outputs=[png_out]),
    ]
    return nb


TAXA_CSV = (
    "species,n_volumes,n_specimens,kept\n"
    "Alveolina,6,5,True\n"
    "Orbitoides,4,4,True\n"
    "Rara|pipe,2,1,False\n"
)


NEEDS = book.required_products(BOOK)


def make_project(root: Path, source: str = "virtual", stages=None) -> Path:
    """A fake repository root with the products the book shows (as its pages ask)."""
    (root / "reports").mkdir(parents=True)
    for stage in NEEDS["reports"] if stages is None else stages:
        nbformat.write(fake_notebook(stage), root / "reports" / f"{stage}.ipynb")
    # the per-backbone pretraining and training reports the toc picks up by glob, and a
    # failed run's report that must not be published
    for stage in ("pretrain_tiny_cnn", "train_tiny_cnn"):
        nbformat.write(fake_notebook(stage), root / "reports" / f"{stage}.ipynb")
    nbformat.write(fake_notebook("train_x"), root / "reports" / "train_x.failed.ipynb")
    nbformat.write(fake_notebook("tmp"), root / "reports" / ".train_y.ipynb.abc.tmp.ipynb")
    (root / "results" / "figures").mkdir(parents=True)
    for name in NEEDS["figures"]:
        (root / "results" / "figures" / name).write_bytes(tiny_png(12, 8))
    (root / "results" / "figures" / "figure2_collection.png").write_bytes(tiny_png(24, 8))
    (root / "results" / "figures" / "extra.png").write_bytes(tiny_png())
    (root / "results" / "tables").mkdir(parents=True)
    for name in NEEDS["tables"]:
        (root / "results" / "tables" / name).write_text("Split,CV (%)\nTraining,12.5\n")
    (root / "results" / "tables" / "taxa.csv").write_text(TAXA_CSV)
    (root / "benchmarks" / "results").mkdir(parents=True)
    for name in NEEDS["benchmarks"]:
        (root / "benchmarks" / "results" / f"{name}.json").write_text('{"seconds": 1.5}')
    for name in NEEDS["benchmark_figures"]:
        (root / "benchmarks" / "results" / name).write_bytes(tiny_png(10, 6))
    data = {"virtual": "  source: virtual\n", "manifest": "  source: manifest\n"}[source]
    if source == "manifest":
        data += "  raw_dir: /scans/volumes\n  manifest: /scans/manifest.csv\n"
    (root / "params.yaml").write_text("data:\n" + data)
    return root


def copy_book_sources(dst: Path) -> Path:
    """Copy the book's sources (not its build products) to `dst`."""
    shutil.copytree(BOOK, dst, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    return dst


def prepare(project: Path, book_dir: Path) -> Path:
    return book.prepare_book(
        book_dir,
        reports_dir=project / "reports",
        results_dir=project / "results",
        params_path=project / "params.yaml",
        benchmarks_dir=project / "benchmarks" / "results",
        models_dir=project / "models",
    )


# --------------------------------------------------------------------------- external assets


def test_find_external_assets_reports_assets_and_ignores_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        """<html><head>
        <script src="https://cdn.example.org/lib.js"></script>
        <script src="_static/local.js"></script>
        <link rel="stylesheet" href="//fonts.googleapis.com/css?family=Lato">
        <link rel="preload" as="font" href="https://fonts.example.org/f.woff2">
        <link rel="stylesheet" href="_static/local.css">
        <link rel="canonical" href="https://example.org/book/index.html">
        <style>@import url("https://cdn.example.org/theme.css");
               .a { background: url(img/a.png) }</style>
        <script>const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"</script>
        </head><body>
        <a href="https://arxiv.org/abs/2512.00912">the paper</a>
        <a href="other.html">local</a>
        <img src="http://images.example.org/x.png" alt="remote">
        <img src="_images/figure.png" alt="local">
        <div style="background-image: url('https://images.example.org/bg.png')"></div>
        </body></html>"""
    )
    (tmp_path / "sub" / "style.css").write_text(
        """@import "https://cdn.example.org/more.css";
        @font-face { src: url(https://fonts.example.org/g.woff2) format("woff2"); }
        .b { background: url('//images.example.org/b.png'); }
        .c { background: url("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'"); }
        .d { src: url(../fonts/local.woff2); }
        /* docs: https://getbootstrap.com/ */"""
    )
    (tmp_path / "sub" / "app.js").write_text(
        """var s = document.createElement("script"); s.src = "https://utteranc.es/client.js";
        var about = '<a href="https://www.mathjax.org">www.mathjax.org</a>';
        var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        const docs = "https://example.org/docs";  // a link, not an asset
        el.innerHTML = '<img src="https://images.example.org/c.png">';"""
    )
    (tmp_path / "notes.txt").write_text('<script src="https://cdn.example.org/ignored.js">')

    found = book.find_external_assets(tmp_path)

    assert found == sorted(
        [
            ("index.html", "https://cdn.example.org/lib.js"),
            ("index.html", "//fonts.googleapis.com/css?family=Lato"),
            ("index.html", "https://fonts.example.org/f.woff2"),
            ("index.html", "https://cdn.example.org/theme.css"),
            ("index.html", "https://unpkg.com/thebe@0.8.2/lib/index.js"),
            ("index.html", "http://images.example.org/x.png"),
            ("index.html", "https://images.example.org/bg.png"),
            ("sub/style.css", "https://cdn.example.org/more.css"),
            ("sub/style.css", "https://fonts.example.org/g.woff2"),
            ("sub/style.css", "//images.example.org/b.png"),
            ("sub/app.js", "https://utteranc.es/client.js"),
            ("sub/app.js", "https://images.example.org/c.png"),
        ]
    )


def test_find_external_assets_clean_site_is_empty(tmp_path):
    (tmp_path / "index.html").write_text(
        '<script src="_static/a.js"></script><link rel="stylesheet" href="_static/a.css">'
        '<img src="_images/f.png"><a href="https://dvc.org">DVC</a>'
    )
    (tmp_path / "a.css").write_text(".x { background: url(img/x.png) }")
    assert book.find_external_assets(tmp_path) == []


# --------------------------------------------------------------------------- prepare_book


def test_csv_to_myst_table(tmp_path):
    (tmp_path / "t.csv").write_text(TAXA_CSV)
    table = book.csv_to_myst_table(tmp_path / "t.csv")
    lines = table.splitlines()
    assert lines[0] == "| species | n_volumes | n_specimens | kept |"
    assert lines[1] == "|---|---:|---:|---|"
    assert "| Rara\\|pipe | 2 | 1 | False |" in lines
    assert len(lines) == 5


def test_prepare_book_copies_products_and_renders_tables(tmp_path):
    project = make_project(tmp_path / "repo")
    book_dir = copy_book_sources(tmp_path / "book")

    out = prepare(project, book_dir)

    assert out == book_dir / "_generated"
    assert sorted(p.name for p in (out / "reports").iterdir()) == sorted(
        [f"{stage}.ipynb" for stage in NEEDS["reports"]]
        + ["pretrain_tiny_cnn.ipynb", "train_tiny_cnn.ipynb"]
    )
    nb = nbformat.read(out / "reports" / "curate.ipynb", as_version=4)
    assert nb.cells[1].outputs[0]["text"] == "curate done\n"
    figures = out / "figures"
    assert sorted(p.name for p in figures.iterdir()) == sorted({"extra.png", *NEEDS["figures"]})
    bench = (out / "benchmarks" / f"{NEEDS['benchmarks'][0]}.md").read_text()
    assert bench.splitlines()[2] == "| seconds | 1.5 |"
    assert (figures / "figure2_collection.png").read_bytes() == tiny_png(24, 8)
    taxa = (out / "tables" / "taxa.md").read_text()
    assert taxa.startswith("| species | n_volumes | n_specimens | kept |")
    note = (out / "data_source.md").read_text()
    assert "VIRTUAL" in note and "synthetic" in note and "not** the paper's scans" in note
    # no temporary directory is left behind
    assert not [p for p in book_dir.iterdir() if p.name.startswith("._generated")]


def test_prepare_book_names_a_users_manifest(tmp_path):
    stages = [s for s in NEEDS["reports"] if s != "synthesize"]
    project = make_project(tmp_path / "repo", source="manifest", stages=stages)
    book_dir = copy_book_sources(tmp_path / "book")

    out = prepare(project, book_dir)

    note = (out / "data_source.md").read_text()
    assert "your own micro-CT collection" in note and "/scans/manifest.csv" in note
    assert "VIRTUAL" not in note
    # synthesize does not run on a user's collection: a stub page says so
    stub = nbformat.read(out / "reports" / "synthesize.ipynb", as_version=4)
    assert "did not run" in stub.cells[0].source


def test_prepare_book_missing_notebook_is_a_clear_error(tmp_path):
    project = make_project(tmp_path / "repo")
    book_dir = copy_book_sources(tmp_path / "book")
    prepare(project, book_dir)
    (project / "reports" / "curate.ipynb").unlink()

    with pytest.raises(
        FileNotFoundError, match=r"reports/curate\.ipynb is missing: run `dvc repro curate`"
    ):
        prepare(project, book_dir)
    # the previous _generated/ is left whole
    assert (book_dir / "_generated" / "reports" / "curate.ipynb").is_file()


def test_prepare_book_missing_figure_names_the_stage_from_dvc_yaml(tmp_path):
    project = make_project(tmp_path / "repo")
    (project / "dvc.yaml").write_text(
        "stages:\n  gallery:\n    cmd: make it\n"
        "    outs:\n      - results/figures:\n          cache: true\n"
    )
    (project / "results" / "figures" / "figure2_collection.png").unlink()
    book_dir = copy_book_sources(tmp_path / "book")

    with pytest.raises(
        FileNotFoundError, match=r"figure2_collection\.png is missing: run `dvc repro gallery`"
    ):
        prepare(project, book_dir)


def test_prepare_book_rejects_unknown_data_source(tmp_path):
    project = make_project(tmp_path / "repo")
    (project / "params.yaml").write_text("data:\n  source: scans\n")
    with pytest.raises(ValueError, match="data.source"):
        prepare(project, copy_book_sources(tmp_path / "book"))


def test_required_products_follow_toc_and_pages():
    needs = book.required_products(BOOK)
    assert needs["reports"][:2] == ["synthesize", "curate"]
    assert "figure2_collection.png" in needs["figures"]
    assert "taxa.csv" in needs["tables"]
    assert {"slice", "split"} <= set(needs["reports"])
    assert {"table2.csv", "table3.csv", "table2_paper.csv"} <= set(needs["tables"])
    assert "slicing_speed" in needs["benchmarks"]


def test_missing_benchmark_result_names_the_script(tmp_path):
    project = make_project(tmp_path / "repo")
    (project / "benchmarks" / "results" / "slicing_speed.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"run `python benchmarks/slicing_speed.py`"):
        prepare(project, copy_book_sources(tmp_path / "book"))


# --------------------------------------------------------------------------- mathjax / build


def test_benchmark_figures_are_copied_and_a_missing_one_names_its_script(tmp_path):
    assert "classification_curves.png" in NEEDS["benchmark_figures"]
    project = make_project(tmp_path / "repo")
    out = prepare(project, copy_book_sources(tmp_path / "book"))
    copied = out / "benchmarks" / "classification_curves.png"
    assert copied.read_bytes() == tiny_png(10, 6)
    (project / "benchmarks" / "results" / "classification_curves.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"run `python benchmarks/classification.py`"):
        prepare(project, copy_book_sources(tmp_path / "book2"))


def test_ensure_mathjax_without_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(book.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="npm is not installed"):
        book.ensure_mathjax(tmp_path)


def test_build_book_fails_on_external_assets(tmp_path, monkeypatch):
    project = make_project(tmp_path / "repo")
    book_dir = copy_book_sources(tmp_path / "book")
    (book_dir / "_static" / "mathjax").mkdir(parents=True)
    (book_dir / "_static" / "mathjax" / "tex-chtml.js").write_text("// stub")
    calls = []

    def fake_build(cmd, check):
        calls.append(cmd)
        html = book_dir / "_build" / "html"
        html.mkdir(parents=True)
        (html / "index.html").write_text('<script src="https://cdn.example.org/x.js"></script>')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(book.subprocess, "run", fake_build)
    with pytest.raises(book.BookBuildError, match="from the internet"):
        book.build_book(
            book_dir,
            reports_dir=project / "reports",
            results_dir=project / "results",
            params_path=project / "params.yaml",
            benchmarks_dir=project / "benchmarks" / "results",
            models_dir=project / "models",
        )
    assert calls and {"-W", "-n", "--keep-going"} <= set(calls[0])


def _mathjax_source() -> Path:
    """The repo's local MathJax copy, installed with npm if needed (else skip)."""
    if not (BOOK / book.MATHJAX_DIR / book.MATHJAX_ENTRY).is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: cannot install the local MathJax copy (mathjax@3)")
        book.ensure_mathjax(BOOK)
    return BOOK / book.MATHJAX_DIR


@pytest.mark.slow
def test_strict_offline_build_of_the_book(tmp_path):
    mathjax = _mathjax_source()
    project = make_project(tmp_path / "repo")
    book_dir = copy_book_sources(tmp_path / "book")
    shutil.copytree(mathjax, book_dir / book.MATHJAX_DIR)

    index = book.build_book(
        book_dir,
        strict=True,
        reports_dir=project / "reports",
        results_dir=project / "results",
        params_path=project / "params.yaml",
        benchmarks_dir=project / "benchmarks" / "results",
        models_dir=project / "models",
    )

    assert index == book_dir / "_build" / "html" / "index.html"
    html = index.read_text()
    assert "figure2_collection.png" in html
    assert (index.parent / "_images" / "figure2_collection.png").is_file()
    assert "VIRTUAL micro-CT collection" in html
    assert "Alveolina" in html  # the taxa table
    report = (index.parent / "_generated" / "reports" / "curate.html").read_text()
    assert "curate done" in report and "<img" in report
    assert "_static/mathjax/tex-chtml.js" in report
    # only MathJax's entry point is loaded, not every file of the local copy
    assert report.count("_static/mathjax/") == 1
    assert book.find_external_assets(index.parent) == []


def test_training_section_lists_trained_backbones_with_their_curves(tmp_path):
    project = make_project(tmp_path / "repo")
    model = project / "models" / "tiny_cnn"
    model.mkdir(parents=True)
    (model / "summary.json").write_text(
        '{"backbone": "tiny_cnn", "input_size": 96, "epochs_run": 6, "best_val_loss": 1.25,'
        ' "val_accuracy": 0.5, "train_images_per_s": 210.4, "precision": "float32",'
        ' "backend": "tensorflow", "parameters": {"trainable": 10, "non_trainable": 2}}'
    )
    (project / "results" / "figures" / "history_tiny_cnn.png").write_bytes(tiny_png())
    text, figures = book.training_section(project / "models", project / "results" / "figures")
    assert text == book.training_section(project / "models", project / "results" / "figures")[0]
    assert "No backbone" not in text and figures == ["history_tiny_cnn.png"]
    assert "| tiny_cnn | 96 | 6 | 1.250 | 0.500 | 210.4 | float32 | tensorflow | 12 |" in text
    with pytest.raises(FileNotFoundError, match=r"run `dvc repro train@tiny_cnn`"):
        book.training_section(project / "models", tmp_path / "nowhere")
    out = prepare(project, copy_book_sources(tmp_path / "book"))
    assert (out / "figures" / "history_tiny_cnn.png").is_file()
    assert "_generated/figures/history_tiny_cnn.png" in (out / "training.md").read_text()


def test_benchmark_with_several_runs_gets_a_table_of_runs(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(
        '{"backend": "tensorflow", "runs": [{"backbone": "a", "ips": 1.5},'
        ' {"backbone": "b", "ips": 2, "extra": "x"}]}'
    )
    lines = book.json_to_myst_table(path).splitlines()
    assert "| backend | tensorflow |" in lines and "runs:" in lines
    assert "| backbone | ips | extra |" in lines
    assert "| a | 1.5 |  |" in lines and "| b | 2 | x |" in lines
