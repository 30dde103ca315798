"""Reslicing along any plane, and the slice store built from a curated collection."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from foramlib.dataset import slicing
from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.dataset.slicing import STORE_RECORD, Plane, SlicingConfig, trained_slicing
from foramlib.io.volumes import read_manifest, write_nifti

RNG_NORMALS = np.random.default_rng(0).normal(size=(6, 3))


@pytest.mark.parametrize("normal", [(1, 0, 0), (0, 1, 0), (0, 0, 1), *RNG_NORMALS.tolist()])
@pytest.mark.parametrize("angle", [0.0, 37.0])
def test_plane_axes_are_orthonormal_and_right_handed(normal, angle):
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    u, v = slicing.plane_axes(normal, angle)
    basis = np.stack([u, v, n])
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.cross(u, v), n, atol=1e-12)


def test_in_plane_angle_rotates_the_frame():
    u0, v0 = slicing.plane_axes((0, 0, 1), 0.0)
    u90, v90 = slicing.plane_axes((0, 0, 1), 90.0)
    np.testing.assert_allclose(u90, v0, atol=1e-12)
    np.testing.assert_allclose(v90, -u0, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("offset", [-5.0, 0.0, 7.0])
def test_axis_planes_reproduce_array_slices(axis, offset):
    rng = np.random.default_rng(axis)
    vol = rng.random((21, 21, 21)).astype(np.float32)
    normal = np.eye(3)[axis]
    sec = slicing.extract_slice(vol, Plane(tuple(normal), offset, 0.0), size=21)
    expected = np.take(vol, 10 + int(offset), axis=axis)
    # the in-plane frame may be a transpose/flip of the array's: compare as sets of rows
    candidates = [
        expected,
        expected.T,
        expected[::-1],
        expected.T[::-1],
        expected[:, ::-1],
        expected.T[:, ::-1],
        expected[::-1, ::-1],
        expected.T[::-1, ::-1],
    ]
    assert min(np.abs(sec - c).max() for c in candidates) < 1e-5


def test_oblique_slice_of_a_linear_field_is_exact():
    shape = (24, 26, 28)
    a = np.array([0.5, -1.0, 2.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    vol = np.tensordot(a, grid, axes=1).astype(np.float32)
    plane = Plane((0.3, -0.5, 0.8), offset=2.5, angle=20.0)
    sec = slicing.extract_slice(vol, plane, size=9)
    u, v = slicing.plane_axes(plane.normal, plane.angle)
    centre = (np.asarray(shape) - 1) / 2 + plane.offset * np.asarray(plane.normal)
    t = np.arange(9) - 4.0
    expected = (a @ centre) + (a @ v) * t[:, None] + (a @ u) * t[None, :]
    np.testing.assert_allclose(sec, expected, atol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 6.0, 10.0])
def test_sections_of_a_sphere_have_the_expected_radius(offset):
    n = 49
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij")) - 24.0
    vol = (np.linalg.norm(grid, axis=0) < 15).astype(np.float32)
    normal = np.array([1.0, 2.0, 2.0]) / 3.0
    sec = slicing.extract_slice(vol, Plane(tuple(normal), offset, 13.0), size=n)
    radius = np.sqrt((sec > 0.5).sum() / np.pi)
    assert radius == pytest.approx(np.sqrt(15**2 - offset**2), abs=0.8)


def test_extract_slices_batches_match_single_calls():
    vol = np.random.default_rng(3).random((16, 16, 16)).astype(np.float32)
    planes = [Plane((1, 1, 0), 1.0, 10.0), Plane((0, 1, 3), -2.0, 200.0)]
    batch = slicing.extract_slices(vol, planes, size=12)
    for p, b in zip(planes, batch, strict=True):
        np.testing.assert_allclose(slicing.extract_slice(vol, p, size=12), b)


def test_outside_the_volume_takes_the_border_value():
    vol = np.full((10, 10, 10), 0.25, np.float32)
    vol[3:7, 3:7, 3:7] = 1.0
    sec = slicing.extract_slice(vol, Plane((0, 0, 1)), size=30)
    assert sec[0, 0] == pytest.approx(0.25)


def test_fibonacci_hemisphere_is_even():
    pts = slicing.fibonacci_hemisphere(200)
    assert (pts[:, 2] >= 0).all()
    cos = np.clip(pts @ pts.T, -1, 1)
    np.fill_diagonal(cos, -1)
    nearest = np.degrees(np.arccos(cos.max(axis=1)))
    # an even spread: every point has a neighbour, none is crowded or isolated
    assert nearest.min() > 4.0 and nearest.max() < 12.0
    assert pts[:, 2].mean() == pytest.approx(0.5, abs=0.02)  # uniform area in z


def test_sample_planes_counts_offsets_and_determinism():
    rng_pts = np.random.default_rng(0)
    pts = rng_pts.uniform(-5, 5, size=(500, 3)) * [1, 1, 3] + 20
    planes = slicing.sample_planes(pts, 10, 3, np.random.default_rng(1), centre=(20, 20, 20))
    again = slicing.sample_planes(pts, 10, 3, np.random.default_rng(1), centre=(20, 20, 20))
    assert planes == again and len(planes) == 30
    axial = planes[6:9]  # the third axis direction, jittered by a few degrees
    assert all(abs(p.normal[2]) > np.cos(np.deg2rad(10)) for p in axial)
    assert all(abs(p.offset) < 15.5 for p in axial)
    assert max(abs(p.offset) for p in axial) > 3  # the offsets spread over the extent
    with pytest.raises(ValueError, match="n_orientations and offsets_per_orientation"):
        slicing.sample_planes(pts, 0, 3, np.random.default_rng(1))


@pytest.mark.parametrize(
    "normal, match", [((0, 0, 0), "non-zero 3-vector"), ((1, 2), "non-zero 3-vector")]
)
def test_bad_planes_are_refused(normal, match):
    with pytest.raises(ValueError, match=match):
        Plane(normal)


def test_slices_per_volume_shares_the_taxon_budget():
    m = pd.DataFrame({"file": list("abcde"), "species": ["A", "A", "A", "A", "B"]})
    assert slicing.slices_per_volume(m, 100).tolist() == [25, 25, 25, 25, 100]


CONFIG = slicing.SlicingConfig(
    slices_per_taxon=24, offsets_per_orientation=3, preprocess=PreprocessConfig(size=32)
)


@pytest.fixture(scope="module")
def store(tiny_collection, tmp_path_factory):
    manifest = read_manifest(tiny_collection / "manifest.csv")
    out = tmp_path_factory.mktemp("slices") / "store"
    index = slicing.build_slice_store(manifest, out, CONFIG, seed=1, progress=None)
    return manifest, out, index


def test_slice_store_holds_every_volume_with_provenance(store):
    manifest, out, index = store
    assert set(index["file"]) == set(manifest["file"])
    assert list(index.columns) == list(slicing.INDEX_COLUMNS)
    assert index["slice_id"].is_unique
    normals = index[["normal_x", "normal_y", "normal_z"]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-9)
    assert (index["fossil_fraction"] >= CONFIG.preprocess.min_fraction).all()
    # taxa with fewer scans get more slices per scan
    per_file = index.groupby("file").size()
    assert per_file["V-DICT-01.nii.gz"] > per_file["V-CHRY-01.nii.gz"]
    meta = json.loads((out / "slicing.json").read_text())
    assert meta["preprocess"]["version"] >= 1 and meta["n_slices"] == len(index)


def test_slice_arrays_are_uint8_memory_maps_matching_the_index(store):
    _, out, index = store
    index2, arrays = slicing.load_slices(out)
    assert len(index2) == len(index)
    for name, rows in index.groupby("array")["row"]:
        arr = arrays[name]
        assert isinstance(arr, np.memmap) and arr.dtype == np.uint8
        assert arr.shape[1:] == (32, 32) and len(arr) == rows.max() + 1
        assert arr.max() > 100  # real content, not blank frames


def test_same_seed_same_store(store, tmp_path):
    manifest, out, index = store
    again = slicing.build_slice_store(
        manifest, tmp_path / "again", CONFIG, seed=1, n_jobs=2, progress=None
    )
    pd.testing.assert_frame_equal(index, again)
    for name in index["array"].unique():
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_blank_volume_and_empty_specimen_are_named_and_nothing_is_written(tmp_path):
    rng = np.random.default_rng(0)
    good = np.zeros((24, 24, 24), np.float32)
    good[6:18, 6:18, 8:16] = 1.0
    write_nifti(tmp_path / "good.nii.gz", good + rng.normal(0, 0.01, good.shape), 5.0)
    write_nifti(tmp_path / "blank.nii.gz", rng.normal(0, 0.01, good.shape), 5.0)
    speck = np.zeros_like(good)
    speck[12, 12, 12] = 1.0
    write_nifti(tmp_path / "speck.nii.gz", speck + rng.normal(0, 0.001, good.shape), 5.0)
    manifest = pd.DataFrame(
        {
            "file": ["good.nii.gz", "blank.nii.gz", "speck.nii.gz"],
            "specimen_id": ["G1", "B1", "S1"],
            "species": ["A", "A", "A"],
        }
    )
    manifest["path"] = [str(tmp_path / f) for f in manifest["file"]]
    out = tmp_path / "store"
    with pytest.raises(slicing.SliceError) as err:
        slicing.build_slice_store(manifest, out, CONFIG, progress=None)
    msg = str(err.value)
    assert "blank.nii.gz" in msg and "'B1'" in msg
    assert "'G1'" not in msg
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blank.nii.gz",
        "good.nii.gz",
        "speck.nii.gz",
    ]


def test_load_slices_reports_a_missing_array(store, tmp_path):
    _, out, index = store
    broken = index.copy()
    broken.loc[0, "array"] = "nope.npy"
    with pytest.raises(slicing.SliceError, match="array nope.npy listed in the index is missing"):
        slicing.load_slices(out, broken)


# --------------------------------------------------------------------------- served settings


def _write_record(ws, record):
    store = ws / "data" / "slices"
    store.mkdir(parents=True, exist_ok=True)
    (store / "slicing.json").write_text(json.dumps(record) if isinstance(record, dict) else record)


def test_trained_slicing_reads_one_source_whole(tmp_path):
    """The store's record wins and is never patched from params.yaml."""
    (tmp_path / "params.yaml").write_text("slice: {jitter_deg: 2, size: 48, clahe: true}\n")
    config, source = trained_slicing(tmp_path)
    assert source == "params.yaml slice.*"
    assert (config.jitter_deg, config.preprocess.size, config.preprocess.clahe) == (2, 48, True)
    record = {"preprocess": PreprocessConfig(size=64).as_dict(), "smooth_sigma": 0.0, "n_slices": 7}
    _write_record(tmp_path, record)
    config, source = trained_slicing(tmp_path)
    assert source == STORE_RECORD
    assert (config.preprocess.size, config.smooth_sigma) == (64, 0.0)
    # what the record lacks is the default, not the parameter file's value
    assert config.jitter_deg == SlicingConfig().jitter_deg and not config.preprocess.clahe


