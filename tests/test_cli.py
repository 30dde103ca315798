"""`foram index` and `foram match`: tables, JSON, figures, and one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.dataset.slicing import Plane, extract_slice
from foramlib.io.volumes import write_nifti
from foramlib.matching import search as matching
from foramlib.matching.index import load_collection, read_image
from foramlib.tools import cli

REPO = Path(__file__).resolve().parents[1]


def _ellipsoid(axes, shape=32, seed=0) -> np.ndarray:
    g = np.indices((shape,) * 3, dtype=np.float32) - (shape - 1) / 2
    inside = sum((g[i] / a) ** 2 for i, a in enumerate(axes)) <= 1.0
    core = sum((g[i] / (0.5 * a)) ** 2 for i, a in enumerate(axes)) <= 1.0
    vol = 100 + 700 * inside + 150 * core
    return vol + np.random.default_rng(seed).normal(0, 20, vol.shape)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace with three specimens, its index built by `foram index`, and a query."""
    root = tmp_path_factory.mktemp("ws")
    rows = []
    for i, (spec, species, axes) in enumerate(
        [("A-01", "Alpha", (11, 7, 5)), ("A-02", "Alpha", (12, 6, 6)), ("B-01", "Beta", (9, 9, 4))]
    ):
        write_nifti(root / "raw" / f"{spec}.nii.gz", _ellipsoid(axes, seed=i), (10.0,) * 3)
        rows.append(dict(file=f"{spec}.nii.gz", specimen_id=spec, species=species))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    args = ["index", "--manifest", str(root / "manifest.csv"), "--raw-dir", str(root / "raw")]
    args += ["--out", str(root / "index"), "--orientations", "20", "--offsets", "3"]
    args += ["--size", "32"]
    assert cli.main(args) == 0
    vol = _ellipsoid((12, 6, 6), seed=1)
    query = extract_slice(vol, Plane((0.3, 0.2, 0.93), 1.0, 25.0))
    q16 = np.round((query - query.min()) / np.ptp(query) * 60000).astype(np.uint16)
    cv2.imwrite(str(root / "query.png"), q16)
    return root


def _match(workspace, *extra):
    # the match limit is the workspace's own (absent unless a test writes it), never the
    # repository's results/match_check.json
    extra = (
        extra
        if "--match-check" in extra
        else (*extra, "--match-check", str(workspace / "match_check.json"))
    )
    return cli.main(["match", str(workspace / "query.png"), "--index", str(workspace / "index"),
                     *extra])  # fmt: skip


def test_match_without_a_limit_says_so_and_json_has_no_verdict(workspace, capsys):
    assert _match(workspace, "--top-k", "1") == 0
    out = capsys.readouterr().out
    assert "note: no reliability verdict: " in out and "dvc repro calibrate_match" in out
    assert _match(workspace, "--json", "--top-k", "2") == 0
    assert [m["reliable"] for m in json.loads(capsys.readouterr().out)] == [None, None]


@pytest.mark.parametrize(
    "threshold, word, flag", [(0.0, "reliable match: ", True), (1.5, "NO RELIABLE MATCH: ", False)]
)
def test_match_gives_the_calibrated_verdict(workspace, tmp_path, capsys, threshold, word, flag):
    from foramlib.matching.reliability import MatchCheck

    check = MatchCheck(threshold, 0.95, (0.5, 0.9, 1.0), (True, True, True))
    path = check.save(tmp_path / "c.json")
    assert _match(workspace, "--top-k", "1", "--match-check", str(path)) == 0
    lines = capsys.readouterr().out.splitlines()
    verdict = [line for line in lines if "RELIABLE" in line.upper()]
    assert len(verdict) == 1 and verdict[0].startswith(word)
    assert f"{threshold:.2f} kept" in verdict[0] and "of 3 held-out sections" in verdict[0]
    assert _match(workspace, "--json", "--top-k", "1", "--match-check", str(path)) == 0
    assert json.loads(capsys.readouterr().out)[0]["reliable"] is flag
    # an unrefined search scores poses the limit was not set on: no verdict
    for unrefined in (["--no-refine"], ["--time-budget", "0"]):
        assert _match(workspace, *unrefined, "--top-k", "1", "--match-check", str(path)) == 0
        said = capsys.readouterr().out
        assert "no reliability verdict: the limit is set on refined matches" in said


