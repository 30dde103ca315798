"""Volume I/O, checks, resampling and normalisation (foramlib.io.volumes)."""

from __future__ import annotations

import gzip
import time
import warnings
import zlib

import cv2
import nibabel as nib
import nrrd
import numpy as np
import pytest
import tifffile

from foramlib.io.volumes import (
    ManifestWarning,
    Volume,
    VolumeError,
    _gzip_stored,
    check_volume_array,
    normalize_intensity,
    read_volume,
    resample_isotropic,
    write_nifti,
)


def ramp(shape=(6, 7, 8), lo=-3.0, hi=5.0):
    """A non-constant float volume with known range."""
    return np.linspace(lo, hi, int(np.prod(shape))).reshape(shape)


def nifti_header(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return nib.Nifti1Header.from_fileobj(f)


# --- writing and reading back ------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    ("dtype", "levels"), [(np.uint16, 65535), (np.int16, 65535), (np.uint8, 255), (np.float32, 0)]
)
def test_round_trip_recovers_values_and_voxel_size(tmp_path, suffix, dtype, levels):
    arr = ramp()
    out = write_nifti(tmp_path / f"v{suffix}", arr, 12.5, dtype=dtype)
    assert out == tmp_path / f"v{suffix}"
    vol = read_volume(out)
    assert isinstance(vol, Volume)
    assert vol.data.dtype == np.float32 and vol.data.shape == arr.shape
    assert vol.voxel_size_um == pytest.approx(12.5)
    assert vol.path == out
    step = (arr.max() - arr.min()) / levels if levels else 0.0
    np.testing.assert_allclose(vol.data, arr, atol=step / 2 + 1e-5 * np.abs(arr).max())
    hdr = nifti_header(out)
    assert hdr.get_data_dtype() == np.dtype(dtype)
    assert hdr.get_xyzt_units()[0] == "micron"


def test_float_to_integer_scaling_is_stored_in_header(tmp_path):
    arr = ramp(lo=-1.0, hi=1.0)
    write_nifti(tmp_path / "v.nii", arr, 3.0, dtype=np.uint16)
    slope, inter = (float(v) for v in nifti_header(tmp_path / "v.nii").get_slope_inter())
    assert slope == pytest.approx(2.0 / 65535, rel=1e-3)
    assert inter != 0.0


def test_integer_input_that_fits_is_stored_unscaled(tmp_path):
    labels = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    write_nifti(tmp_path / "l.nii.gz", labels, 2.0, dtype=np.uint16)
    raw = np.asanyarray(nib.load(tmp_path / "l.nii.gz").dataobj.get_unscaled())
    np.testing.assert_array_equal(raw, labels)
    np.testing.assert_array_equal(read_volume(tmp_path / "l.nii.gz").data, labels)


def test_description_and_zooms_are_written(tmp_path):
    write_nifti(tmp_path / "v.nii", ramp(), (2.0, 3.0, 4.0), description="virtual specimen")
    hdr = nifti_header(tmp_path / "v.nii")
    assert hdr["descrip"].item() == b"virtual specimen"
    assert tuple(float(z) for z in hdr.get_zooms()) == (2.0, 3.0, 4.0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_writes_are_byte_identical(tmp_path, suffix):
    arr = np.random.default_rng(0).random((9, 8, 7))
    a = write_nifti(tmp_path / "one" / f"a{suffix}", arr, 5.0, description="x")
    b = write_nifti(tmp_path / "two" / f"other_name{suffix}", arr.copy(), 5.0, description="x")
    assert a.read_bytes() == b.read_bytes()
    if suffix == ".nii.gz":
        head = a.read_bytes()[:10]
        assert head[4:8] == b"\0\0\0\0"  # gzip mtime
        assert not head[3] & 0x08  # no FNAME field
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f"a{suffix}"]  # no temp left


def test_gz_bytes_do_not_depend_on_the_zlib_build(tmp_path, monkeypatch):
    """zlib, zlib-ng and Apple's zlib deflate the same data to different bytes; the
    written .nii.gz must not change with them, nor with the clock."""
    arr = np.random.default_rng(0).random((40, 30, 20))
    a = write_nifti(tmp_path / "a.nii.gz", arr, 5.0).read_bytes()
    plain = write_nifti(tmp_path / "a.nii", arr, 5.0).read_bytes()
    real_compressobj = zlib.compressobj

    def other_zlib(level=-1, method=zlib.DEFLATED, wbits=zlib.MAX_WBITS, *args, **kwargs):
        # another build's choices: same format, different matches and blocks
        return real_compressobj(1, method, wbits, 9, zlib.Z_FILTERED)

    monkeypatch.setattr(zlib, "compressobj", other_zlib)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # another day
    b = write_nifti(tmp_path / "b.nii.gz", arr, 5.0).read_bytes()
    assert a == b
    assert gzip.decompress(a) == plain
    assert a[10] & 0x06 == 0  # first deflate block is stored (BTYPE 00)
    assert a[15 : 15 + len(plain)] == plain  # one block: the .nii bytes, verbatim


