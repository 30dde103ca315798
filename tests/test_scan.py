"""foramlib.inference.scan and `foram classify`: a whole scan, many sections, one ranked answer."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from test_classify import NAMES, SIZE, disc_image, write_workspace

from foramlib.dataset.slicing import SlicingConfig, slice_array
from foramlib.evaluation.ensemble import EnsembleSpec
from foramlib.evaluation.metrics import Predictions, specimen_votes
from foramlib.inference import classify, scan
from foramlib.inference.calibration import Calibration, calibrate_threshold
from foramlib.io import uploads
from foramlib.io.volumes import write_nifti
from foramlib.tools.cli import main


def shell(shape=(40, 40, 40), seed=0):
    """A hollow ellipsoid with a dense inner septum: a fossil-like blob on a dim matrix."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = ((x - c[0]) / 15) ** 2 + ((y - c[1]) / 12) ** 2 + ((z - c[2]) / 10) ** 2
    vol = 0.1 + 0.02 * rng.standard_normal(shape)
    vol[(r < 1.0) & (r > 0.6)] = 0.8
    vol[(r < 0.6) & (np.abs(x - c[0]) < 1.5)] = 0.7
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("scan-ws"))


@pytest.fixture(scope="module")
def classifier(workspace):
    return classify.Classifier.from_workspace(workspace)


def with_specimens(workspace, per_class=3):
    """Give the validation slices specimen ids (``per_class`` specimens per genus)."""
    for m in ("m1", "m2"):
        path = workspace / "models" / m / "predictions_val.csv"
        frame = pd.read_csv(path)
        frame["specimen_id"] = frame["true"] + "-" + (frame.index % per_class).astype(str)
        frame.to_csv(path, index=False)
    return frame["specimen_id"].tolist()


# --------------------------------------------------------------------------- combining


def test_rank_genera_is_the_evaluate_stages_specimen_vote():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 25)
    ranking = scan.rank_genera(probs, NAMES)
    votes = specimen_votes(
        Predictions.from_arrays("m", probs, [0] * 25, NAMES, specimen_ids=["s"] * 25)
    )
    assert ranking[0].genus == votes.loc[0, "predicted"]
    assert ranking[0].probability == pytest.approx(votes.loc[0, "confidence"])
    assert [g.probability for g in ranking] == sorted(probs.mean(0), reverse=True)
    share = {g.genus: g.vote_share for g in ranking}
    top1 = np.bincount(probs.argmax(1), minlength=3) / 25
    assert [share[n] for n in NAMES] == pytest.approx(top1)
    sd = {g.genus: g.sd for g in ranking}
    assert [sd[n] for n in NAMES] == pytest.approx(probs.std(0, ddof=1))


def test_rank_genera_one_section_has_no_spread():
    (first, *_) = scan.rank_genera([[0.2, 0.5, 0.3]], NAMES)
    assert (first.genus, first.sd, first.vote_share) == ("Beta", 0.0, 1.0)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.zeros((0, 3)), r"shape \(n_sections >= 1, 3\)"),
        (np.ones((2, 4)) / 4, r"got \(2, 4\)"),
        (np.full((2, 3), np.nan), "NaN"),
    ],
)
def test_rank_genera_rejects_bad_input(probs, match):
    with pytest.raises(scan.ScanError, match=match):
        scan.rank_genera(probs, NAMES)


def test_specimen_calibration_votes_validation_specimens(tmp_path):
    ws = write_workspace(tmp_path)
    spec = EnsembleSpec.load(ws / "results" / "ensemble" / "Top-2.json")
    with pytest.raises(classify.ArtefactError, match="specimen_id"):
        scan.calibrate_specimens(spec, ws / "models")
    ids = with_specimens(ws)
    cal = scan.calibrate_specimens(spec, ws / "models", target_precision=0.5, min_support=2)
    assert cal.n_val == len(set(ids)) == 9  # specimens, not slices
    from foramlib.evaluation.metrics import load_model_predictions

    val = {m: load_model_predictions(ws / "models" / m, "val") for m in spec.members}
    votes = specimen_votes(
        Predictions.from_arrays("v", spec.apply(val), val["m1"].y_true, NAMES, specimen_ids=ids)
    )
    expected = calibrate_threshold(
        votes["confidence"], votes["true"] == votes["predicted"], target_precision=0.5,
        min_support=2,
    )  # fmt: skip
    assert cal == expected