@pytest.mark.parametrize(
    "margin_limit, sure, words",
    [(-10.0, True, "better than the next specimen ("), (10.0, False, "not in the collection")],
)
def test_match_says_whether_the_specimen_is_clear(
    workspace, tmp_path, capsys, margin_limit, sure, words
):
    """With a margin limit, a reliable match is searched again among the other
    specimens; the verdict says whether the best one fits clearly better."""
    from foramlib.matching.reliability import MatchCheck

    check = MatchCheck(0.0, 0.95, (0.5, 0.9), margin_threshold=margin_limit, margins=(0.1, 0.2))
    path = check.save(tmp_path / "c.json")
    assert _match(workspace, "--top-k", "1", "--match-check", str(path)) == 0
    out = capsys.readouterr().out
    verdict = [line for line in out.splitlines() if line.startswith("reliable match: ")]
    assert len(verdict) == 1 and words in verdict[0], out
    assert "s comparing the other specimens)" in out.splitlines()[0]
    # an unclear specimen: what the two best specimens' genera say
    genus = [g for g in out.splitlines() if re.match(r"note: (both are|they are of two)", g)]
    assert len(genus) == (0 if sure else 1), out
    assert _match(workspace, "--json", "--top-k", "2", "--match-check", str(path)) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert first["specimen_sure"] is sure and second["specimen_sure"] is None
    other = first["runner_up"]
    assert other["specimen_id"] in {"A-01", "A-02", "B-01"} - {first["specimen_id"]}
    assert other["margin"] == pytest.approx(
        first["scores"]["combined"] - other["combined"], abs=1e-5
    )
    assert second["runner_up"] is None
    # skipped on request, and where no other specimen is in reach: nothing said
    for extra in (["--no-specimen-check"], ["--specimens", "A-01"]):
        assert _match(workspace, "--json", "--top-k", "1", "--match-check", str(path),
                      *extra) == 0  # fmt: skip
        found = json.loads(capsys.readouterr().out)[0]
        assert found["specimen_sure"] is None and found["runner_up"] is None


def test_margin_keep_sets_the_specimen_limit_from_the_stored_margins(workspace, tmp_path, capsys):
    from foramlib.matching.reliability import MatchCheck

    # calibrated: every margin clears the limit; kept at 100 % of margins of 100: none does
    check = MatchCheck(0.0, 0.95, (0.5,), margin_threshold=-10.0, margins=(-10.0, 100.0))
    path = check.save(tmp_path / "c.json")
    args = ("--json", "--top-k", "1", "--match-check", str(path))
    assert _match(workspace, *args) == 0
    assert json.loads(capsys.readouterr().out)[0]["specimen_sure"] is True
    assert _match(workspace, *args, "--margin-keep", "0.5") == 0
    assert json.loads(capsys.readouterr().out)[0]["specimen_sure"] is False
    assert _match(workspace, *args, "--margin-keep", "0") == 2
    assert "--margin-keep with " in capsys.readouterr().err