@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 3 * 65535 + 7])
def test_stored_gzip_round_trips_at_block_edges(n):
    raw = np.random.default_rng(n).bytes(n)
    assert gzip.decompress(_gzip_stored(raw)) == raw


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "v.nrrd"}, "writes .nii or .nii.gz"),
        ({"voxel_size_um": 0.0}, "voxel_size_um must be a positive finite number, got 0.0"),
        ({"voxel_size_um": (1.0, 2.0)}, r"voxel_size_um must be 3 positive finite numbers"),
        ({"dtype": np.complex64}, "dtype must be an integer or float type, got complex64"),
        ({"description": "x" * 81}, "description must be at most 80 ASCII characters"),
        ({"arr": np.full((3, 3, 3), np.nan)}, "27 NaN"),
        ({"arr": np.ones((3, 3))}, "is 2-D"),
    ],
)
def test_write_nifti_refuses_bad_arguments(tmp_path, kwargs, match):
    args = {"path": "v.nii.gz", "arr": ramp(), "voxel_size_um": 5.0, **kwargs}
    path = tmp_path / args.pop("path")
    with pytest.raises(ValueError, match=match):
        write_nifti(path, args.pop("arr"), args.pop("voxel_size_um"), **args)
    assert list(tmp_path.iterdir()) == []


# --- header units and voxel size ---------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "zoom", "expected_um"),
    [("micron", 5.0, 5.0), ("mm", 0.005, 5.0), ("meter", 5e-6, 5.0)],
)
def test_header_units_are_converted_to_micrometres(tmp_path, unit, zoom, expected_um):
    img = nib.Nifti1Image(ramp().astype(np.float32), np.diag([zoom, zoom, zoom, 1.0]))
    img.header.set_xyzt_units(xyz=unit)
    nib.save(img, tmp_path / "v.nii")
    assert read_volume(tmp_path / "v.nii").voxel_size_um == pytest.approx(expected_um, rel=1e-5)


def _header_with(tmp_path, unit, pixdim, name="h.nii"):
    """A NIfTI whose header says `unit` and voxel dimensions `pixdim`, byte for byte."""
    img = nib.Nifti1Image(ramp().astype(np.float32), np.eye(4))
    img.header.set_xyzt_units(xyz=unit)
    raw = bytearray(img.to_bytes())
    raw[80:92] = np.array(pixdim, "<f4").tobytes()  # pixdim[1:4]
    (tmp_path / name).write_bytes(bytes(raw))
    return tmp_path / name


@pytest.mark.parametrize(
    ("unit", "pixdim", "why"),
    [
        ("unknown", [0.004, 0.004, 0.004], r"states no spatial unit \(xyzt_units 'unknown'\)"),
        ("micron", [0.0, 0.0, 0.0], r"voxel size \(0\.0, 0\.0, 0\.0\) is not positive"),
        ("micron", [5.0, 0.0, 5.0], r"voxel size \(5\.0, 0\.0, 5\.0\) is not positive"),
    ],
)
def test_voxel_size_is_never_guessed_from_an_incomplete_header(tmp_path, unit, pixdim, why):
    path = _header_with(tmp_path, unit, pixdim)
    with pytest.raises(
        VolumeError, match=r"h\.nii: voxel size unknown: .*" + why + ".*voxel_size_um"
    ):
        read_volume(path)
    # the manifest's value is what the user means: no warning about the header
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(path, voxel_size_um=6.0).voxel_size_um == 6.0


def test_one_voxel_size_for_voxels_that_are_not_cubes_is_warned_about(tmp_path):
    """A header without a unit still says its voxels are twice as deep as wide: the
    manifest's single value cannot say which axis it means, so the user hears it."""
    path = _header_with(tmp_path, "unknown", [1.0, 1.0, 2.0])
    with pytest.warns(
        ManifestWarning,
        match=r"h\.nii: the header's voxel dimensions \(1\.0, 1\.0, 2\.0\) \(in no stated "
        r"unit\) are not cubes, but voxel_size_um=5 is applied to every axis; state the "
        r"header's unit",
    ):
        vol = read_volume(path, voxel_size_um=5.0)
    assert vol.spacing_um == (5.0, 5.0, 5.0)


def test_nifti2_headers_are_read_raw_too(tmp_path):
    img = nib.Nifti2Image(ramp().astype(np.float32), np.diag([8.0, 8.0, 8.0, 1.0]))
    img.header.set_xyzt_units(xyz="micron")
    nib.save(img, tmp_path / "v2.nii")
    assert read_volume(tmp_path / "v2.nii").voxel_size_um == 8.0


def test_voxel_size_argument_overrides_header_with_warning(tmp_path):
    write_nifti(tmp_path / "v.nii.gz", ramp(), 7.0)
    with pytest.warns(
        ManifestWarning, match=r"v\.nii\.gz: voxel_size_um=10 .*\(7\.0, 7\.0, 7\.0\)"
    ):
        vol = read_volume(tmp_path / "v.nii.gz", voxel_size_um=10)
    assert vol.voxel_size_um == 10.0


@pytest.mark.parametrize("given", [7.0, 7.05])
def test_voxel_size_agreeing_within_one_percent_does_not_warn(tmp_path, given):
    write_nifti(tmp_path / "v.nii.gz", ramp(), 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(tmp_path / "v.nii.gz", voxel_size_um=given).voxel_size_um == given


def test_default_header_without_units_does_not_warn(tmp_path):
    nib.save(nib.Nifti1Image(ramp().astype(np.float32), np.eye(4)), tmp_path / "v.nii")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(tmp_path / "v.nii", voxel_size_um=3.0).voxel_size_um == 3.0


def test_non_finite_header_voxel_size_needs_manifest_value(tmp_path):
    path = _header_with(tmp_path, "micron", [np.nan, np.inf, 1.0], name="z.nii")
    with pytest.raises(
        VolumeError, match=r"z\.nii: voxel size unknown: the header's voxel size \(nan, inf, 1\.0\)"
    ):
        read_volume(path)
    assert read_volume(path, voxel_size_um=2.0).voxel_size_um == 2.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "abc"])
def test_read_volume_refuses_bad_voxel_size_argument(tmp_path, bad):
    write_nifti(tmp_path / "v.nii", ramp(), 7.0)
    with pytest.raises(ValueError, match=r"v\.nii: voxel_size_um must be a positive finite"):
        read_volume(tmp_path / "v.nii", voxel_size_um=bad)