@pytest.mark.parametrize(
    "record",
    [
        "{not json",
        {"jitter_deg": 3},  # no preprocessing: not a store record
        {"preprocess": {"size": 8}},  # invalid setting
        {"preprocess": [96]},
    ],
)
def test_trained_slicing_passes_over_an_unreadable_record(tmp_path, record):
    (tmp_path / "params.yaml").write_text("slice: {size: 48}\n")
    _write_record(tmp_path, record)
    config, source = trained_slicing(tmp_path)
    assert source == "params.yaml slice.*" and config.preprocess.size == 48


def test_the_store_record_gives_back_the_settings_it_was_cut_with(store):
    _, out, _ = store
    record = json.loads((out / "slicing.json").read_text())
    assert SlicingConfig.from_record(record) == CONFIG
    with pytest.raises(ValueError, match="needs a 'preprocess' mapping"):
        SlicingConfig.from_record({"jitter_deg": 1})


def test_a_large_volume_is_sliced_binned_and_the_store_says_so(store, tmp_path):
    manifest, out, index = store
    binned = slicing.build_slice_store(
        manifest.iloc[:2], tmp_path / "binned", CONFIG, seed=1, max_side=16, progress=None
    )
    meta = json.loads((tmp_path / "binned" / "slicing.json").read_text())
    assert {v.get("binned") for v in meta["volumes"].values()} == {2}  # 32-voxel scans by 2
    assert len(binned) > 0 and binned["file"].isin(manifest["file"].iloc[:2]).all()
    # volumes no larger than max_side: the store of before, byte for byte
    same = slicing.build_slice_store(manifest, tmp_path / "same", CONFIG, seed=1, max_side=512,
                                     progress=None)  # fmt: skip
    pd.testing.assert_frame_equal(index, same)
    assert (tmp_path / "same" / "slicing.json").read_bytes() == (out / "slicing.json").read_bytes()