# --------------------------------------------------------------------------- reading


def test_load_scan_reads_every_volume_format(tmp_path):
    vol = shell()
    nifti = write_nifti(tmp_path / "s.nii.gz", vol * 1000, (5.0, 5.0, 5.0))
    data, name, notes = scan.load_scan(nifti)
    assert name == "s.nii.gz" and data.shape == vol.shape and notes == {}
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, (vol.transpose(2, 1, 0) * 1000).astype(np.uint16))
    data, _, notes = scan.load_scan(stack)
    assert data.shape == vol.shape and notes == {"assumed_isotropic": True}
    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(vol.shape[2]):
        tifffile.imwrite(folder / f"z{k}.tif", (vol[:, :, k].T * 1000).astype(np.uint16))
    data, name, notes = scan.load_scan(folder, voxel_size_um=4.0)
    assert name == "slices" and data.shape == vol.shape and notes == {}
    assert scan.load_scan(folder)[2] == {"assumed_isotropic": True}  # no size anywhere


def test_load_scan_takes_an_ome_zarrs_stated_voxel_size_and_assumes_none_for_a_plain_array(
    tmp_path,
):
    import zarr

    vol = shell((40, 40, 20))  # (x, y, z) with 10 µm steps along z, 5 µm across
    root = zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=vol.shape[::-1], dtype="float32")[...] = vol.T
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [10, 5, 5]}]}
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [level]}]
    data, name, notes = scan.load_scan(tmp_path / "s.ome.zarr")
    assert data.shape == (40, 40, 40) and notes == {}  # resampled by its own metadata
    zarr.save_array(str(tmp_path / "plain.zarr"), vol.T)
    data, _, notes = scan.load_scan(tmp_path / "plain.zarr")
    assert data.shape == vol.shape and notes == {"assumed_isotropic": True}


def ome_pyramid(path, vol):
    """A two-level OME-Zarr (5 µm, then 10 µm voxels) of an ``(x, y, z)`` volume."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for k, data in enumerate((vol.T, vol.T[::2, ::2, ::2])):
        root.create_array(str(k), shape=data.shape, dtype="float32")[...] = data
        s = 5.0 * 2**k
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [s, s, s]}]})  # fmt: skip
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


def test_load_scan_reads_a_big_ome_zarr_at_a_coarser_pyramid_level(tmp_path, monkeypatch):
    path = ome_pyramid(tmp_path / "big.ome.zarr", shell((40, 40, 40)))
    data, _, notes = scan.load_scan(path)
    assert data.shape == (40, 40, 40) and notes == {}  # 40 < SCAN_READ_SIDE: the finest
    monkeypatch.setattr(scan, "SCAN_READ_SIDE", 20)
    data, _, notes = scan.load_scan(path)
    assert data.shape == (20, 20, 20) and notes == {"read_level": 1}


def test_load_scan_bins_a_big_scan_of_another_format_as_it_reads_it(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "big.nii.gz", shell((40, 40, 40)), 5.0)
    monkeypatch.setattr(scan, "SCAN_READ_SIDE", 20)
    data, _, notes = scan.load_scan(path)
    assert data.shape == (20, 20, 20) and notes == {"binned": 2}


def test_load_scan_says_an_upload_was_binned_as_it_was_read(tmp_path, monkeypatch):
    """The dashboard's upload of a big scan says what `foram classify` of the file says."""
    path = write_nifti(tmp_path / "big.nii.gz", shell((40, 40, 40)), 5.0)
    monkeypatch.setattr(scan, "SCAN_READ_SIDE", 20)
    from_file = scan.load_scan(path)
    upload = uploads.decode_upload("big.nii.gz", path.read_bytes(), volume_max_side=20)
    data, name, notes = scan.load_scan(upload)
    assert name == "big.nii.gz" and notes == from_file[2] == {"binned": 2}
    np.testing.assert_allclose(data, from_file[0], rtol=1e-6)