# --- anisotropic voxels ------------------------------------------------------------


def test_anisotropic_nifti_is_resampled_to_finest_spacing(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", ramp((4, 6, 5)), (5.0, 10.0, 15.0), dtype=np.float32)
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.data.shape == (4, 12, 15)
    assert vol.voxel_size_um == 5.0 and vol.spacing_um == (5.0, 5.0, 5.0)
    raw = read_volume(tmp_path / "a.nii.gz", isotropic=False)
    assert raw.data.shape == (4, 6, 5)
    assert raw.spacing_um == (5.0, 10.0, 15.0) and raw.voxel_size_um == 5.0


def test_resample_isotropic_interpolates_and_keeps_ends():
    arr = np.zeros((2, 2, 3))
    arr[..., :] = [0.0, 10.0, 20.0]
    out, vox = resample_isotropic(arr, (1.0, 1.0, 2.0))
    assert out.shape == (2, 2, 6) and vox == 1.0
    assert out[0, 0, 0] == pytest.approx(0.0) and out[0, 0, -1] == pytest.approx(20.0)
    assert np.all(np.diff(out[0, 0]) > 0)  # monotone ramp survives


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (3.0, 3.0, 3.0 * (1 + 5e-7))])
def test_resample_isotropic_is_a_no_op_when_isotropic(spacing):
    arr = ramp()
    out, vox = resample_isotropic(arr, spacing)
    assert out is arr and vox == 3.0


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1, 1, 1), (np.nan, 1, 1), (1, 1), "abc"])
def test_resample_isotropic_refuses_bad_spacing(spacing):
    with pytest.raises(ValueError, match=r"spacing_um must be 3 positive finite numbers, got"):
        resample_isotropic(ramp(), spacing)


def test_resample_isotropic_refuses_bad_order_and_shape():
    with pytest.raises(ValueError, match="order must be an integer from 0 to 5, got 7"):
        resample_isotropic(ramp(), (1, 1, 2), order=7)
    with pytest.raises(ValueError, match=r"arr must be 3-D, got shape \(3, 3\)"):
        resample_isotropic(np.ones((3, 3)), (1, 1, 2))


# --- TIFF --------------------------------------------------------------------------


def test_tiff_stack_is_read_in_xyz_order(tmp_path):
    zyx = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5)
    tifffile.imwrite(tmp_path / "s.tif", zyx, photometric="minisblack")
    vol = read_volume(tmp_path / "s.tif", voxel_size_um=2.0)
    assert vol.data.dtype == np.float32 and vol.voxel_size_um == 2.0
    np.testing.assert_array_equal(vol.data, zyx.transpose(2, 1, 0))


def test_tiff_stack_without_voxel_size_is_refused(tmp_path):
    tifffile.imwrite(
        tmp_path / "s.tiff", ramp((6, 4, 5)).astype(np.float32), photometric="minisblack"
    )
    with pytest.raises(VolumeError, match="s.tiff: .*manifest must give voxel_size_um for TIFF"):
        read_volume(tmp_path / "s.tiff")


def test_tiff_folder_is_stacked_in_natural_order(tmp_path):
    folder = tmp_path / "spec"
    folder.mkdir()
    for z in (1, 2, 10):  # lexical order would put 10 before 2
        tifffile.imwrite(folder / f"slice_{z}.tif", np.full((4, 5), z, dtype=np.uint8))
    (folder / "notes.txt").write_text("ignored")
    vol = read_volume(folder, voxel_size_um=3.0)
    assert vol.data.shape == (5, 4, 3)
    assert vol.data[0, 0].tolist() == [1.0, 2.0, 10.0]


def test_tiff_folder_with_mismatched_slices_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "s1.tif", np.ones((4, 5), np.uint8))
    tifffile.imwrite(tmp_path / "s2.tif", np.ones((4, 6), np.uint8))
    with pytest.raises(VolumeError, match=r"slice s2\.tif has shape \(4, 6\) but s1\.tif has"):
        read_volume(tmp_path, voxel_size_um=1.0)


def test_empty_slice_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(VolumeError, match=r"folder contains no slices \(\.tif, \.tiff, \.png"):
        read_volume(tmp_path, voxel_size_um=1.0)


# --------------------------------------------------------------------------- SkyScan folders

LOG = """[System]
Scanner=Skyscan1272
[Acquisition]
Image Pixel Size (um)=11.999
[Reconstruction]
Reconstruction Program=NRecon
Pixel Size (um)={pixel}
Result File Type={kind}
[File name convention]
Filename Index Length=8
Filename Prefix=shell_rec
"""


def skyscan_folder(root, kind="png", pixel="4.000", n=3, dtype=np.uint16, log=True):
    """An NRecon-style reconstruction folder: slices, a preview image and the log."""
    folder = root / "shell_Rec"
    folder.mkdir()
    for z in range(n):
        plane = np.full((6, 5), 1000 * (z + 1), dtype=dtype)
        plane[0, 0] = z  # not constant
        cv2.imwrite(str(folder / f"shell_rec{z:08d}.{kind}"), plane)
    cv2.imwrite(str(folder / f"shell__rec_spr.{kind}"), np.zeros((9, 9), np.uint8))
    if log:
        (folder / "shell_rec.log").write_bytes(LOG.format(pixel=pixel, kind=kind).encode("latin-1"))
    return folder