# --------------------------------------------------------------------------- training reserve


def test_a_training_reserve_leaves_the_ordinary_slices_as_they_were(store, tmp_path):
    manifest, out, index = store
    dense = tmp_path / "dense"
    again = slicing.build_slice_store(
        manifest, dense, CONFIG, seed=1, train_factor=3, progress=None
    )
    pd.testing.assert_frame_equal(index, again)
    for name in index["array"].unique():
        assert (out / name).read_bytes() == (dense / name).read_bytes()
    assert slicing.load_reserve(out) is None and not (out / slicing.RESERVE_INDEX).exists()
    reserve = slicing.load_reserve(dense)
    assert list(reserve.columns) == list(slicing.INDEX_COLUMNS)
    assert reserve["array"].str.endswith(slicing.RESERVE_SUFFIX).all()
    assert not set(reserve["slice_id"]) & set(index["slice_id"])
    # about twice as many sections again per volume, from other planes
    per_file = reserve.groupby("file").size() / index.groupby("file").size()
    assert per_file.between(1.2, 3.0).all(), per_file
    planes = ["normal_x", "normal_y", "normal_z", "offset_vox", "angle_deg"]
    assert not reserve[planes].merge(index[planes]).shape[0]
    _, arrays = slicing.load_slices(dense, reserve)
    assert sum(len(a) for a in arrays.values()) == len(reserve)
    meta = json.loads((dense / "slicing.json").read_text())
    assert meta["train_factor"] == 3 and meta["n_reserve"] == len(reserve)
    assert "train_factor" not in json.loads((out / "slicing.json").read_text())


@pytest.mark.parametrize("factor", [0, 1.5, True, "2"])
def test_a_bad_train_factor_is_named(store, tmp_path, factor):
    manifest, _, _ = store
    with pytest.raises(ValueError, match=r"slice.train_factor must be an integer >= 1, got"):
        slicing.build_slice_store(manifest, tmp_path / "s", CONFIG, train_factor=factor)
    assert not (tmp_path / "s").exists()
