"""Curation: the taxon filter counts specimens, and every bad volume is reported."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from foramlib.dataset import curation
from foramlib.io.volumes import VolumeError, read_manifest, write_nifti


def _manifest(rows):
    return pd.DataFrame(rows, columns=["file", "specimen_id", "species"])


def test_threshold_counts_distinct_specimens_not_files():
    m = _manifest(
        [
            ("a1", "A1", "Alpha"),
            ("a2", "A2", "Alpha"),
            ("a3", "A3", "Alpha"),
            ("b1", "B1", "Beta"),
            ("b1r", "B1", "Beta"),
            ("b1rr", "B1", "Beta"),
            ("b2", "B2", "Beta"),
        ]
    )
    curated, taxa = curation.curate(m, min_models=3)
    assert set(curated["species"]) == {"Alpha"}
    beta = taxa.set_index("species").loc["Beta"]
    assert (beta["n_volumes"], beta["n_specimens"], beta["repeat_scans"]) == (4, 2, 2)
    assert not beta["kept"]


def test_taxa_table_orders_kept_first_then_by_specimens():
    m = _manifest(
        [("x", "X1", "Small")]
        + [(f"b{i}", f"B{i}", "Big") for i in range(3)]
        + [(f"m{i}", f"M{i}", "Mid") for i in range(2)]
    )
    _, taxa = curation.curate(m, min_models=2)
    assert taxa["species"].tolist() == ["Big", "Mid", "Small"]
    assert taxa["kept"].tolist() == [True, True, False]


def test_no_taxon_kept_is_a_clear_error():
    m = _manifest([("a", "A", "Alpha"), ("b", "B", "Beta")])
    with pytest.raises(
        curation.CurationError, match=r"no taxon has >= 4 distinct specimens.*'Alpha' with 1"
    ):
        curation.curate(m, min_models=4)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_min_models_is_validated(bad):
    with pytest.raises(ValueError, match=r"min_models must be an integer >= 1, got"):
        curation.summarize_taxa(_manifest([("a", "A", "Alpha")]), bad)


def test_tiny_collection_curates_to_its_four_genera(tiny_collection):
    listed = read_manifest(tiny_collection / "manifest.csv")
    checks = curation.inspect_volumes(listed)
    assert len(checks) == 14 and (checks["max"] > checks["min"]).all()
    curated, taxa = curation.curate(listed, min_models=3)
    assert sorted(curated["species"].unique()) == [
        "Alveolina",
        "Baculogypsina",
        "Chrysalidina",
        "Orbitoides",
    ]
    assert "Dictyoconus" not in set(curated["species"])
    examples = curation.one_scan_per_taxon(curated, taxa)
    assert examples["species"].tolist() == taxa.loc[taxa["kept"], "species"].tolist()


def test_inspect_volumes_reports_every_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    write_nifti(tmp_path / "good.nii.gz", rng.random((8, 8, 8)), 5.0)
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a volume at all")
    write_nifti(tmp_path / "flat.nii", np.ones((8, 8, 8)), 5.0)
    m = pd.DataFrame(
        {
            "file": ["good.nii.gz", "corrupt.nii.gz", "flat.nii"],
            "specimen_id": ["G", "C", "F"],
            "species": ["S"] * 3,
        }
    )
    m["path"] = [str(tmp_path / f) for f in m["file"]]
    with pytest.raises(VolumeError) as err:
        curation.inspect_volumes(m)
    msg = str(err.value)
    assert "2 of 3 volume(s) cannot be used" in msg
    assert "corrupt.nii.gz" in msg and "flat.nii" in msg and "good.nii.gz" not in msg


def _collection(tmp_path, rows, volumes):
    """A manifest of `rows` (file, specimen, species) and the `volumes` it names."""
    for name, arr in volumes.items():
        if arr is None:
            (tmp_path / name).write_bytes(b"not a volume at all")
        else:
            write_nifti(tmp_path / name, arr, 5.0)
    lines = ["file,specimen_id,species"] + [",".join(r) for r in rows]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "manifest.csv"


def test_manifest_and_volume_problems_are_reported_together(tmp_path):
    rng = np.random.default_rng(0)
    manifest = _collection(
        tmp_path,
        [("good.nii.gz", "G", "S"), ("gone.nii.gz", "M", "S"), ("corrupt.nii.gz", "C", "S")],
        {"good.nii.gz": rng.random((9, 9, 9)), "corrupt.nii.gz": None},
    )
    with pytest.raises(curation.CollectionError) as err:
        curation.check_collection(manifest)
    exc = err.value
    assert len(exc.manifest_problems) == 1 and "file not found: 'gone.nii.gz'" in str(exc)
    assert len(exc.volume_problems) == 1 and "corrupt.nii.gz: cannot be read" in str(exc)
    assert "has 2 problem(s)" in str(exc) and "(1 of 2 read)" in str(exc)
    assert pickle.loads(pickle.dumps(exc)).volume_problems == exc.volume_problems


def test_a_manifest_that_cannot_be_read_is_reported_without_volume_checks(tmp_path):
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(curation.CollectionError, match="the file is empty") as err:
        curation.check_collection(tmp_path / "manifest.csv")
    assert err.value.volume_problems == []


@pytest.mark.parametrize("shape", [(7, 20, 20), (20, 20, 3)])
def test_a_volume_thinner_than_the_index_needs_is_refused_at_curation(tmp_path, shape):
    rng = np.random.default_rng(1)
    manifest = _collection(
        tmp_path,
        [("thin.nii.gz", "T", "S"), ("ok.nii.gz", "O", "S")],
        {"thin.nii.gz": rng.random(shape), "ok.nii.gz": rng.random((9, 9, 9))},
    )
    with pytest.raises(curation.CollectionError, match=r"thin\.nii\.gz: shape .* under 8 voxels"):
        curation.check_collection(manifest)


def test_a_clean_collection_passes_with_its_checks(tmp_path):
    rng = np.random.default_rng(2)
    manifest = _collection(
        tmp_path,
        [("a.nii.gz", "A", "S"), ("b.nii.gz", "B", "S")],
        {"a.nii.gz": rng.random((9, 9, 9)), "b.nii.gz": rng.random((10, 9, 8))},
    )
    listed, checks = curation.check_collection(manifest)
    assert listed["file"].tolist() == ["a.nii.gz", "b.nii.gz"]
    assert checks["shape"].tolist() == ["9x9x9", "10x9x8"]


def test_a_large_volume_is_checked_binned_as_the_stages_read_it(tmp_path):
    rng = np.random.default_rng(3)
    manifest = _collection(
        tmp_path,
        [("big.nii.gz", "B", "S"), ("small.nii.gz", "A", "S")],
        {"big.nii.gz": rng.random((40, 36, 32)), "small.nii.gz": rng.random((16, 16, 16))},
    )
    _, checks = curation.check_collection(manifest, max_side=16)
    assert checks["shape"].tolist() == ["20x18x16", "16x16x16"]  # the big one by 2
    assert checks["voxel_size_um"].tolist() == [10.0, 5.0]
    # binning does not hide a volume too thin for the stages
    (tmp_path / "other").mkdir()
    manifest = _collection(
        tmp_path / "other", [("flat.nii.gz", "F", "S")], {"flat.nii.gz": rng.random((64, 64, 12))}
    )
    with pytest.raises(curation.CollectionError, match=r"flat\.nii\.gz: shape \(16, 16, 3\)"):
        curation.check_collection(manifest, max_side=16)