def test_skyscan_folder_takes_the_logs_voxel_size_and_slices(tmp_path):
    folder = skyscan_folder(tmp_path)
    vol = read_volume(folder)
    assert vol.voxel_size_um == 4.0  # [Reconstruction], not the camera's 11.999
    assert vol.data.shape == (5, 6, 3)  # the preview image is not a slice
    assert vol.data[1, 1].tolist() == [1000.0, 2000.0, 3000.0]  # 16 bits kept, in order


def test_skyscan_bmp_saved_in_colour_is_read_as_grey(tmp_path):
    folder = tmp_path / "bmp"
    folder.mkdir()
    for z in range(3):
        grey = np.full((6, 5), 40 * (z + 1), np.uint8)
        grey[0, 0] = 0
        cv2.imwrite(str(folder / f"s{z}.bmp"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    vol = read_volume(folder, voxel_size_um=2.0)
    assert vol.data.shape == (5, 6, 3) and vol.data[1, 1].tolist() == [40.0, 80.0, 120.0]


def test_the_manifests_voxel_size_wins_over_the_log_with_a_warning(tmp_path):
    folder = skyscan_folder(tmp_path)
    with pytest.warns(ManifestWarning, match=r"voxel_size_um=5 overrides the log's voxel size"):
        vol = read_volume(folder, voxel_size_um=5.0)
    assert vol.voxel_size_um == 5.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: skyscan_folder(p, log=False), r"no SkyScan \*_rec\.log in it"),
        (
            lambda p: skyscan_folder(p, pixel=""),
            r"Pixel Size \(um\)='' is not a positive number",
        ),
        (lambda p: skyscan_folder(p, pixel="-3"), r"shell_rec\.log: \[Reconstruction\] Pixel"),
    ],
)
def test_a_folder_without_a_stated_voxel_size_is_refused(tmp_path, make, match):
    with pytest.raises(VolumeError, match=match):
        read_volume(make(tmp_path))


def test_a_log_without_the_voxel_size_asks_for_it(tmp_path):
    folder = skyscan_folder(tmp_path)
    log = folder / "shell_rec.log"
    log.write_text(log.read_text(encoding="latin-1").replace("Pixel Size (um)=4.000\n", ""))
    with pytest.raises(VolumeError, match=r"shell_rec\.log states no \[Reconstruction\] Pixel"):
        read_volume(folder)
    assert read_volume(folder, voxel_size_um=3.0).voxel_size_um == 3.0


@pytest.mark.parametrize(
    "arrange, match",
    [
        (lambda f: (f / "shell_rec.log").rename(f / "x_rec.log") or None, "no slice named x_rec"),
        (
            lambda f: (f / "other_rec.log").write_text("[Reconstruction]\n"),
            r"several reconstruction logs \(other_rec\.log, shell_rec\.log\)",
        ),
    ],
)
def test_log_and_slices_must_agree(tmp_path, arrange, match):
    folder = skyscan_folder(tmp_path)
    log = folder / "shell_rec.log"
    if "no slice" in match:  # a log whose prefix names no image here
        log.write_text(log.read_text(encoding="latin-1").replace("=shell_rec", "=x_rec"))
    else:
        arrange(folder)
    with pytest.raises(VolumeError, match=match):
        read_volume(folder)


def test_a_folder_mixing_image_types_is_refused(tmp_path):
    folder = skyscan_folder(tmp_path, log=False)
    cv2.imwrite(str(folder / "shell_rec00000003.bmp"), np.ones((6, 5), np.uint8))
    with pytest.raises(VolumeError, match=r"mixes slice types \(\.bmp, \.png\)"):
        read_volume(folder, voxel_size_um=1.0)


def test_without_a_log_the_slices_are_the_longest_numbered_series(tmp_path):
    folder = skyscan_folder(tmp_path, log=False)  # 3 slices and a preview
    assert read_volume(folder, voxel_size_um=1.0).data.shape == (5, 6, 3)
    for z in range(3):  # a second series as long as the first: which one is meant?
        cv2.imwrite(str(folder / f"mask{z}.png"), np.ones((6, 5), np.uint8))
    with pytest.raises(VolumeError, match=r"2 series of 3 numbered images \(mask<number>, shell"):
        read_volume(folder, voxel_size_um=1.0)


def test_single_page_tiff_is_refused_as_2d(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", ramp((4, 5)).astype(np.float32))
    with pytest.raises(VolumeError, match=r"one\.tif: is 2-D \(shape \(4, 5\)\)"):
        read_volume(tmp_path / "one.tif", voxel_size_um=1.0)


# --- unreadable files --------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nii", "bad.tif"])
def test_random_bytes_are_refused_as_corrupt(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(VolumeError, match=f"^{name}: cannot be read: truncated or corrupt file"):
        read_volume(tmp_path / name, voxel_size_um=1.0)


@pytest.mark.parametrize(("suffix", "cause"), [(".nii.gz", "EOFError"), (".nii", "OSError")])
def test_truncated_nifti_is_refused(tmp_path, suffix, cause):
    data = write_nifti(tmp_path / f"ok{suffix}", np.random.default_rng(0).random((32,) * 3), 1.0)
    data = data.read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])  # header intact, data cut
    with pytest.raises(VolumeError, match=f"cut{suffix}: cannot be read: .*corrupt.*{cause}"):
        read_volume(tmp_path / f"cut{suffix}")


def test_missing_file_is_a_volume_error(tmp_path):
    with pytest.raises(VolumeError, match=r"^gone\.nii\.gz: file not found \(.*gone\.nii\.gz\)"):
        read_volume(tmp_path / "gone.nii.gz")