def test_load_scan_takes_a_skyscan_folders_voxel_size_and_keeps_a_loaded_scan(tmp_path):
    vol = shell()
    folder = tmp_path / "fossil_Rec"
    folder.mkdir()
    for k in range(vol.shape[2]):
        cv2.imwrite(
            str(folder / f"fossil_rec{k:08d}.png"), (vol[:, :, k].T * 1000).astype(np.uint16)
        )
    cv2.imwrite(str(folder / "fossil__rec_spr.png"), np.zeros((5, 5), np.uint8))  # preview
    (folder / "fossil_rec.log").write_text(
        "[Reconstruction]\nPixel Size (um)=6.5\n[File name convention]\n"
        "Filename Prefix=fossil_rec\n"
    )
    data, name, notes = scan.load_scan(folder)
    assert name == "fossil_Rec" and data.shape == vol.shape and notes == {}  # not assumed
    loaded = scan.LoadedScan(data, name, notes)
    again = scan.load_scan(loaded)
    assert again[0] is data and again[1:] == (name, notes)


def test_load_scan_resamples_anisotropic_voxels(tmp_path):
    path = write_nifti(tmp_path / "a.nii", shell((40, 40, 20)) * 1000, (5.0, 5.0, 10.0))
    data, _, notes = scan.load_scan(path)
    assert data.shape == (40, 40, 40) and notes == {}
    upload = uploads.VolumeUpload("u.nii", shell((40, 40, 20)), 5.0, (5.0, 5.0, 10.0))
    data, name, notes = scan.load_scan(upload)
    assert name == "u.nii" and data.shape == (40, 40, 40)
    assert notes == {"resampled_from_um": [5.0, 5.0, 10.0]}
    stack = uploads.VolumeUpload("s.tif", shell((40, 40, 20)))  # no voxel size known
    assert scan.load_scan(stack)[2] == {"assumed_isotropic": True}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing.nii.gz", r"missing\.nii\.gz: file not found"),
        (lambda p: np.zeros((8, 8)), r"3-D volume, got shape \(8, 8\)"),
        (lambda p: (p / "bad.nii").write_bytes(b"nope") and p / "bad.nii", r"bad\.nii"),
    ],
)
def test_load_scan_names_what_is_wrong(tmp_path, make, match):
    with pytest.raises(scan.ScanError, match=match):
        scan.load_scan(make(tmp_path))


def test_slicing_defaults_follow_the_slice_store(tmp_path):
    config, source = scan.slicing_defaults(tmp_path)
    assert source == "built-in defaults" and config == SlicingConfig()
    (tmp_path / "params.yaml").write_text("slice: {jitter_deg: 2, size: 48}\n")
    config, source = scan.slicing_defaults(tmp_path)
    assert source == "params.yaml slice.*"
    assert config.jitter_deg == 2 and config.preprocess.size == 48
    store = tmp_path / "data" / "slices"
    store.mkdir(parents=True)
    (store / "slicing.json").write_text(
        json.dumps({"preprocess": {"size": 40}, "smooth_sigma": 0.0, "offsets_per_orientation": 2})
    )
    config, source = scan.slicing_defaults(tmp_path)
    assert source == "data/slices/slicing.json"
    assert (config.smooth_sigma, config.offsets_per_orientation) == (0.0, 2)
    assert config.preprocess.size == 40


# --------------------------------------------------------------------------- classifying


def test_classify_scan_uses_the_slicer_and_combines_sections(classifier):
    vol = shell()
    config = SlicingConfig(preprocess=classifier.preprocess, offsets_per_orientation=2)
    answer = scan.classify_scan(classifier, vol, n_sections=12, seed=3, slicing=config)
    images, rows, _ = slice_array(vol, 12, config, 3, name="array")
    np.testing.assert_array_equal(answer.images, images)  # the training slicer, same seed
    assert 0 < len(answer.images) <= 12
    expected = classifier.predict_many(images)
    np.testing.assert_allclose(answer.probabilities, expected)
    one = classifier.predict(images[0])
    assert expected[0] == pytest.approx([one.probabilities[n] for n in NAMES])
    assert answer.ranking == scan.rank_genera(expected, NAMES)
    assert answer.sections["top1"].tolist() == [NAMES[i] for i in expected.argmax(1)]
    assert answer.sections[["normal_x", "offset_vox"]].equals(rows[["normal_x", "offset_vox"]])
    assert answer.uncertain  # no calibration given: flagged, as an uncalibrated slice is
    assert answer.metadata["n_sections"] == len(images)
    summary = answer.as_dict(top=2)
    assert summary["genus"] == answer.genus and len(summary["ranking"]) == 2
    json.dumps(summary)


