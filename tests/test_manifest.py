"""Manifest validation (foramlib.io.volumes.read_manifest)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from foramlib.io.volumes import (
    MANIFEST_REQUIRED,
    ManifestError,
    ManifestWarning,
    read_manifest,
)

HEADER = "file,specimen_id,species,voxel_size_um,source,notes\n"


def collection(tmp_path, rows: str, files=("a.nii.gz", "b.nii", "c.tif"), header=HEADER):
    """Write a manifest with `rows` under `header` and touch `files` next to it."""
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "manifest.csv"
    path.write_text(header + rows, encoding="utf-8")
    return path


def read_quietly(*args, **kwargs):
    """read_manifest, failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_manifest(*args, **kwargs)


def test_manifest_required_columns():
    assert MANIFEST_REQUIRED == ("file", "specimen_id", "species")


def test_valid_manifest_is_read_with_paths_and_string_ids(tmp_path):
    rows = (
        "a.nii.gz, 007 ,Chrysalidina,5.5,virtual,\n"
        "b.nii,007,Chrysalidina,,virtual,repeat scan\n"
        "c.tif,12,Alveolina,2,real, NA \n"
    )
    df = read_quietly(collection(tmp_path, rows))
    assert df["specimen_id"].tolist() == ["007", "007", "12"]
    assert df["species"].tolist() == ["Chrysalidina", "Chrysalidina", "Alveolina"]
    assert df["notes"].tolist() == ["", "repeat scan", "NA"]
    assert df["path"].tolist() == [str(tmp_path / f) for f in ("a.nii.gz", "b.nii", "c.tif")]
    np.testing.assert_array_equal(df["voxel_size_um"], [5.5, np.nan, 2.0])
    assert df["voxel_size_um"].dtype == np.float64


def test_optional_columns_are_added_when_absent(tmp_path):
    path = collection(
        tmp_path, "a.nii.gz,S1,Alveolina\n", files=["a.nii.gz"], header="file,specimen_id,species\n"
    )
    df = read_quietly(path)
    assert np.isnan(df.loc[0, "voxel_size_um"])
    assert df.loc[0, "source"] == "" and df.loc[0, "notes"] == ""


def test_files_resolve_against_data_dir_and_absolute_paths(tmp_path):
    data = tmp_path / "scans"
    data.mkdir()
    (data / "a.nii.gz").write_bytes(b"")
    (tmp_path / "elsewhere.nii").write_bytes(b"")
    rows = f"a.nii.gz,S1,Alveolina,,,\n{tmp_path / 'elsewhere.nii'},S2,Alveolina,,,\n"
    manifest = tmp_path / "meta" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(HEADER + rows)
    df = read_quietly(manifest, data_dir=data)
    assert df["path"].tolist() == [str(data / "a.nii.gz"), str(tmp_path / "elsewhere.nii")]


def test_tiff_folder_entry_is_accepted_and_its_slices_are_not_unlisted(tmp_path):
    path = collection(
        tmp_path, "spec1,S1,Alveolina,3,,\n", files=["spec1/s_1.tif", "spec1/s_2.tif"]
    )
    assert read_quietly(path)["path"].tolist() == [str(tmp_path / "spec1")]


def test_check_files_false_skips_existence(tmp_path):
    path = collection(tmp_path, "nothere.nii.gz,S1,Alveolina,,,\n", files=[])
    df = read_quietly(path, check_files=False)
    assert df["path"].tolist() == [str(tmp_path / "nothere.nii.gz")]


@pytest.mark.parametrize(
    ("rows", "header", "match"),
    [
        ("a.nii.gz,S1\n", "file,specimen_id\n", r"missing required column\(s\) 'species' \(found"),
        ("", HEADER, "has no data rows"),
        ("a.nii.gz,S1, ,,,\n", HEADER, r"empty 'species' cell on line\(s\) 2"),
        (
            "a.nii.gz,S1,Alveolina,,,\nb.nii,,Alveolina,,,\n",
            HEADER,
            "empty 'specimen_id' cell on line",
        ),
        (",S1,Alveolina,,,\n", HEADER, r"empty 'file' cell on line\(s\) 2"),
        (
            "a.nii.gz,S1,Alveolina,,,\na.nii.gz,S1,Alveolina,,,\n",
            HEADER,
            "duplicate rows: file 'a.nii.gz' on lines 2, 3",
        ),
        (
            "a.nii.gz,S1,Alveolina,,,\n./a.nii.gz,S2,Alveolina,,,\n",
            HEADER,
            "listed more than once: file 'a.nii.gz' on lines 2, 3",
        ),
        (
            "a.nii.gz,S1,Alveolina,,,\nb.nii,S1,Borelis,,,\n",
            HEADER,
            r"specimen 'S1' is listed under different species: "
            r"'Alveolina' \(line 2\), 'Borelis' \(line 3\)",
        ),
        ("a.nii.gz,S1,Alveolina,five,,\n", HEADER, "line 2: voxel_size_um 'five' is not a number"),
        ("a.nii.gz,S1,Alveolina,-2,,\n", HEADER, "line 2: voxel_size_um '-2' must be positive"),
        ("a.nii.gz,S1,Alveolina,0,,\n", HEADER, "line 2: voxel_size_um '0' must be positive"),
        (
            "a.nii.gz,S1,Alveolina,inf,,\n",
            HEADER,
            "line 2: voxel_size_um 'inf' must be positive and finite",
        ),
        ("gone.nii.gz,S1,Alveolina,,,\n", HEADER, "line 2: file not found: 'gone.nii.gz'"),
        (
            "scan.png,S1,Alveolina,,,\n",
            HEADER,
            r"line 2: unsupported file type 'scan.png' \(expected .*\.tiff, a Zarr store or",
        ),
        # a Zarr store that is not there is missing, not of an unknown type
        ("scan.zarr,S1,Alveolina,,,\n", HEADER, "line 2: file not found: 'scan.zarr'"),
        ("scan.ome.zarr/,S1,Alveolina,,,\n", HEADER, "line 2: file not found: 'scan.ome.zarr/'"),
    ],
)
def test_each_problem_is_reported(tmp_path, rows, header, match):
    path = collection(tmp_path, rows, files=["a.nii.gz", "b.nii", "scan.png"], header=header)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(path)
    assert len(info.value.problems) == 1, info.value.problems
    assert str(path) in str(info.value)