@pytest.mark.parametrize("name", ["scan.png", "scan.mha", "scan"])
def test_unknown_extension_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"data")
    with pytest.raises(VolumeError, match=f"^{name}: unsupported file type"):
        read_volume(tmp_path / name, voxel_size_um=1.0)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.full((3, 3, 3), np.nan, dtype=np.float32), "27 NaN"),
        (np.ones((3, 3, 3, 2), dtype=np.float32), "is 4-D with 2 volumes"),
        (np.ones((3, 3, 3), dtype=np.complex64), "unsupported data type complex64"),
        (np.full((3, 3, 3), 4, dtype=np.int16), r"is constant \(every voxel equals 4\.0\)"),
    ],
)
def test_bad_nifti_content_is_refused_with_file_name(tmp_path, arr, match):
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "bad.nii")
    with pytest.raises(VolumeError, match=f"^bad.nii: .*{match}"):
        read_volume(tmp_path / "bad.nii")


def test_4d_nifti_with_one_volume_is_accepted(tmp_path):
    arr = ramp((3, 4, 5, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "v.nii.gz")
    vol = read_volume(tmp_path / "v.nii.gz", voxel_size_um=1.0)
    np.testing.assert_array_equal(vol.data, arr[..., 0])


# --- array checks ------------------------------------------------------------------


def _with_nans(n):
    arr = ramp()
    arr.flat[:n] = np.nan
    return arr


def _with_infs():
    arr = ramp()
    arr.flat[0], arr.flat[5] = np.inf, -np.inf
    return arr


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.ones((64, 64)), r"^vol: is 2-D \(shape \(64, 64\)\); expected a 3-D volume$"),
        (np.arange(5.0), r"^vol: is 1-D \(shape \(5,\)\); expected a 3-D volume"),
        (np.ones((2, 2, 2, 2)), r"^vol: is 4-D with 2 volumes \(shape \(2, 2, 2, 2\)\)"),
        (np.ones((2, 2, 2, 1, 1)), r"^vol: is 5-D"),
        (np.ones((0, 4, 4)), r"^vol: is empty \(shape \(0, 4, 4\)\)"),
        (np.ones((3, 3, 3)), r"^vol: is constant \(every voxel equals 1\.0\)"),
        (_with_nans(3), r"^vol: contains 3 NaN and 0 infinite voxel\(s\) out of 336"),
        (_with_infs(), r"^vol: contains 0 NaN and 2 infinite voxel\(s\)"),
        (np.ones((3, 3, 3), dtype=complex), "unsupported data type complex128"),
        (np.ones((3, 3, 3), dtype=bool), "unsupported data type bool"),
        (np.ones((3, 3, 3), dtype=object), "unsupported data type object"),
        (np.zeros((3, 3, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), "unsupported"),
    ],
)
def test_check_volume_array_refuses(arr, match):
    with pytest.raises(VolumeError, match=match):
        check_volume_array(arr, name="vol")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float32, np.float64])
def test_check_volume_array_accepts_numeric_3d(dtype):
    arr = np.arange(24).reshape(2, 3, 4).astype(dtype)
    out = check_volume_array(arr)
    assert out.dtype == dtype and out.shape == (2, 3, 4)
    assert check_volume_array(arr[..., None]).shape == (2, 3, 4)


def test_volume_error_is_a_value_error():
    with pytest.raises(ValueError, match="^volume: is 2-D"):
        check_volume_array(np.ones((2, 2)))


# --- intensity normalisation -------------------------------------------------------


def test_normalize_intensity_scales_and_clips_outliers():
    arr = np.concatenate([np.linspace(0, 100, 998), [-1e6, 1e6]]).reshape(10, 10, 10)
    out = normalize_intensity(arr)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    # Outliers do not squash the bulk: the median maps near the middle.
    assert np.median(out) == pytest.approx(0.5, abs=0.01)


def test_normalize_intensity_falls_back_to_min_max():
    arr = np.zeros((10, 10, 10))
    arr[0, 0, 0] = 4.0  # 0.5 and 99.5 percentiles are both 0
    out = normalize_intensity(arr)
    assert out[0, 0, 0] == 1.0 and out.sum() == 1.0


def test_normalize_intensity_refuses_constant():
    with pytest.raises(VolumeError, match=r"is constant \(every voxel equals 2\.0\)"):
        normalize_intensity(np.full((3, 3, 3), 2.0))


@pytest.mark.parametrize(("low", "high"), [(-1, 50), (50, 50), (60, 40), (0, 101)])
def test_normalize_intensity_refuses_bad_percentiles(low, high):
    with pytest.raises(ValueError, match=f"low={low!r}, high={high!r}"):
        normalize_intensity(ramp(), low, high)


# --------------------------------------------------------------------------- NRRD


def write_nrrd(path, arr, **header):
    nrrd.write(str(path), np.asarray(arr), header)
    return path


@pytest.mark.parametrize(
    "header, voxel",
    [
        ({"space directions": np.diag([0.005, 0.005, 0.005]), "space units": ["mm"] * 3}, 5.0),
        ({"spacings": [4.0, 4.0, 4.0], "units": ["microns"] * 3}, 4.0),
        ({"spacings": [4.0, 4.0, 4.0], "units": ["um"] * 3}, 4.0),
    ],
)
def test_nrrd_spacing_is_read_with_its_unit(tmp_path, header, voxel):
    arr = ramp().astype(np.uint16)
    vol = read_volume(write_nrrd(tmp_path / "s.nrrd", arr, **header))
    assert vol.voxel_size_um == pytest.approx(voxel)
    np.testing.assert_array_equal(vol.data, arr)  # (x, y, z) kept, values kept


def test_anisotropic_nrrd_is_resampled(tmp_path):
    header = {"space directions": np.diag([0.005, 0.005, 0.01]), "space units": ["mm"] * 3}
    vol = read_volume(write_nrrd(tmp_path / "a.nrrd", ramp((6, 7, 8)), **header))
    assert vol.data.shape == (6, 7, 16) and vol.voxel_size_um == pytest.approx(5.0)


