"""The collection index on disk: build, reload, lazy volumes, bad input, query images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.dataset.slicing import Plane, extract_slice
from foramlib.io.volumes import write_nifti
from foramlib.matching import index as indexing
from foramlib.matching import search as matching

SMALL = matching.IndexConfig(
    n_orientations=20, n_offsets=3, descriptor_size=16, preprocess=PreprocessConfig(size=32)
)


def _ellipsoid(shape=32, axes=(11, 7, 5), seed=0) -> np.ndarray:
    g = np.indices((shape,) * 3, dtype=np.float32) - (shape - 1) / 2
    inside = sum((g[i] / a) ** 2 for i, a in enumerate(axes)) <= 1.0
    core = sum((g[i] / (0.5 * a)) ** 2 for i, a in enumerate(axes)) <= 1.0
    vol = 0.1 + 0.7 * inside + 0.15 * core
    return (vol + np.random.default_rng(seed).normal(0, 0.02, vol.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory):
    """Three specimens of two genera (one with a repeat scan) and their curated manifest."""
    root = tmp_path_factory.mktemp("collection")
    raw = root / "raw"
    specs = [
        ("A-01.nii.gz", "A-01", "Alpha", (11, 7, 5)),
        ("A-02.nii.gz", "A-02", "Alpha", (12, 6, 6)),
        ("B-01.nii.gz", "B-01", "Beta", (9, 9, 4)),
        ("A-01_scan2.nii.gz", "A-01", "Alpha", (11, 7, 5)),
    ]
    rows = []
    for i, (file, spec, species, axes) in enumerate(specs):
        write_nifti(raw / file, _ellipsoid(axes=axes, seed=i) * 1000, (10.0, 10.0, 10.0))
        rows.append(dict(file=file, specimen_id=spec, species=species, voxel_size_um=10.0))
    manifest = root / "curated" / "manifest.csv"
    manifest.parent.mkdir()
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return root


@pytest.fixture(scope="module")
def built(collection_dir):
    root = collection_dir
    messages = []
    out = indexing.build_collection_index(
        root / "curated" / "manifest.csv",
        root / "raw",
        root / "index",
        SMALL,
        progress=lambda f, m: messages.append((f, m)),
    )
    return root, out, messages


def test_build_writes_index_specimens_and_metadata(built):
    root, out, messages = built
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "index.npz", "specimens.csv"]
    specimens = pd.read_csv(out / "specimens.csv")
    assert specimens["specimen_id"].tolist() == ["A-01", "A-02", "B-01"]  # repeat scan skipped
    assert specimens["file"].tolist() == [(root / "raw" / f"{s}.nii.gz").as_posix() for s in
                                          ("A-01", "A-02", "B-01")]  # fmt: skip
    meta = json.loads((out / "index.json").read_text())
    index = matching.MatchIndex.load(out / "index.npz")
    assert meta["candidates"] == len(index) == specimens["candidates"].sum()
    assert meta["specimens"] == 3 and meta["species"] == ["Alpha", "Beta"]
    assert meta["repeat_scans_skipped"] == ["A-01_scan2.nii.gz"]
    assert meta["index_bytes"] == (out / "index.npz").stat().st_size
    assert matching.IndexConfig.from_dict(meta["config"]) == SMALL
    assert not any("second" in k or k.endswith("_s") for k in meta)  # no timings
    assert messages[0][0] == 0.0 and messages[-1][0] == 1.0
    assert [m for _, m in messages[:3]] == [
        "indexing A-01 (1/3)",
        "indexing A-02 (2/3)",
        "indexing B-01 (3/3)",
    ]


def test_rebuild_is_byte_identical(built, tmp_path):
    root, out, _ = built
    again = indexing.build_collection_index(
        root / "curated" / "manifest.csv", root / "raw", tmp_path / "again", SMALL
    )
    for name in ("index.npz", "specimens.csv", "index.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_relative_raw_dir_is_kept_relative(collection_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(collection_dir)
    out = indexing.build_collection_index("curated/manifest.csv", "raw", tmp_path / "i", SMALL)
    files = pd.read_csv(out / "specimens.csv")["file"].tolist()
    assert files == ["raw/A-01.nii.gz", "raw/A-02.nii.gz", "raw/B-01.nii.gz"]
    # the collection finds them relative to its workspace, from anywhere
    monkeypatch.chdir(tmp_path)
    c = indexing.load_collection(out, workspace=collection_dir)
    assert c.volume("B-01").shape == (32, 32, 32)


def test_collection_reads_volumes_lazily_and_caches_a_few(built):
    _, out, _ = built
    c = indexing.load_collection(out, cache_size=2)
    assert c.genera == ["Alpha", "Beta"]
    assert len(c.index) == c.specimens["candidates"].sum()
    assert len(c._raw.items) == 0  # nothing read yet
    v = c.volume("A-01")
    assert v.shape == (32, 32, 32) and v.dtype == np.float32
    assert c.volume("A-01") is v  # cached
    c.volume("A-02")
    c.volume("B-01")
    assert list(c._raw.items) == ["A-02", "B-01"]  # least recently used dropped
    vols = c.volumes
    assert len(vols) == 3 and list(vols) == ["A-01", "A-02", "B-01"]
    assert "B-01" in vols and "Z-99" not in vols
    assert isinstance(vols["B-01"], matching.PreparedVolume)
    assert vols.get("Z-99") is None  # how match() asks for a volume
    with pytest.raises(indexing.CollectionError, match=r"specimen 'Z-99' is not in the index"):
        c.volume("Z-99")


@pytest.mark.slow
def test_collection_volumes_match_like_the_raw_arrays(built):
    root, out, _ = built
    c = indexing.load_collection(out)
    raw = {s: c.volume(s).copy() for s in ("A-01", "A-02", "B-01")}
    query = extract_slice(raw["A-02"], Plane((0.2, 0.3, 0.93), 1.0, 40.0))
    lazy = matching.match(c.index, query, top_k=3, volumes=c.volumes)
    direct = matching.match(c.index, query, top_k=3, volumes=raw)
    assert [(m.specimen_id, m.normal, m.offset, m.angle_deg) for m in lazy] == [
        (m.specimen_id, m.normal, m.offset, m.angle_deg) for m in direct
    ]
    assert [m.scores for m in lazy] == [m.scores for m in direct]


def test_preload_prepares_volumes_up_to_the_cache_size(built):
    _, out, _ = built
    c = indexing.load_collection(out, cache_size=2)
    seen = []
    c.preload(progress=lambda f, m: seen.append(m))
    assert list(c._prep.items) == ["A-01", "A-02"]
    assert seen == ["reading A-01 (1/2)", "reading A-02 (2/2)", "2 volumes ready"]
    with pytest.raises(ValueError, match="cache_size must be an integer >= 1, got 0"):
        indexing.load_collection(out, cache_size=0)


def test_prepared_volumes_are_held_to_a_memory_budget(built):
    """The cache weighs what it holds: over the budget the least recently used volume
    goes (and preloading stops there), however many volumes the count would allow."""
    _, out, _ = built
    one = indexing.load_collection(out).prepared("A-01").nbytes
    c = indexing.load_collection(out, cache_bytes=int(2.5 * one))
    seen = []
    c.preload(progress=lambda f, m: seen.append(m))
    assert list(c._prep.items) == ["A-02", "B-01"]
    assert c._prep.nbytes <= 2.5 * one
    assert seen[-1] == "2 volumes ready"
    c.prepared("A-01")  # read again when a search reaches it; the oldest goes
    assert list(c._prep.items) == ["B-01", "A-01"]
    # one volume larger than the budget is still kept: a search needs it
    tiny = indexing.load_collection(out, cache_bytes=1)
    tiny.prepared("A-01")
    assert list(tiny._prep.items) == ["A-01"]


def test_the_memory_budget_comes_from_the_environment(built, monkeypatch):
    _, out, _ = built
    monkeypatch.setenv("FORAM_MATCH_CACHE_MB", "0.5")
    assert indexing.load_collection(out).cache_bytes == 2**19
    monkeypatch.delenv("FORAM_MATCH_CACHE_MB")
    assert indexing.load_collection(out).cache_bytes == indexing.CACHE_MB * 2**20
    for bad in ("lots", "0", "-1"):
        monkeypatch.setenv("FORAM_MATCH_CACHE_MB", bad)
        with pytest.raises(ValueError, match=rf"FORAM_MATCH_CACHE_MB = '{bad}' is invalid"):
            indexing.load_collection(out)
    monkeypatch.delenv("FORAM_MATCH_CACHE_MB")
    with pytest.raises(ValueError, match="cache_bytes must be an integer >= 1, got 0"):
        indexing.load_collection(out, cache_bytes=0)


def test_missing_index_says_how_to_build_it(tmp_path):
    with pytest.raises(indexing.CollectionError, match=r"index.npz is missing: run `dvc repro"):
        indexing.load_collection(tmp_path / "nowhere")


def test_specimens_table_must_list_the_indexed_specimens(built, tmp_path):
    _, out, _ = built
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.npz").write_bytes((out / "index.npz").read_bytes())
    table = pd.read_csv(out / "specimens.csv")
    table[table["specimen_id"] != "B-01"].to_csv(bad / "specimens.csv", index=False)
    with pytest.raises(indexing.CollectionError, match=r"does not list indexed specimen.*B-01"):
        indexing.load_collection(bad)
    table.drop(columns="file").to_csv(bad / "specimens.csv", index=False)
    with pytest.raises(indexing.CollectionError, match=r"lacks column\(s\) \['file'\]"):
        indexing.load_collection(bad)


def test_index_from_another_preprocessing_version_is_refused(built, tmp_path, monkeypatch):
    _, out, _ = built
    monkeypatch.setattr(matching, "PREPROCESS_VERSION", matching.PREPROCESS_VERSION + 1)
    with pytest.raises(matching.MatchError, match=r"preprocessing version"):
        indexing.load_collection(out)


def test_failed_build_keeps_the_previous_index(built, tmp_path):
    root, out, _ = built
    before = (out / "index.npz").read_bytes()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,specimen_id,species\nA-01.nii.gz,A-01,Alpha\nnope.nii.gz,N,Nu\n")
    with pytest.raises(ValueError, match="nope.nii.gz"):
        indexing.build_collection_index(manifest, root / "raw", out, SMALL)
    assert (out / "index.npz").read_bytes() == before


def test_blank_volume_is_a_clear_error(tmp_path):
    write_nifti(tmp_path / "raw" / "E.nii.gz", np.full((32, 32, 32), 100.0), (10.0,) * 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,specimen_id,species\nE.nii.gz,E,Empty\n")
    with pytest.raises(ValueError, match=r"E"):
        indexing.build_collection_index(manifest, tmp_path / "raw", tmp_path / "i", SMALL)
    assert not (tmp_path / "i").exists()


# ------------------------------------------------------------------ query images


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".bmp"])
def test_read_image_keeps_pixel_type(tmp_path, suffix):
    img = (np.arange(32 * 40).reshape(32, 40) % 251).astype(np.uint8)
    path = tmp_path / f"q{suffix}"
    cv2.imwrite(str(path), img)
    out = indexing.read_image(path)
    assert out.shape == (32, 40) and out.dtype == np.uint8
    if suffix != ".jpg":
        assert np.array_equal(out, img)


def test_read_image_16bit_tiff_and_png(tmp_path):
    import tifffile

    img = (np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)
    tifffile.imwrite(tmp_path / "q.tif", img)
    cv2.imwrite(str(tmp_path / "q.png"), img)
    for name in ("q.tif", "q.png"):
        out = indexing.read_image(tmp_path / name)
        assert out.dtype == np.uint16 and np.array_equal(out, img), name
    data = (tmp_path / "q.tif").read_bytes()
    assert np.array_equal(indexing.read_image(data, name="upload.tif"), img)


def test_read_image_colour_comes_back_rgb(tmp_path):
    img = np.zeros((20, 20, 3), np.uint8)
    img[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "c.png"), img[..., ::-1])  # OpenCV writes BGR
    assert indexing.read_image(tmp_path / "c.png")[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, this is text", r"q.png: not a readable image"),
        (b"", r"q.png: not a readable image"),
        (b"II*\x00garbage", r"q.png: not a readable image"),
    ],
)
def test_read_image_refuses_non_images(tmp_path, content, message):
    (tmp_path / "q.png").write_bytes(content)
    with pytest.raises(indexing.ImageError, match=message):
        indexing.read_image(tmp_path / "q.png", name="q.png")


def test_read_image_says_when_an_image_has_too_many_pixels(tmp_path, monkeypatch):
    """``foram match``'s reader: a big image is refused with the limit and the fix, not
    called unreadable."""
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((300, 400), np.uint8))
    monkeypatch.setenv("FORAM_MAX_IMAGE_MP", "0.1")
    with pytest.raises(
        indexing.ImageError,
        match=r"big\.png: 400 × 300 pixels \(0 megapixels\) is more than the limit of 0\.1 "
        r"megapixels \(FORAM_MAX_IMAGE_MP\); shrink the image first",
    ):
        indexing.read_image(tmp_path / "big.png", name="big.png")
    monkeypatch.setenv("FORAM_MAX_IMAGE_MP", "0.2")
    assert indexing.read_image(tmp_path / "big.png").shape == (300, 400)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(indexing.ImageError, match=r"nope.png: file not found"):
        indexing.read_image(tmp_path / "nope.png")


def test_a_large_volume_is_indexed_binned_and_matched_the_same_way(collection_dir, tmp_path):
    root = collection_dir
    out = indexing.build_collection_index(
        root / "curated" / "manifest.csv", root / "raw", tmp_path / "binned", SMALL, max_side=16
    )
    meta = json.loads((out / "index.json").read_text())
    assert meta["read_max_side"] == 16 and meta["binned"] == {"A-01": 2, "A-02": 2, "B-01": 2}
    collection = indexing.load_collection(out)
    assert collection.max_side == 16
    assert collection.volume("A-01").shape == (16, 16, 16)  # read as the index read it
    # no volume over the limit: the index is what it always was, byte for byte
    plain = indexing.build_collection_index(
        root / "curated" / "manifest.csv", root / "raw", tmp_path / "plain", SMALL, max_side=64
    )
    assert "read_max_side" not in json.loads((plain / "index.json").read_text())
    assert indexing.load_collection(plain).max_side is None
    reference = indexing.build_collection_index(
        root / "curated" / "manifest.csv", root / "raw", tmp_path / "ref", SMALL
    )
    for name in ("index.npz", "index.json"):
        assert (plain / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_volume_too_thin_to_index_is_named_by_its_file(tmp_path):
    """Curation refuses such a volume first; an index built without it still says which
    file and what is wrong, not a bare specimen id."""
    raw = tmp_path / "raw"
    write_nifti(raw / "thin.nii.gz", _ellipsoid()[:, :, 12:18] * 1000, (10.0, 10.0, 10.0))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        [dict(file="thin.nii.gz", specimen_id="T-01", species="Tenuis", voxel_size_um=10.0)]
    ).to_csv(manifest, index=False)
    with pytest.raises(
        matching.MatchError,
        match=r"thin\.nii\.gz \(T-01: expected a numeric 3-D volume at least 8 voxels along "
        r"each axis, got float32 \(32, 32, 6\)\)",
    ):
        indexing.build_collection_index(manifest, raw, tmp_path / "index", SMALL)
    assert not (tmp_path / "index").exists()  # nothing half-written
