"""foramlib.app.workspace and foramlib.app.render: what the dashboard reads and shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foramlib.app import render, workspace


def _write_split(root, species=("Alpha", "Beta"), per_species=7, missing_array=False):
    rows = []
    for s in species:
        for k in range(per_species):
            rows.append(
                {
                    "slice_id": f"{s}-1:{k:03d}",
                    "specimen_id": f"{s}-1",
                    "species": s,
                    "array": f"{s}.npy",
                    "row": k,
                    "split": "test" if k % 2 == 0 else "train",
                }
            )
    (root / "data" / "split").mkdir(parents=True)
    (root / "data" / "slices").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "data" / "split" / "index.csv", index=False)
    for s in species[: len(species) - int(missing_array)]:
        np.save(root / "data" / "slices" / f"{s}.npy", np.zeros((per_species, 4, 4), np.uint8))


def test_gallery_takes_test_slices_of_each_genus_spread_over_them(tmp_path):
    _write_split(tmp_path)
    table = workspace.gallery_table(tmp_path, per_genus=3)
    assert set(table["split"]) == {"test"}
    assert table.groupby("species").size().to_dict() == {"Alpha": 3, "Beta": 3}
    # the 4 test slices of a genus are rows 0, 2, 4, 6: first, middle and last chosen
    assert table.loc[table["species"] == "Alpha", "row"].tolist() == [0, 4, 6]


def test_gallery_skips_slices_whose_array_is_missing(tmp_path):
    _write_split(tmp_path, missing_array=True)
    assert set(workspace.gallery_table(tmp_path)["species"]) == {"Alpha"}


@pytest.mark.parametrize(
    "content",
    ["slice_id,species\nx,A\n", "not,a,valid\n\x00\x01", ""],
)
def test_gallery_of_an_unusable_index_is_none(tmp_path, content):
    _write_split(tmp_path)
    (tmp_path / "data" / "split" / "index.csv").write_text(content)
    assert workspace.gallery_table(tmp_path) is None


def test_data_source_prefers_the_evaluated_run_then_params(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  source: manifest\n")
    assert workspace.data_source(tmp_path, {"data_source": "virtual"}) == "virtual"
    assert workspace.data_source(tmp_path, None) == "manifest"
    (tmp_path / "params.yaml").write_text("data: [unclosed")
    assert workspace.data_source(tmp_path, None) is None


def test_collection_counts_of_the_curated_manifest(tmp_path):
    (tmp_path / "data" / "curated").mkdir(parents=True)
    pd.DataFrame(
        {"specimen_id": ["a", "a", "b"], "species": ["X", "X", "Y"], "file": ["1", "2", "3"]}
    ).to_csv(tmp_path / "data" / "curated" / "manifest.csv", index=False)
    assert workspace.collection_counts(tmp_path) == {"specimens": 2, "scans": 3, "genera": 2}
    (tmp_path / "data" / "curated" / "manifest.csv").write_text("file\n1\n")
    assert workspace.collection_counts(tmp_path) is None


def test_read_json_of_a_broken_file_is_none(tmp_path):
    (tmp_path / "m.json").write_text("{")
    assert workspace.read_json(tmp_path / "m.json") is None
    (tmp_path / "m.json").write_text(json.dumps({"a": 1}))
    assert workspace.read_json(tmp_path / "m.json") == {"a": 1}


def test_dataset_paragraph_labels_virtual_data_and_escapes_names():
    virtual = render.dataset_html("virtual", {"specimens": 2, "scans": 3, "genera": 2}, ".")
    assert "not</i> real fossils" in virtual and "2 specimens (3 scans) of 2 genera" in virtual
    own = render.dataset_html("<script>", None, ".")
    assert "<script>" not in own and "&lt;script&gt;" in own
    assert "dvc repro" in render.dataset_html(None, None, "/ws")


def test_performance_table_marks_the_final_model():
    metrics = {
        "final": "Top-2",
        "test_slices": 10,
        "models": {
            "a": {"accuracy": 0.5, "macro_f1": 0.4, "top3": 0.9, "auc": 0.8},
            "Top-2": {"accuracy": 0.6, "macro_f1": 0.55, "top3": None, "auc": None},
        },
    }
    out = render.performance_html(metrics)
    assert "Final model: <b>Top-2</b> — accuracy 60.0%, macro-F1 55.0% on 10" in out
    assert '<tr style="font-weight:bold"><td>Top-2 (final)</td>' in out
    assert "<td>–</td>" in out  # a metric the run lacks
    assert "No evaluation yet" in render.performance_html({"final": "x", "models": {}})


def test_performance_table_shows_chance_and_says_what_each_score_means():
    metrics = {
        "final": "a",
        "test_slices": 10,
        "models": {"a": {"accuracy": 0.5, "macro_f1": 0.4, "top3": 0.9, "auc": 0.8}},
    }
    assert "chance" not in render.performance_html(metrics)
    out = render.performance_html(metrics, n_classes=12)
    chance = out.split('class="foram-chance"')[1].split("</tr>")[0]
    cells = re.findall(r"<td>(.*?)</td>", chance)
    assert cells == ["chance: a random guess among 12 genera", "8.3%", "8.3%", "25.0%", "0.500"]
    for name in ("Accuracy", "Macro-F1", "Top-3", "AUC"):
        assert f"<b>{name}</b>:" in out


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "12"])
def test_chance_levels_rejects_a_bad_class_count(bad):
    with pytest.raises(ValueError, match=r"n_classes = .* is invalid"):
        render.chance_levels(bad)


# --------------------------------------------------------------------------- serve


def test_voila_is_started_locally_with_the_apps_template():
    from foramlib.app import serve

    cmd = serve.voila_command(8877)
    assert cmd[1:4] == ["-m", "voila", "dashboard/app.ipynb"]
    assert "--port=8877" in cmd and "--Voila.ip=127.0.0.1" in cmd and "--template=foram" in cmd
    template = serve.TEMPLATE_ROOT / "voila" / "templates" / serve.TEMPLATE
    assert (template / "conf.json").is_file() and (template / "index.html.j2").is_file()


def test_the_template_folder_comes_first_on_jupyter_path():
    import os

    from foramlib.app import serve

    env = serve.voila_env("ws", {"JUPYTER_PATH": os.pathsep.join(["/a", "/b"]), "X": "1"})
    assert env["JUPYTER_PATH"].split(os.pathsep) == [str(serve.TEMPLATE_ROOT), "/a", "/b"]
    assert env["FORAM_WORKSPACE"] == "ws" and env["X"] == "1"
    assert serve.voila_env("ws", {})["JUPYTER_PATH"] == str(serve.TEMPLATE_ROOT)


@pytest.mark.parametrize("port", [0, 70000, True, "8866"])
def test_bad_ports_are_refused(port):
    from foramlib.app import serve

    with pytest.raises(ValueError, match=r"port = .* is invalid"):
        serve.voila_command(port)


def test_preheated_kernels_are_asked_for_explicitly():
    from foramlib.app import serve

    assert not any("preheat" in a for a in serve.voila_command(8877))  # one kernel per page
    cmd = serve.voila_command(8877, preheat=2)
    assert cmd[-3:] == [
        "--preheat_kernel=True",
        "--pool_size=2",
        f"--VoilaKernelManager.fill_delay={serve.REFILL_DELAY_S}",
    ]


@pytest.mark.parametrize("preheat", [-1, 17, True, 1.5])
def test_bad_preheat_counts_are_refused(preheat):
    from foramlib.app import serve

    with pytest.raises(ValueError, match=r"preheat = .* is invalid"):
        serve.voila_command(8877, preheat=preheat)


def test_make_dashboard_keeps_one_kernel_ready(monkeypatch):
    from foramlib.app import serve

    called = {}
    monkeypatch.setattr(serve.subprocess, "call", lambda cmd, env: called.update(cmd=cmd) or 0)
    assert serve.main(["--port", "8871"]) == 0
    assert "--pool_size=1" in called["cmd"] and "--port=8871" in called["cmd"]
    assert serve.main(["--port", "8871", "--preheat", "0"]) == 0
    assert not any("pool_size" in a for a in called["cmd"])


def test_the_host_check_is_opened_only_as_asked():
    import json

    from foramlib.app import serve

    base = json.loads((Path(__file__).resolve().parents[1] / "voila.json").read_text())
    same = serve.host_config(base)
    assert same == base and same is not base
    opened = serve.host_config(base, ["foram.lab.example", "foram.lab.example", "::1"])
    settings = opened["Voila"]["tornado_settings"]
    assert settings["local_hostnames"] == ["localhost", "foram.lab.example"]
    assert settings["allow_remote_access"] is False  # still checked, one more name
    assert opened["MappingKernelManager"] == base["MappingKernelManager"]  # culling kept
    assert base["Voila"]["tornado_settings"]["local_hostnames"] == ["localhost"]  # untouched
    anyhost = serve.host_config(base, allow_any_host=True)
    assert anyhost["Voila"]["tornado_settings"]["allow_remote_access"] is True


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("192.168.1.20", r"'192\.168\.1\.20': an IP address is accepted only for loopback"),
        ("fe80::1", r"an IP address is accepted only for loopback"),
        ("lab.example:8866", r"'lab\.example:8866': expected a host name without port"),
        ("", r"'': expected a host name"),
        ("two words", r"expected a host name without port or spaces"),
    ],
)
def test_bad_host_names_are_refused(name, match):
    from foramlib.app import serve

    with pytest.raises(ValueError, match=match):
        serve.host_config({}, [name])


@pytest.mark.parametrize("ip", ["localhost", "0.0.0.0.1", ""])
def test_bad_listen_addresses_are_refused(ip):
    from foramlib.app import serve

    with pytest.raises(ValueError, match=r"ip = .* is invalid: expected an IP address"):
        serve.voila_command(8877, ip=ip)


def test_serving_for_a_lab_writes_the_opened_config_and_says_so(monkeypatch, capsys):
    import json

    from foramlib.app import serve

    seen = {}

    def call(cmd, env):
        folder = next(a.split("=", 1)[1] for a in cmd if a.startswith("--Voila.config_file_"))
        seen.update(cmd=cmd, config=json.loads((Path(folder) / "voila.json").read_text()))
        return 0

    monkeypatch.setattr(serve.subprocess, "call", call)
    args = ["--port", "8872", "--ip", "0.0.0.0", "--allow-host", "foram.lab.example"]
    assert serve.main(args) == 0
    assert "--Voila.ip=0.0.0.0" in seen["cmd"]
    names = seen["config"]["Voila"]["tornado_settings"]["local_hostnames"]
    assert names == ["localhost", "foram.lab.example"]
    err = capsys.readouterr().err
    assert "listening on 0.0.0.0" in err and "foram.lab.example" in err and "no login" in err
    assert not Path(seen["cmd"][-1].split("=", 1)[1]).exists()  # removed after the server
    assert serve.main(["--port", "8872", "--allow-host", "10.1.2.3"]) == 2
    assert "accepted only for loopback" in capsys.readouterr().err


def test_serving_by_default_reads_the_repositorys_config(monkeypatch, capsys):
    from foramlib.app import serve

    seen = {}
    monkeypatch.setattr(serve.subprocess, "call", lambda cmd, env: seen.update(cmd=cmd) or 0)
    assert serve.main(["--port", "8873"]) == 0
    assert not any("config_file_paths" in a for a in seen["cmd"])
    assert "--Voila.ip=127.0.0.1" in seen["cmd"] and capsys.readouterr().err == ""


def test_serving_outside_the_repository_root_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    from foramlib.app import serve

    monkeypatch.chdir(tmp_path)
    assert serve.main(["--port", "8866"]) == 2
    assert "run this from the repository root" in capsys.readouterr().err


def test_scan_box_says_when_a_scan_is_not_a_foraminifer():
    from foramlib.inference import scan

    ranking = scan.rank_genera(np.array([[0.9, 0.1]]), ["A", "B"])

    def answer(passed):
        meta = {"n_sections": 10, "section_check": {"passed": passed, "sections": 10, "keep": 0.97}}
        return scan.ScanAnswer(
            "rock.nii.gz", ranking, True, None, pd.DataFrame(), np.zeros((1, 2)),
            np.zeros((1, 4, 4), np.uint8), meta,
        )  # fmt: skip

    box = render.scan_uncertain_html(answer(2))
    assert "foram-not-section-box" in box and "only 2 of its 10 sections" in box
    box = render.scan_uncertain_html(answer(9))  # most pass: the usual uncertainty box
    assert "foram-not-section-box" not in box and "Uncertain result" in box


def test_gradcam_picture_has_its_colour_scale():
    import cv2

    img = np.zeros((48, 48), np.uint8)
    img[10:38, 12:36] = 180
    heat = np.zeros((6, 6), np.float32)
    heat[2:4, 2:4] = 1.0
    png = render.gradcam_png(img, heat)
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[1] == 288
    right = picture[:, int(0.8 * picture.shape[1]) :]  # the colour bar: red to blue
    hues = cv2.cvtColor(right, cv2.COLOR_BGR2HSV)
    saturated = hues[..., 1] > 150
    assert saturated.sum() > 500  # a saturated colour bar, not just grey


def test_match_table_speaks_plainly():
    from foramlib.matching.search import Match

    scores = dict(combined=0.91, dice=0.95, ncc=0.8, texture=0.7, ssim=0.6, descriptor=0.5)
    match = Match("S1", "Alpha", (0.6, 0.0, 0.8), -5.14, 30.0, scores, np.zeros((8, 8)))
    table = render.matches_html(np.zeros((8, 8)), [match])
    for jargon in (">Dice<", ">NCC<", ">SSIM<", ">Descriptor<", "n=(", " vox,"):
        assert jargon not in table
    for label in ("Outline overlap", "Grey pattern", "Wall pattern", "Overall"):
        assert f">{label}</th>" in table
    assert 'title="how much the two outlines overlap (Dice coefficient' in table
    assert "across axis 2 (tilted 37° from it), 5.1 voxels from the centre" in table
    assert 'title="normal (0.600, 0.000, 0.800), offset -5.14 voxels' in table
    assert "What the scores mean" in table and "<td>0.95</td>" in table
    assert table.count('class="foram-plane-icon"') == 1  # a picture of the plane per row


@pytest.mark.parametrize(
    "normal, corners", [((0, 0, 1), 4), ((0, 2, 0), 4), ((1, 1, 0), 4), ((1, -1, 0), 4),
                        ((1, 1, 1), 6), ((0.6, 0.0, 0.8), 4), ((1, 2, 2.5), 6), ((1, 2, 3), 4)],
)  # fmt: skip
def test_plane_polygon_is_the_cut_through_the_cube(normal, corners):
    poly = render.plane_polygon(normal)
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    assert poly.shape == (corners, 3)
    np.testing.assert_allclose(poly @ n, 0, atol=1e-9)  # on the plane
    assert np.abs(poly).max() == pytest.approx(1.0)  # on the cube's surface
    # in order round a convex polygon: every turn has the same sense
    turns = [np.cross(poly[i] - poly[i - 1], poly[(i + 1) % corners] - poly[i]) @ n
             for i in range(corners)]  # fmt: skip
    assert all(t > 0 for t in turns) or all(t < 0 for t in turns)


@pytest.mark.parametrize("normal", [(0, 0, 0), (1, 0), (np.nan, 0, 1)])
def test_plane_polygon_rejects_bad_normals(normal):
    with pytest.raises(ValueError, match="normal must be 3 finite numbers"):
        render.plane_polygon(normal)


def test_plane_icon_shows_which_way_the_cut_runs():
    import cv2

    flat, upright, flipped = (render.plane_icon(n) for n in [(0, 0, 1), (1, 0, 0), (0, 0, -1)])
    assert flat.shape == (72, 72, 3) and flat.dtype == np.uint8
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)
    blue = (hsv[..., 0] > 95) & (hsv[..., 0] < 115) & (hsv[..., 1] > 60)
    assert blue.sum() > 100  # the plane is drawn
    assert np.abs(flat.astype(int) - upright).sum() > 72 * 72  # another plane, another picture
    assert not np.array_equal(flat, flipped)  # the normal's arrow turns round
    with pytest.raises(ValueError, match="side must be an integer >= 24"):
        render.plane_icon((0, 0, 1), side=8)