def test_match_refuses_a_broken_limit_file_in_one_line(workspace, tmp_path, capsys):
    bad = tmp_path / "match_check.json"
    bad.write_text('{"format": 1, "threshold": "high"}')
    assert _match(workspace, "--match-check", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: not a match check" in err


def test_index_command_reports_what_it_built(workspace, capsys):
    args = ["index", "--manifest", str(workspace / "manifest.csv")]
    args += ["--raw-dir", str(workspace / "raw"), "--out", str(workspace / "index2")]
    args += ["--orientations", "20", "--offsets", "3", "--size", "32"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "[  0%] indexing A-01 (1/3)" in out
    assert "candidate sections of 3 specimens written to" in out
    built = matching.MatchIndex.load(workspace / "index2" / "index.npz")
    assert built.config.n_orientations == 20 and built.config.preprocess.size == 32


@pytest.mark.slow
def test_match_prints_a_table_of_the_top_matches(workspace, capsys):
    assert _match(workspace, "--top-k", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "top 2 of" in lines[0] and "(3 specimens)" in lines[0]
    assert lines[1].split() == [
        "rank", "specimen", "genus", "normal", "offset", "angle",
        "dice", "ncc", "texture", "ssim", "combined",
    ]  # fmt: skip
    # the same answer as the library gives for the same image, index and volumes
    c = load_collection(workspace / "index")
    image = read_image(workspace / "query.png")
    found = matching.match(c.index, image, top_k=2, volumes=c.volumes)
    # + a note on the reading, + the note that the workspace has no match limit
    assert len(lines) == 5 + (found[0].reading != "as given")
    assert lines[-1].startswith("note: no reliability verdict: ")
    for row, m in zip(lines[2:4], found, strict=True):
        cells = row.split()
        assert cells[:3] == [str(found.index(m) + 1), m.specimen_id, m.species]
        assert " ".join(cells[3:6]) == "({:.3f}, {:.3f}, {:.3f})".format(*m.normal)
        assert cells[6:8] == [f"{m.offset:.1f}", f"{m.angle_deg:.1f}"]
        assert cells[8:] == [f"{m.scores[k]:.3f}" for k in cli.SCORE_COLUMNS]


@pytest.mark.slow
def test_match_says_when_it_matched_another_reading_of_the_image(workspace, capsys, monkeypatch):
    real = matching.match

    def read_away(*args, **kwargs):
        return [replace(m, reading="brightest class removed") for m in real(*args, **kwargs)]

    monkeypatch.setattr(matching, "match", read_away)
    assert _match(workspace, "--top-k", "1") == 0
    last = capsys.readouterr().out.splitlines()[-2]  # then the note on the match limit
    assert last == (
        "note: the image as given matched weakly; these matches are for another reading of it: "
        "brightest class removed"
    )
    assert _match(workspace, "--json", "--top-k", "1") == 0
    assert json.loads(capsys.readouterr().out)[0]["reading"] == "brightest class removed"


@pytest.mark.slow
def test_match_json_filters_and_no_refine(workspace, capsys):
    assert _match(workspace, "--json", "--species", "Beta", "--no-refine", "--top-k", "3") == 0
    found = json.loads(capsys.readouterr().out)
    assert [m["rank"] for m in found] == [1, 2, 3]
    assert {m["genus"] for m in found} == {"Beta"}
    assert set(found[0]) == {"rank", "specimen_id", "genus", "normal", "offset", "angle_deg",
                             "scores", "reading", "reliable", "specimen_sure",
                             "runner_up", "not_a_section"}  # fmt: skip
    assert set(found[0]["scores"]) >= {"dice", "ncc", "ssim", "descriptor", "combined"}
    assert _match(workspace, "--json", "--specimens", "A-01", "B-01", "--top-k", "1") == 0
    assert json.loads(capsys.readouterr().out)[0]["specimen_id"] in {"A-01", "B-01"}


@pytest.mark.slow
def test_match_refinement_uses_the_volumes_and_a_time_budget(workspace, capsys):
    assert _match(workspace, "--json", "--top-k", "1") == 0
    refined = json.loads(capsys.readouterr().out)[0]
    assert _match(workspace, "--json", "--top-k", "1", "--no-refine") == 0
    coarse = json.loads(capsys.readouterr().out)[0]
    assert refined["scores"]["combined"] >= coarse["scores"]["combined"]
    assert _match(workspace, "--json", "--top-k", "1", "--time-budget", "0") == 0
    assert json.loads(capsys.readouterr().out)[0] == coarse  # budget spent: no refinement


@pytest.mark.slow
def test_match_saves_the_3d_view_of_the_best_match(workspace, tmp_path, capsys):
    out = tmp_path / "fig" / "best.png"
    assert _match(workspace, "--top-k", "1", "--save-figure", str(out)) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert f"written to {out}" in capsys.readouterr().err


def _write(path, image):
    cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"%PDF-1.4 not an image") and p, r"not a readable image"),
        (lambda p: _write(p, np.full((64, 64), 128, np.uint8)), r"image is blank"),
        (lambda p: _write(p, np.full((8, 8), 9, np.uint8)), r"too small"),
        (
            lambda p: _write(p, np.pad(np.full((2, 2), 255, np.uint8), 31)),
            r"query\.png: query: the fossil covers only 0\.391% of the image",
        ),
    ],
    ids=["non-image", "blank", "tiny", "no-foreground"],
)
def test_bad_query_images_are_one_line_errors(workspace, tmp_path, capsys, make, message):
    path = make(tmp_path / "query.png")
    code = cli.main(["match", str(path), "--index", str(workspace / "index")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("foram match: error: ") and err.count("\n") == 1
    assert "query.png" in err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--species", "Gamma"], r"species not in the index: \['Gamma'\]"),
        (["--specimens", "Z-9"], r"specimens not in the index: \['Z-9'\]"),
        (["--top-k", "0"], r"top_k must be an integer >= 1, got 0"),
    ],
)
def test_bad_filters_are_one_line_errors(workspace, capsys, extra, message):
    assert _match(workspace, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err), err