def test_classify_scan_applies_the_specimen_threshold(classifier):
    vol = shell()
    answer = scan.classify_scan(classifier, vol, n_sections=8)
    sure = Calibration(0.0, 0.8, 0.9, 1.0, 10, True, "rule")
    never = Calibration(1.0, 0.8, 0.5, 0.0, 10, False, "rule")
    assert not scan.classify_scan(classifier, vol, n_sections=8, calibration=sure).uncertain
    assert scan.classify_scan(classifier, vol, n_sections=8, calibration=never).uncertain
    assert "UNCERTAIN: no specimen-level calibration" in scan.format_answer(answer)


def test_classify_scan_says_when_a_scan_is_not_a_foraminifer(classifier):
    import copy

    from skimage.data import binary_blobs

    from foramlib.inference.section_check import fit_section_check

    config = SlicingConfig(preprocess=classifier.preprocess, offsets_per_orientation=2)
    stacks = [slice_array(shell(seed=k), 40, config, k, name="s")[0] for k in range(4)]
    train, val = np.concatenate(stacks[:3]), stacks[3]
    checked = copy.copy(classifier)
    checked.section_check = fit_section_check(train, val, keep=0.9, components=1)
    fossil = scan.classify_scan(checked, shell(seed=9), n_sections=16, slicing=config)
    check = fossil.metadata["section_check"]
    assert check["sections"] == len(fossil.images) and check["keep"] == 0.9
    assert check["passed"] == int(fossil.sections["looks_like_section"].sum())
    assert not fossil.not_a_section and "NOT A FORAMINIFER" not in scan.format_answer(fossil)
    rock = binary_blobs(40, blob_size_fraction=0.1, n_dim=3, volume_fraction=0.3, rng=1)
    answer = scan.classify_scan(checked, rock.astype(np.float32), n_sections=16, slicing=config)
    assert answer.not_a_section
    assert "NOT A FORAMINIFER? only" in scan.format_answer(answer)
    assert json.loads(json.dumps(answer.as_dict()))["metadata"]["section_check"]["passed"] < 8
    # without a check in the workspace, nothing is claimed either way
    plain = scan.classify_scan(classifier, shell(seed=9), n_sections=8, slicing=config)
    assert plain.metadata["section_check"] is None and not plain.not_a_section


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_classify_scan_rejects_bad_section_counts(classifier, n):
    with pytest.raises(scan.ScanError, match="n_sections must be an integer >= 1"):
        scan.classify_scan(classifier, shell(), n_sections=n)


def test_classify_scan_of_a_blank_volume_says_so(classifier):
    with pytest.raises(scan.ScanError, match="blank|constant|no fossil"):
        scan.classify_scan(classifier, np.full((20, 20, 20), 0.3, np.float32))


def test_predict_many_rejects_non_slices(classifier):
    with pytest.raises(classify.ClassifyError, match="non-empty stack"):
        classifier.predict_many(np.zeros((0, SIZE, SIZE), np.uint8))
    with pytest.raises(classify.ClassifyError, match="float64"):
        classifier.predict_many(np.zeros((2, SIZE, SIZE)))


# --------------------------------------------------------------------------- CLI


