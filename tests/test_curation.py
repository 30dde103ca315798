"""Curation: the taxon filter counts specimens, and every bad volume is reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from foramlib import curation
from foramlib.volumes import VolumeError, read_manifest, write_nifti


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