@pytest.mark.parametrize(
    "header, why",
    [
        ({}, "the header states no voxel spacing"),
        ({"spacings": [4.0, 4.0, 4.0]}, r"no spatial unit \(units: None\)"),
        ({"space directions": np.eye(3)}, r"no spatial unit \(space units: None\)"),
        ({"spacings": [4.0, 4.0, 4.0], "units": ["px"] * 3}, r"no spatial unit"),
        ({"spacings": [0.0, 4.0, 4.0], "units": ["mm"] * 3}, "not positive and finite"),
    ],
)
def test_nrrd_without_a_stated_voxel_size_asks_for_it(tmp_path, header, why):
    path = write_nrrd(tmp_path / "u.nrrd", ramp(), **header)
    with pytest.raises(VolumeError, match=rf"u\.nrrd: voxel size unknown: .*{why}.*voxel_size_um"):
        read_volume(path)
    assert read_volume(path, voxel_size_um=3.0).voxel_size_um == 3.0  # the manifest's


def test_a_4d_nrrd_is_refused(tmp_path):
    arr = np.zeros((4, 5, 6, 2), np.float32) + np.arange(2)
    with pytest.raises(VolumeError, match=r"w\.nrrd: .*4-D"):
        read_volume(write_nrrd(tmp_path / "w.nrrd", arr, spacings=[1.0] * 4), 1.0)


def test_corrupt_nrrd_is_named(tmp_path):
    path = tmp_path / "c.nrrd"
    path.write_bytes(b"NRRD0005\ntype: uint8\nsizes: 4 4 4\n\nshort")
    with pytest.raises(VolumeError, match=r"c\.nrrd: cannot be read"):
        read_volume(path, voxel_size_um=1.0)


# --- Zarr and OME-Zarr ---------------------------------------------------------------


def write_ome_zarr(path, zyx, scale=(1.0, 1.0, 1.0), unit="micrometer", *, version="0.4",
                   axes="zyx", levels=1):  # fmt: skip
    """An OME-Zarr image as labs export it: ``multiscales`` over levels ``0``, ``1``, ...
    (each half the last), written by zarr itself; NGFF 0.4 (Zarr v2) or 0.5 (Zarr v3)."""
    import zarr

    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    datasets, data = [], np.asarray(zyx)
    for level in range(levels):
        arr = root.create_array(str(level), shape=data.shape, dtype=data.dtype)
        arr[...] = data
        factor = 2.0**level
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [s * (factor if a in "zyx" else 1) for s, a in
                                        zip(scale, axes, strict=True)]}]})  # fmt: skip
        slices = tuple(slice(None, None, 2) if a in "zyx" else slice(None) for a in axes)
        data = data[slices]
    axis_list = [
        {"name": a, "type": "space" if a in "zyx" else ("channel" if a == "c" else "time"),
         **({"unit": unit} if unit and a in "zyx" else {})}
        for a in axes
    ]  # fmt: skip
    image = {"version": version, "axes": axis_list, "datasets": datasets}
    if version == "0.4":
        root.attrs["multiscales"] = [image]
    else:
        root.attrs["ome"] = {"version": version, "multiscales": [image]}
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_is_read_in_xyz_order_with_its_units(tmp_path, version):
    zyx = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6) + 1
    path = write_ome_zarr(tmp_path / "s.ome.zarr", zyx, (10.0, 5.0, 5.0), version=version)
    vol = read_volume(path, isotropic=False)
    np.testing.assert_array_equal(vol.data, zyx.transpose(2, 1, 0))  # (x, y, z)
    assert vol.spacing_um == (5.0, 5.0, 10.0) and vol.voxel_size_um == 5.0


def test_ome_zarr_reads_the_finest_level_and_converts_millimetres(tmp_path):
    zyx = np.random.default_rng(0).integers(1, 900, (8, 8, 8)).astype(np.uint16)
    path = write_ome_zarr(tmp_path / "m.zarr", zyx, (0.004,) * 3, "millimeter", levels=3)
    vol = read_volume(path)
    assert vol.data.shape == (8, 8, 8) and vol.voxel_size_um == pytest.approx(4.0)


def test_ome_zarr_singleton_time_and_channel_axes_are_dropped(tmp_path):
    tczyx = (np.arange(60, dtype=np.float32) + 1).reshape(1, 1, 3, 4, 5)
    path = write_ome_zarr(tmp_path / "t.zarr", tczyx, (1, 1, 2.0, 2.0, 2.0), axes="tczyx")
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, tczyx[0, 0].transpose(2, 1, 0))


def test_ome_zarr_with_several_channels_is_refused(tmp_path):
    czyx = (np.arange(120, dtype=np.float32) + 1).reshape(2, 3, 4, 5)
    path = write_ome_zarr(tmp_path / "c.zarr", czyx, (1, 2.0, 2.0, 2.0), axes="czyx")
    with pytest.raises(VolumeError, match=r"c\.zarr: has 2 images along axis 'c'"):
        read_volume(path)


def test_ome_zarr_without_units_needs_the_voxel_size(tmp_path):
    path = write_ome_zarr(tmp_path / "u.zarr", ramp((4, 5, 6)), (3.0, 3.0, 3.0), unit=None)
    with pytest.raises(VolumeError, match=r"u\.zarr: voxel size unknown: .*no spatial unit"):
        read_volume(path)
    assert read_volume(path, voxel_size_um=3.0).voxel_size_um == 3.0