def test_cli_says_which_pyramid_level_of_an_ome_zarr_it_read(workspace, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    path = ome_pyramid(tmp_path / "fossil.ome.zarr", shell((40, 40, 40)))
    monkeypatch.setattr(scan, "SCAN_READ_SIDE", 20)
    argv = ["classify", str(path), "--workspace", str(workspace), "--sections", "8"]
    assert main(argv) == 0
    assert "note: read at level 1 of the OME-Zarr pyramid" in capsys.readouterr().out


def test_cli_classifies_a_scan(workspace, tmp_path, capsys):
    n_specimens = len(set(with_specimens(workspace)))
    path = write_nifti(tmp_path / "fossil.nii.gz", shell() * 1000, 5.0)
    table = tmp_path / "sections.csv"
    argv = ["classify", str(path), "--workspace", str(workspace), "--sections", "8"]
    assert main([*argv, "--sections-csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fossil.nii.gz: ") and "top-1 share" in out
    frame = pd.read_csv(table)
    assert 0 < len(frame) <= 8 and [f"p_{n}" for n in NAMES] == list(frame.columns[-3:])
    assert main([*argv, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["genus"] in NAMES and answer["metadata"]["ensemble"] == "PatchEnsemble"
    assert answer["calibration"]["n_val"] == n_specimens  # validation specimens
    assert answer["metadata"]["slicing_source"] == "data/slices/slicing.json"


def test_cli_classifies_one_section_image(workspace, tmp_path, capsys):
    image = tmp_path / "section.png"
    cv2.imwrite(str(image), disc_image())
    assert main(["classify", str(image), "--workspace", str(workspace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["genus"] in NAMES and len(out["top5"]) == 3
    assert out["preprocessing"] == "preprocessed"


def test_cli_classifies_an_exported_stored_slice_as_it_is(workspace, tmp_path, capsys):
    from foramlib.inference.classify import Classifier

    classifier = Classifier.from_workspace(workspace)
    stored, _ = classifier.prepare(disc_image())
    image = tmp_path / "stored.png"
    cv2.imwrite(str(image), stored)
    assert main(["classify", str(image), "--workspace", str(workspace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preprocessing"] == "stored slice"
    expected = classifier.predict(stored)
    assert out["genus"] == expected.genus
    assert out["confidence"] == pytest.approx(expected.confidence, abs=1e-6)


def test_cli_says_when_an_image_is_not_a_foraminifer_section(tmp_path, capsys):
    from test_classify import _check_for

    ws = write_workspace(tmp_path / "ws")
    _check_for(SIZE).save(ws / classify.SECTION_CHECK)
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    assert main(["classify", str(noise), "--workspace", str(ws)]) == 0
    text = capsys.readouterr().out
    assert "NOT A FORAMINIFER SECTION?" in text and "do not trust them" in text
    assert main(["classify", str(noise), "--workspace", str(ws), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["section_check"]["looks_like_section"] is False
    disc = tmp_path / "disc.png"
    cv2.imwrite(str(disc), disc_image())
    assert main(["classify", str(disc), "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["section_check"]["reason"] == "ok"


def test_cli_without_a_section_check_reports_null(workspace, tmp_path, capsys):
    image = tmp_path / "section.png"
    cv2.imwrite(str(image), disc_image())
    assert main(["classify", str(image), "--workspace", str(workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["section_check"] is None


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("nothing.nii.gz", None, "nothing.nii.gz: no such file"),
        ("broken.nii.gz", b"\x1f\x8bnot gzip", r"broken\.nii\.gz"),
    ],
)
def test_cli_reports_bad_scans_in_one_line(workspace, tmp_path, capsys, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main(["classify", str(path), "--workspace", str(workspace)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foram classify: error:") and err.count("\n") == 1
    assert re.search(match, err)


def test_flag_votes_applies_the_rule_and_scores_accepted_votes():
    votes = pd.DataFrame(
        {
            "true": ["A", "B", "C", "A"],
            "predicted": ["A", "A", "C", "B"],
            "confidence": [0.9, 0.8, 0.5, 0.3],
        }
    )
    cal = Calibration(0.8, 0.8, 1.0, 0.5, 6, True, "rule")
    flagged, summary = scan.flag_votes(votes, cal)
    assert flagged["uncertain"].tolist() == [False, False, True, True]
    assert summary == dict(
        threshold=0.8, reached=True, specimens=4, uncertain=2, accepted=2, accepted_accuracy=0.5
    )
    unreached = Calibration(1.0, 0.8, 0.4, 0.0, 6, False, "rule")
    flagged, summary = scan.flag_votes(votes, unreached)
    assert flagged["uncertain"].all() and summary["accepted_accuracy"] is None
    with pytest.raises(scan.ScanError, match=r"lack column\(s\) \['confidence'\]"):
        scan.flag_votes(votes.drop(columns="confidence"), cal)