def test_missing_or_stale_index(workspace, tmp_path, capsys, monkeypatch):
    query = str(workspace / "query.png")
    assert cli.main(["match", query, "--index", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "index.npz is missing: run `dvc repro index` first" in err
    monkeypatch.setattr(matching, "PREPROCESS_VERSION", matching.PREPROCESS_VERSION + 1)
    assert _match(workspace) == 2
    assert "preprocessing version" in capsys.readouterr().err


def test_prog_name_is_foram_and_foramlib_still_works(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/foram"])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: foram ")
    monkeypatch.setattr(sys, "argv", ["/usr/bin/foramlib"])
    with pytest.raises(SystemExit):
        cli.main(["match", "--help"])
    assert capsys.readouterr().out.startswith("usage: foramlib match ")


def test_module_entry_point_exits_2_with_one_line(workspace, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("just text")
    proc = subprocess.run(
        [sys.executable, "-m", "foramlib.tools.cli", "match", str(bad), "--index", str(workspace)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"foram match: error: {bad}: not a readable image (expected PNG, JPEG, TIFF, BMP, ...)"
    ]


def _params_file(path, **match):
    settings = dict(n_orientations=20, n_offsets=3, size=32, descriptor_size=16) | match
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["match"] = settings
    params["slice"]["smooth_sigma"] = 0.5
    path.write_text(yaml.safe_dump(params))
    return path


def test_index_reads_the_index_stage_settings_from_params(workspace, tmp_path, capsys):
    params = _params_file(tmp_path / "params.yaml")
    args = ["index", "--manifest", str(workspace / "manifest.csv"), "--params", str(params)]
    args += ["--raw-dir", str(workspace / "raw"), "--out", str(tmp_path / "index")]
    assert cli.main(args) == 0
    assert f"20 orientations x 3 offsets per specimen, 32 px sections (settings: {params})" in (
        capsys.readouterr().out
    )
    built = matching.MatchIndex.load(tmp_path / "index" / "index.npz").config
    # what `dvc repro index` builds from the same file
    assert built == matching.IndexConfig.from_params(yaml.safe_load(params.read_text()))
    assert (built.descriptor_size, built.smooth_sigma) == (16, 0.5)


def test_index_flags_override_params_and_no_params_means_library_defaults(tmp_path, monkeypatch):
    params = _params_file(tmp_path / "p.yaml")
    ns = argparse.Namespace(
        params=str(params), orientations=7, offsets=None, size=None, max_side=None
    )
    config, source, max_side = cli._index_config(ns)
    assert (config.n_orientations, config.n_offsets, config.preprocess.size) == (7, 3, 32)
    assert source == str(params) and max_side == 512  # data.max_side of the file
    ns.max_side = 300
    assert cli._index_config(ns)[2] == 300  # the flag wins
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    ns = argparse.Namespace(params=None, orientations=None, offsets=None, size=48, max_side=None)
    config, source, max_side = cli._index_config(ns)
    assert config == replace(matching.IndexConfig(), preprocess=PreprocessConfig(size=48))
    assert "IndexConfig defaults" in source and max_side == cli.DEFAULT_MAX_SIDE


def test_the_projects_index_stage_and_foram_index_agree(monkeypatch):
    monkeypatch.chdir(REPO)
    ns = argparse.Namespace(params=None, orientations=None, offsets=None, size=None, max_side=None)
    config, source, max_side = cli._index_config(ns)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    match = params["match"]
    assert max_side == params["data"]["max_side"]
    assert source == "params.yaml"
    assert (config.n_orientations, config.n_offsets) == (
        match["n_orientations"], match["n_offsets"]
    )  # fmt: skip


def test_index_with_bad_params_is_one_line(workspace, tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("match: [unclosed\n")
    args = ["index", "--manifest", str(workspace / "manifest.csv"), "--params", str(bad)]
    assert cli.main(args + ["--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foram index: error:") and "params.yaml" in err
    assert not (tmp_path / "i").exists()


# --- foram params check -------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_params_check_passes_the_projects_params_and_profiles(capsys):
    for path in [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]:
        assert cli.main(["params", "check", "--params", str(path)]) == 0
        out = capsys.readouterr().out
        stages = "synthesize, curate, slice, split, corpus, pretrain, train, ensemble, evaluate"
        assert f"valid; stages configured: {stages}, index" in out


def test_params_check_prints_every_problem_on_its_own_line(tmp_path, capsys):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = -1
    params["ensemble"]["max_k"] = 0
    del params["match"]["size"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert cli.main(["params", "check", "--params", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert f"{path}: seed = -1 is invalid: expected an integer >= 0" in lines
    assert any(line.startswith(f"{path}: ensemble.max_k = 0 is invalid") for line in lines)
    assert any(line.startswith(f"{path}: missing key 'match.size'") for line in lines)
    assert lines[-1] == f"3 problem(s) in {path}"


def test_params_check_configures_every_stage_module(tmp_path, capsys, monkeypatch):
    # a value the schema accepts but a stage refuses is caught before anything runs
    from foramlib import pipeline

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.setattr(
        pipeline, "check_params", lambda p: ["index: n_offsets = 0 is invalid"] if p else []
    )
    assert cli.main(["params", "check", "--params", str(path)]) == 1
    assert f"{path}: index: n_offsets = 0 is invalid" in capsys.readouterr().err


def test_params_check_names_a_missing_file(tmp_path, capsys):
    assert cli.main(["params", "check", "--params", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: parameter file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_match_says_when_the_query_is_not_a_foraminifer_section(
    workspace, tmp_path, capsys, monkeypatch
):
    from test_classify import _check_for

    from foramlib.inference.classify import SECTION_CHECK, preprocess_defaults

    ws = tmp_path / "ws"
    (ws / "results").mkdir(parents=True)
    _check_for(preprocess_defaults(ws)[0].size).save(ws / SECTION_CHECK)
    grey = cv2.imread(str(workspace / "query.png"), cv2.IMREAD_UNCHANGED)
    colour = np.dstack([grey, grey // 2, grey // 3])  # a colour rendering of the section
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    args = ["match", str(tmp_path / "colour.png"), "--index", str(workspace / "index")]
    assert cli.main([*args, "--workspace", str(ws), "--json", "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    found = json.loads(captured.out)
    assert found[0]["rank"] == 1  # the JSON keeps its shape
    assert found[0]["not_a_section"].startswith("this is a colour picture; micro-CT")
    assert "NOT A FORAMINIFER SECTION? this is a colour picture" in captured.err
    # a limit the best fit clears: the section check still overrules it
    from foramlib.matching.reliability import MatchCheck

    limit = MatchCheck(0.0, 0.95, (0.5, 0.9, 1.0)).save(tmp_path / "c.json")
    with_limit = [*args, "--workspace", str(ws), "--match-check", str(limit), "--top-k", "1"]
    assert cli.main([*with_limit, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["reliable"] is False
    assert cli.main(with_limit) == 0
    said = capsys.readouterr().out
    assert (
        "NO RELIABLE MATCH: the section check refused the image (this is a colour picture; micro-CT"
        in said
        and "so even its best score" in said
    )
    assert "comparing the other specimens" not in said  # no specimen check for a refusal
    # an image the section check passes keeps the score's verdict
    import foramlib.inference.classify as classify_module

    monkeypatch.setattr(classify_module, "section_refusal", lambda image, workspace: None)
    assert cli.main([*with_limit, "--json", "--no-specimen-check"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["reliable"] is True and found[0]["not_a_section"] is None
    monkeypatch.undo()
    # without a check in the workspace nothing is said either way
    assert cli.main([*args, "--workspace", str(tmp_path), "--top-k", "1"]) == 0
    assert "NOT A FORAMINIFER" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("shape", "is_scan"),
    [
        ((30, 40, 50), True),  # a stack of pages: a scan
        ((3, 40, 50), True),  # three pages, not three channels
        ((40, 50), False),  # one section
        ((40, 50, 3), False),  # one colour section
        ((1, 40, 50), False),  # one page, stored as a stack of one
    ],
)
def test_a_tiff_is_told_scan_or_section_from_its_headers(tmp_path, shape, is_scan, monkeypatch):
    import tifffile

    path = tmp_path / "input.tif"
    photometric = "rgb" if shape[-1] == 3 else "minisblack"
    tifffile.imwrite(path, np.ones(shape, np.uint16), photometric=photometric)
    # the pixels are never decoded to decide
    monkeypatch.setattr(tifffile.TiffFile, "asarray", lambda *a, **k: pytest.fail("decoded"))
    assert cli._is_scan(path) is is_scan


def test_an_unreadable_tiff_is_left_to_the_image_reader(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00garbage")
    assert cli._is_scan(path) is False
    with pytest.raises(Exception, match="broken.tif: not a readable"):
        read_image(path)


def test_running_out_of_memory_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    def greedy(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(cli, "_match", greedy)
    assert cli.main(["match", str(tmp_path / "q.png"), "--index", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "match: error: out of memory" in err and "FORAM_MAX" in err