def test_a_plain_zarr_array_is_a_stack_that_needs_the_voxel_size(tmp_path):
    import zarr

    zyx = ramp((4, 5, 6)).astype(np.float32)
    zarr.save_array(str(tmp_path / "plain.zarr"), zyx)
    with pytest.raises(VolumeError, match=r"plain\.zarr: voxel size unknown: .*carries none"):
        read_volume(tmp_path / "plain.zarr")
    vol = read_volume(tmp_path / "plain.zarr", voxel_size_um=2.0)
    np.testing.assert_allclose(vol.data, zyx.transpose(2, 1, 0))


def test_a_zarr_group_that_is_not_an_image_is_named(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").attrs["other"] = 1
    with pytest.raises(VolumeError, match=r"g\.zarr: a Zarr group without OME-NGFF"):
        read_volume(tmp_path / "g.zarr", voxel_size_um=1.0)


@pytest.mark.parametrize(
    ("max_side", "level", "side", "voxel"),
    [(None, 0, 16, 2.0), (100, 0, 16, 2.0), (16, 0, 16, 2.0), (8, 1, 8, 4.0), (7, 1, 8, 4.0),
     (4, 2, 4, 8.0),
     # the level still 5 wide (8³) holds more than two cubes of 5: binned by 2 as read
     (5, 1, 4, 8.0), (3, 2, 2, 16.0)],
)  # fmt: skip
def test_ome_zarr_is_read_at_the_coarsest_level_still_max_side_wide(
    tmp_path, max_side, level, side, voxel
):
    zyx = np.random.default_rng(1).integers(1, 900, (16, 16, 16)).astype(np.uint16)
    path = write_ome_zarr(tmp_path / "p.zarr", zyx, (2.0,) * 3, levels=3)
    vol = read_volume(path, max_side=max_side)
    assert vol.level == level and vol.data.shape == (side,) * 3
    assert vol.voxel_size_um == pytest.approx(voxel)  # the level's own voxel size


@pytest.mark.parametrize("axes", ["zyx", "tczyx"])
def test_a_single_level_ome_zarr_too_large_is_binned_as_it_is_read(tmp_path, axes):
    """A store of one level cannot be read coarser from its pyramid: it is averaged by
    blocks as it is read, like a plain array, and its voxel size scaled."""
    zyx = np.random.default_rng(3).integers(1, 900, (24, 20, 22)).astype(np.uint16)
    data = zyx if axes == "zyx" else zyx[None, None]
    scale = (3.0, 2.0, 2.0) if axes == "zyx" else (1, 1, 3.0, 2.0, 2.0)
    path = write_ome_zarr(tmp_path / "one.zarr", data, scale, axes=axes)
    full = read_volume(path, isotropic=False)
    # 10,560 voxels, where two cubes of 5 are 250: blocks of 4 leave 6 x 5 x 5
    vol = read_volume(path, max_side=5, isotropic=False)
    assert vol.level == 0 and vol.binned == 4
    assert vol.spacing_um == pytest.approx((8.0, 8.0, 12.0))
    np.testing.assert_allclose(vol.data, block_mean(full.data, 4), rtol=1e-6)


def test_a_manifest_voxel_size_is_scaled_to_the_level_read(tmp_path):
    zyx = np.random.default_rng(2).integers(1, 900, (16, 16, 16)).astype(np.uint16)
    path = write_ome_zarr(tmp_path / "n.zarr", zyx, (2.0,) * 3, unit=None, levels=2)
    vol = read_volume(path, voxel_size_um=3.0, max_side=8)  # 3 µm at the finest level
    assert vol.level == 1 and vol.voxel_size_um == pytest.approx(6.0)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_max_side_must_be_a_positive_integer(tmp_path, bad):
    path = write_ome_zarr(tmp_path / "b.zarr", ramp((4, 4, 4)), (1.0,) * 3)
    with pytest.raises(ValueError, match=r"b\.zarr: max_side must be an integer >= 1"):
        read_volume(path, max_side=bad)


# --- large scans: binned while they are read -----------------------------------------


def block_mean(arr, f):
    """The reference: f×f×f block means, the remainders at the far edges left out."""
    a, b, c = (s // f * f for s in arr.shape)
    blocks = np.asarray(arr[:a, :b, :c], np.float64).reshape(a // f, f, b // f, f, c // f, f)
    return blocks.mean(axis=(1, 3, 5))


def _write_as(kind, path, xyz, voxel=5.0):
    """`xyz` written in one of the formats read_volume bins; returns what to read."""
    import zarr

    zyx = np.ascontiguousarray(np.asarray(xyz).transpose(2, 1, 0))
    if kind in ("nii", "nii.gz"):
        return write_nifti(path / f"v.{kind}", xyz, voxel)
    if kind == "tif":
        tifffile.imwrite(path / "v.tif", zyx)
        return path / "v.tif"
    if kind == "folder":
        folder = path / "slices"
        folder.mkdir()
        for i, plane in enumerate(zyx):
            cv2.imwrite(str(folder / f"s_{i:04d}.png"), plane)
        return folder
    if kind == "nrrd":
        nrrd.write(str(path / "v.nrrd"), np.asarray(xyz),
                   {"spacings": [voxel / 1000] * 3, "units": ["mm"] * 3})  # fmt: skip
        return path / "v.nrrd"
    store = zarr.open_array(str(path / "v.zarr"), mode="w", shape=zyx.shape, dtype=zyx.dtype,
                            chunks=(4, 16, 16))  # fmt: skip
    store[...] = zyx
    return path / "v.zarr"


@pytest.mark.parametrize("kind", ["nii", "nii.gz", "tif", "folder", "nrrd", "zarr"])
def test_a_large_scan_is_binned_as_it_is_read(tmp_path, kind):
    xyz = np.random.default_rng(0).integers(0, 60000, (38, 33, 41)).astype(np.uint16)
    path = _write_as(kind, tmp_path, xyz)
    full = read_volume(path, voxel_size_um=5.0)
    binned = read_volume(path, voxel_size_um=5.0, max_side=10)  # 41 // 10: blocks of 4
    assert full.binned == 1 and binned.binned == 4
    assert binned.data.shape == (9, 8, 10) and binned.data.dtype == np.float32
    np.testing.assert_allclose(binned.data, block_mean(full.data, 4), rtol=1e-6)
    assert binned.voxel_size_um == pytest.approx(20.0)
    # a scan no larger than asked is read as it is
    same = read_volume(path, voxel_size_um=5.0, max_side=41)
    assert same.binned == 1 and np.array_equal(same.data, full.data)


def test_a_binned_header_voxel_size_is_scaled_too(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", ramp((20, 24, 22)), (2.0, 2.0, 2.0))
    vol = read_volume(path, max_side=8)  # 24 // 8 = 3
    assert vol.binned == 3 and vol.voxel_size_um == pytest.approx(6.0)
    assert vol.data.shape == (6, 8, 7)


def test_binning_reads_one_slab_at_a_time():
    from foramlib.io import volumes

    asked = []
    planes = np.arange(7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5)

    def slab(start, stop):
        asked.append((start, stop))
        return planes[start:stop]

    out = volumes._binned(slab, len(planes), 3)
    assert asked == [(0, 3), (3, 6)]  # the 7th plane is the remainder, never read
    assert out.flags.c_contiguous  # in (x, y, z) order: the slowest axis last
    np.testing.assert_allclose(out, np.moveaxis(block_mean(planes, 3), 0, -1))


def test_binning_keeps_the_scaling_of_a_nifti_and_its_checks(tmp_path):
    scaled = write_nifti(tmp_path / "s.nii", ramp((16, 16, 16), -2.0, 3.0), 5.0)
    full = read_volume(scaled)
    np.testing.assert_allclose(read_volume(scaled, max_side=8).data, block_mean(full.data, 2),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    bad = np.ones((16, 16, 16), np.float32)
    bad[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(VolumeError, match="nan.nii: contains 1 NaN"):
        read_volume(tmp_path / "nan.nii", voxel_size_um=5.0, max_side=8)


def test_a_4d_nifti_of_one_volume_is_binned_too(tmp_path):
    data = ramp((12, 12, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(data[..., None], np.eye(4)), tmp_path / "one.nii")
    vol = read_volume(tmp_path / "one.nii", voxel_size_um=3.0, max_side=6)
    assert vol.binned == 2 and vol.voxel_size_um == pytest.approx(6.0)
    np.testing.assert_allclose(vol.data, block_mean(data, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "encoding, detached, streamed",
    [("raw", False, True), ("gzip", False, True), ("raw", True, True), ("bzip2", False, False),
     ("ascii", False, False)],
)  # fmt: skip
def test_a_large_nrrd_is_binned_as_it_is_read_where_its_encoding_allows(
    tmp_path, monkeypatch, encoding, detached, streamed
):
    from foramlib.io import volumes

    xyz = np.random.default_rng(4).integers(0, 4000, (21, 17, 19)).astype(np.int16)
    path = tmp_path / ("v.nhdr" if detached else "v.nrrd")
    nrrd.write(str(path), xyz, {"spacings": [0.005] * 3, "units": ["mm"] * 3,
                                "encoding": encoding}, detached_header=detached)  # fmt: skip
    used = []
    real = volumes._nrrd_slabs
    monkeypatch.setattr(volumes, "_nrrd_slabs", lambda *a: used.append(real(*a)) or used[-1])
    vol = read_volume(path, max_side=10)  # 21 // 10: blocks of 2
    assert (used[0] is not None) is streamed  # else binned after a whole read
    assert vol.binned == 2 and vol.voxel_size_um == pytest.approx(10.0)
    np.testing.assert_allclose(vol.data, block_mean(xyz, 2), rtol=1e-6)
    np.testing.assert_array_equal(read_volume(path).data, xyz.astype(np.float32))


@pytest.mark.parametrize(
    ("shape", "max_side", "factor"),
    [
        ((2048, 2048, 2048), 512, 4),  # the largest side brought to max_side
        ((1600, 1600, 1600), 512, 3),  # ... and no further: 533³
        ((2047, 2047, 2047), 512, 4),  # 682³ (the side rule's) is 2.4 cubes: 511³
        ((512, 512, 512), 512, 1),  # no larger than asked: as it is
        ((640, 640, 640), 512, 1),  # 1.02 GB as float32: within two cubes of 512
        ((1000, 1000, 1000), 512, 2),  # would be read whole by the side rule: 4 GB
        ((1023, 1023, 1023), 512, 2),
        ((1500, 1500, 1500), 512, 3),  # 750³ (the side rule's) is 3.2 cubes
        ((5000, 300, 300), 512, 9),  # a long scan: its side decides
        ((38, 33, 41), 10, 4),
    ],
)
def test_binning_keeps_the_working_set_bounded_whatever_the_shape(shape, max_side, factor):
    from foramlib.io.volumes import MAX_BINNED_CUBES, binning_factor

    f = binning_factor(shape, max_side)
    assert f == factor
    binned = [s // f for s in shape]
    assert np.prod(binned, dtype=float) <= MAX_BINNED_CUBES * max_side**3
    assert (
        max(binned) >= max_side
        or f == 1
        or np.prod([s // (f - 1) for s in shape], dtype=float) > MAX_BINNED_CUBES * max_side**3
    )  # a coarser factor only where the volume needs it
