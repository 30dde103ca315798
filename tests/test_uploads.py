"""foramlib.io.uploads: an uploaded file's bytes to an image or a volume."""

import gzip
import io

import cv2
import nibabel as nib
import numpy as np
import pytest
import tifffile

from foramlib.io import uploads


def _png(img):
    return cv2.imencode(".png", img)[1].tobytes()


def _disc(shape=(80, 100)):
    """A bright disc with a dim core on black: a section-like picture."""
    img = np.zeros(shape, np.uint8)
    cv2.circle(img, (shape[1] // 2, shape[0] // 2), 25, 200, -1)
    cv2.circle(img, (shape[1] // 2, shape[0] // 2), 8, 50, -1)
    return img


@pytest.mark.parametrize(
    ("name", "encode", "dtype"),
    [
        ("a.png", lambda im: _png(im), np.uint8),
        ("a16.png", lambda im: _png(im.astype(np.uint16) * 257), np.uint16),
        ("a.jpg", lambda im: cv2.imencode(".jpg", im)[1].tobytes(), np.uint8),
        ("a.tif", lambda im: _tiff(im.astype(np.uint16) * 257), np.uint16),
        (
            "lzw.tif",
            lambda im: cv2.imencode(".tif", im.astype(np.uint16) * 257)[1].tobytes(),
            np.uint16,
        ),
    ],
)
def test_decode_images_keep_pixel_type(name, encode, dtype):
    img = _disc()
    out = uploads.decode_upload(name, encode(img))
    assert isinstance(out, np.ndarray)
    assert out.dtype == dtype and out.shape == img.shape


def _tiff(arr):
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def test_decode_colour_png_is_rgb():
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    out = uploads.decode_upload("red.png", _png(bgr))
    assert out[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("compress", [False, True])
def test_decode_nifti_volume_and_section(compress):
    vol = np.zeros((20, 24, 28), np.float32)
    vol[5:15, 6:18, 7:21] = 1.0
    raw = nib.Nifti1Image(vol, np.eye(4)).to_bytes()
    data = gzip.compress(raw) if compress else raw
    out = uploads.decode_upload("scan.nii.gz" if compress else "scan.nii", data)
    assert isinstance(out, uploads.VolumeUpload)
    assert out.shape == (20, 24, 28)
    assert out.section(2, 14).shape == (20, 24)
    with pytest.raises(uploads.UploadError, match=r"0\.\.27, got 28"):
        out.section(2, 28)


def test_decode_tiff_stack_is_a_volume():
    stack = np.zeros((5, 30, 40), np.uint16)
    out = uploads.decode_upload("stack.tif", _tiff(stack + 1))
    assert isinstance(out, uploads.VolumeUpload) and out.shape == (40, 30, 5)


def _nrrd_bytes(arr, tmp_path, **header):
    import nrrd

    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), arr, header)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("header", "spacing"),
    [
        ({"space directions": np.diag([0.005, 0.005, 0.01]), "space units": ["mm"] * 3},
         (5.0, 5.0, 10.0)),
        ({"spacings": [0.005] * 3}, None),  # no unit: taken as isotropic, never as mm
    ],
)  # fmt: skip
def test_decode_nrrd_volume(tmp_path, header, spacing):
    vol = np.zeros((20, 24, 28), np.uint16)
    vol[5:15, 6:18, 7:21] = 900
    out = uploads.decode_upload("scan.nrrd", _nrrd_bytes(vol, tmp_path, **header))
    assert isinstance(out, uploads.VolumeUpload) and out.shape == (20, 24, 28)
    assert out.spacing_um == spacing
    np.testing.assert_array_equal(out.data, vol)  # (x, y, z), as read_volume gives it


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("notes.txt", b"hello world", r"notes\.txt: not a readable image"),
        (
            "bad.nrrd",
            b"NRRD0005\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\nxx",
            r"bad\.nrrd: .* readable NRRD",
        ),
        (
            "flat.nrrd",
            b"NRRD0005\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\n\n" + b"x" * 16,
            r"flat\.nrrd: is 2-D \(shape \(4, 4\)\); expected a 3-D volume",
        ),
        ("empty.png", b"", r"empty\.png: the file is empty"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, r"broken\.png: the PNG file is corrupt"),
        ("bad.nii.gz", gzip.compress(b"x" * 400, mtime=0), r"bad\.nii\.gz: .* readable NIfTI"),
        ("bad.tif", b"II*\x00" + b"\xff" * 20, r"bad\.tif: not a readable TIFF"),
    ],
)
def test_decode_rejects_non_images(name, data, match):
    with pytest.raises(uploads.UploadError, match=match):
        uploads.decode_upload(name, data)


def test_decode_refuses_oversized_upload():
    with pytest.raises(uploads.UploadError, match=r"big\.png: .* too large; the limit is 1 MB"):
        uploads.decode_upload("big.png", b"\x89PNG" + b"\0" * (2 * 2**20), max_bytes=2**20)