def test_all_problems_are_reported_at_once(tmp_path):
    rows = (
        "a.nii.gz,S1,Alveolina,5,,\n"  # line 2: fine on its own
        "b.nii,S1,Borelis,abc,,\n"  # line 3: conflicting species, bad voxel size
        "gone.nii,S2,,,,\n"  # line 4: missing file, empty species
        "x.jpg,S3,Alveolina,,,\n"  # line 5: unsupported type
        "a.nii.gz,S1,Alveolina,5,,\n"  # line 6: duplicate of line 2
    )
    path = collection(tmp_path, rows, files=["a.nii.gz", "b.nii", "x.jpg"])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    problems = info.value.problems
    expected = [
        "empty 'species' cell on line(s) 4",
        "line 3: voxel_size_um 'abc' is not a number",
        "line 4: file not found: 'gone.nii'",
        "line 5: unsupported file type 'x.jpg'",
        "duplicate rows: file 'a.nii.gz' on lines 2, 6",
        "specimen 'S1' is listed under different species",
    ]
    assert len(problems) == len(expected), problems
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    message = str(info.value)
    assert message.startswith(f"manifest {path} has 6 problem(s):")
    assert all(p in message for p in problems) and message.count("\n") == 6


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = collection(tmp_path, "a.nii.gz,S1,Alveolina,,,\n\n,,,,,\nb.nii,S2,,,,\n")
    with pytest.raises(ManifestError, match=r"empty 'species' cell on line\(s\) 5$"):
        read_manifest(path)


def test_missing_manifest_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found: .*nope.csv"):
        read_manifest(tmp_path / "nope.csv")


def test_empty_manifest_file_is_a_manifest_error(tmp_path):
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(ManifestError, match=r"the file is empty \(no header row\)"):
        read_manifest(tmp_path / "m.csv")


def test_unreadable_manifest_is_a_manifest_error(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"file,specimen_id,species\n\xff\xfe,\x00\x81,x\n")
    with pytest.raises(ManifestError, match="cannot be read as a CSV"):
        read_manifest(tmp_path / "m.csv")


def test_missing_data_dir_is_reported(tmp_path):
    path = collection(tmp_path, "a.nii.gz,S1,Alveolina,,,\n", files=[])
    with pytest.raises(ManifestError, match="data_dir not found") as info:
        read_manifest(path, data_dir=tmp_path / "absent")
    assert any("file not found" in p for p in info.value.problems)


def test_unlisted_volume_files_give_one_warning(tmp_path):
    files = ["a.nii.gz", "extra.nii", "sub/more.TIFF", "readme.txt", ".partial.nii.gz"]
    path = collection(tmp_path, "a.nii.gz,S1,Alveolina,,,\n", files=files)
    with pytest.warns(ManifestWarning) as record:
        df = read_manifest(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 volume file(s)" in message and "manifest.csv" in message
    assert "extra.nii" in message and "sub/more.TIFF" in message
    assert "readme.txt" not in message and "partial" not in message
    assert "a.nii.gz," not in message
    assert df["file"].tolist() == ["a.nii.gz"]


def test_no_warning_when_everything_is_listed(tmp_path):
    rows = "a.nii.gz,S1,Alveolina,,,\nb.nii,S2,Borelis,,,\n"
    path = collection(tmp_path, rows, files=["a.nii.gz", "b.nii", "notes.txt"])
    assert len(read_quietly(path)) == 2


def test_manifest_error_keeps_problems_through_pickle():
    err = ManifestError(["one", "two"], "m.csv")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == ["one", "two"] and str(again) == str(err)