_ENCODERS = {
    "a.png": _png,
    "a.jpg": lambda im: cv2.imencode(".jpg", im)[1].tobytes(),
    "a.bmp": lambda im: cv2.imencode(".bmp", im)[1].tobytes(),
    "a.tif": lambda im: _tiff(im),
}


@pytest.mark.parametrize("name", sorted(_ENCODERS))
def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(name, monkeypatch):
    data = _ENCODERS[name](_disc((80, 100)))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(uploads.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(uploads, "_decode_tiff", no_decoding)
    with pytest.raises(
        uploads.UploadError,
        match=rf"{name}: 100 × 80 pixels \(0 megapixels\) is more than the limit of "
        r"0\.005 megapixels \(FORAM_MAX_IMAGE_MP\); shrink the image first",
    ):
        uploads.decode_upload(name, data, max_pixels=5000)


@pytest.mark.parametrize("name", sorted(_ENCODERS))
def test_an_image_within_the_pixel_limit_is_decoded(name):
    decoded = uploads.decode_upload(name, _ENCODERS[name](_disc((80, 100))), max_pixels=8000)
    assert decoded.shape == (80, 100)


def test_the_pixel_limit_comes_from_the_environment(monkeypatch):
    data = _png(_disc((80, 100)))
    monkeypatch.setenv("FORAM_MAX_IMAGE_MP", "0.004")
    assert uploads.image_pixel_limit() == 4000
    with pytest.raises(uploads.UploadError, match=r"limit of 0\.004 megapixels"):
        uploads.decode_upload("a.png", data)
    monkeypatch.setenv("FORAM_MAX_IMAGE_MP", "0.008")
    assert uploads.decode_upload("a.png", data).shape == (80, 100)
    monkeypatch.delenv("FORAM_MAX_IMAGE_MP")
    assert uploads.image_pixel_limit() == 100_000_000


@pytest.mark.parametrize("value", ["lots", "0", "-3", "inf", "nan"])
def test_a_bad_pixel_limit_in_the_environment_is_named(value, monkeypatch):
    monkeypatch.setenv("FORAM_MAX_IMAGE_MP", value)
    with pytest.raises(ValueError, match=rf"FORAM_MAX_IMAGE_MP = '{value}' is invalid"):
        uploads.decode_upload("a.png", _png(_disc()))


def test_a_header_without_a_size_is_still_held_to_the_limit(monkeypatch):
    """Where the header cannot tell (imagesize gives -1), the decoded size is checked."""
    monkeypatch.setattr(uploads.imagesize, "get", lambda f: (-1, -1))
    with pytest.raises(uploads.UploadError, match="a.png: 100 × 80 pixels"):
        uploads.decode_upload("a.png", _png(_disc((80, 100))), max_pixels=5000)


def test_a_stack_of_small_pages_is_a_volume_not_a_big_image():
    stack = np.stack([_disc((40, 50)).astype(np.uint16)] * 30)  # 30 pages of 2000 px
    decoded = uploads.decode_upload("stack.tif", _tiff(stack), max_pixels=5000)
    assert isinstance(decoded, uploads.VolumeUpload) and decoded.shape == (50, 40, 30)


@pytest.mark.parametrize(
    ("unit", "zoom", "expected"),
    [
        ("mm", 0.005, (5.0, 5.0, 5.0)),  # the header's unit is honoured: µm, not mm
        ("micron", 7.0, (7.0, 7.0, 7.0)),
        ("unknown", 0.005, None),  # no unit: no voxel size, never millimetres
    ],
)
def test_uploaded_nifti_voxel_size_in_micrometres_only_when_stated(unit, zoom, expected):
    vol = np.zeros((12, 12, 12), np.float32)
    vol[3:9, 3:9, 3:9] = 1.0
    img = nib.Nifti1Image(vol, np.diag([zoom] * 3 + [1]))
    img.header.set_xyzt_units(unit)
    out = uploads.decode_upload("scan.nii", img.to_bytes())
    assert out.spacing_um == pytest.approx(expected) if expected else out.spacing_um is None
    assert out.voxel_size_um == (pytest.approx(expected[0]) if expected else None)


def test_a_detached_nrrd_header_is_refused_with_the_fix():
    data = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: v.raw\n\n"
    with pytest.raises(
        uploads.UploadError, match=r"h\.nhdr: a detached NRRD header .* single-file"
    ):
        uploads.decode_upload("h.nhdr", data)


def test_uploaded_volumes_get_the_file_readers_checks():
    const = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_bytes()
    with pytest.raises(uploads.UploadError, match=r"c\.nii: is constant"):
        uploads.decode_upload("c.nii", const)


def _scan(shape=(40, 36, 30)):
    """A uint16 volume with structure on every axis (binning must average it right)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (1000 + 40 * x + 7 * y + 3 * (z % 11)).astype(np.uint16)


def _nrrd_file(tmp_path, vol, encoding):
    import nrrd

    path = tmp_path / f"v-{encoding}.nrrd"
    nrrd.write(str(path), vol, {"encoding": encoding, "spacings": [4.0] * 3, "units": ["um"] * 3})
    return path


def _volume_files(tmp_path, vol):
    """The same scan as each uploadable volume format: name → path on disk."""
    img = nib.Nifti1Image(vol, np.diag([0.004] * 3 + [1]))
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "v.nii")
    nib.save(img, tmp_path / "v.nii.gz")
    tifffile.imwrite(tmp_path / "v.tif", vol.transpose(2, 1, 0))  # pages are z
    return {
        "v.nii": tmp_path / "v.nii",
        "v.nii.gz": tmp_path / "v.nii.gz",
        "v-raw.nrrd": _nrrd_file(tmp_path, vol, "raw"),
        "v-gzip.nrrd": _nrrd_file(tmp_path, vol, "gzip"),
        "v.tif": tmp_path / "v.tif",
    }


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v-raw.nrrd", "v-gzip.nrrd", "v.tif"])
def test_a_large_uploaded_volume_is_binned_as_the_file_reader_bins_it(name, tmp_path):
    from foramlib.io.volumes import read_volume

    vol = _scan()
    path = _volume_files(tmp_path, vol)[name]
    up = uploads.decode_upload(name, path.read_bytes(), volume_max_side=12)
    assert isinstance(up, uploads.VolumeUpload)
    assert up.binned == 3 and up.shape == (13, 12, 10)
    # the block mean of the stored values, as read_volume gives it from the file
    expected = vol[:39, :36, :30].reshape(13, 3, 12, 3, 10, 3).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(up.data, expected, rtol=1e-6)
    on_disk = read_volume(path, voxel_size_um=4.0, max_side=12)
    np.testing.assert_allclose(up.data, on_disk.data, rtol=1e-6)
    if name != "v.tif":  # a TIFF stack states no voxel size
        assert up.spacing_um == pytest.approx((12.0, 12.0, 12.0))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v-raw.nrrd", "v-gzip.nrrd", "v.tif"])
def test_a_volume_within_the_side_is_read_whole(name, tmp_path):
    vol = _scan((20, 18, 16))
    up = uploads.decode_upload(name, _volume_files(tmp_path, vol)[name].read_bytes())
    assert up.binned == 1
    np.testing.assert_array_equal(up.data, vol.astype(np.float32))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v-raw.nrrd", "v-gzip.nrrd", "v.tif"])
def test_a_volume_over_the_voxel_limit_is_refused_with_the_fix(name, tmp_path):
    data = _volume_files(tmp_path, _scan())[name].read_bytes()
    with pytest.raises(
        uploads.ScanTooLarge,
        match=rf"{name}: 40 × 36 × 30 voxels \(43,200 voxels\) is more than the limit of "
        r"40,000 voxels \(FORAM_MAX_VOLUME_MVOX\); crop or bin",
    ):
        uploads.decode_upload(name, data, max_voxels=40_000)


def test_a_gzip_bomb_is_refused_from_its_header_before_anything_is_unpacked():
    """A header claiming 4000³ voxels in a few bytes: refused by size, not decompressed."""
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    img.header.set_data_shape((4000, 4000, 4000))
    bomb = gzip.compress(img.header.binaryblock + b"\0" * 4, mtime=0)
    with pytest.raises(uploads.ScanTooLarge, match=r"bomb\.nii\.gz: 4000 × 4000 × 4000 voxels"):
        uploads.decode_upload("bomb.nii.gz", bomb)


def test_the_voxel_limit_comes_from_the_environment(monkeypatch, tmp_path):
    data = _volume_files(tmp_path, _scan((20, 18, 16)))["v.nii"].read_bytes()
    monkeypatch.setenv("FORAM_MAX_VOLUME_MVOX", "0.005")
    assert uploads.volume_voxel_limit() == 5000
    with pytest.raises(uploads.ScanTooLarge, match="limit of 5,000 voxels"):
        uploads.decode_upload("v.nii", data)
    monkeypatch.setenv("FORAM_MAX_VOLUME_MVOX", "0.006")
    assert uploads.decode_upload("v.nii", data).shape == (20, 18, 16)
    monkeypatch.setenv("FORAM_MAX_VOLUME_MVOX", "none")
    with pytest.raises(ValueError, match=r"FORAM_MAX_VOLUME_MVOX = 'none' is invalid"):
        uploads.decode_upload("v.nii", data)
    monkeypatch.delenv("FORAM_MAX_VOLUME_MVOX")
    assert uploads.volume_voxel_limit() == 2_048_000_000


def test_uploads_are_binned_to_the_side_foram_classify_reads_scans_at():
    from foramlib.inference import scan

    assert uploads.UPLOAD_VOLUME_SIDE == scan.SCAN_READ_SIDE
