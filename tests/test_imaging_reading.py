"""Tests for epee_annotate.image_decoding: DICOM, raster and .npz decoding."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from epee_annotate.imaging import DecodedImage, ImageReadError, is_dicom, load_npz_split, read_image


def _path(name: str) -> str:
    """Path of a bundled pydicom test file (never downloads)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not available offline")
    return path


def _ds(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(_path(name))


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _one(source, **kwargs) -> np.ndarray:
    (img,) = read_image(source, **kwargs)
    assert img.pixels.dtype == np.float32
    assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    return img.pixels


def _percentile_window(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [0.5, 99.5])
    return np.clip((values - lo) / (hi - lo), 0, 1)


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    # PS3.3 C.11.2.1.2.1 LINEAR, written out independently of pydicom.
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


# --- DICOM grayscale -------------------------------------------------------------------------


def test_ct_rescale_then_percentile_window():
    ds = _ds("CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    pixels = _one(_path("CT_small.dcm"))
    assert pixels.shape == (128, 128)
    np.testing.assert_allclose(pixels, _percentile_window(hu), atol=1e-6)


def test_ct_explicit_window_applied_after_rescale():
    ds = _ds("CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    np.testing.assert_allclose(_one(_to_bytes(ds)), _linear_window(hu, 40, 400), atol=1e-6)


def test_first_window_used_when_multivalued():
    ds = _ds("CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.WindowCenter, ds.WindowWidth = [40, 500], [400, 2000]
    np.testing.assert_allclose(_one(_to_bytes(ds)), _linear_window(hu, 40, 400), atol=1e-6)


def test_voi_lut_sequence_scaled_by_lut_range():
    ds = _ds("MR_small.dcm")
    raw = ds.pixel_array
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 12])
    item.add_new("LUTData", "US", list(range(4096)))  # identity LUT; inputs above 4095 clip to the last entry
    ds.VOILUTSequence = pydicom.Sequence([item])
    expected = np.clip(raw, 0, 4095) / 4095.0
    np.testing.assert_allclose(_one(_to_bytes(ds)), expected, atol=1e-6)


def test_mr_uses_file_window():
    ds = _ds("MR_small.dcm")
    expected = _linear_window(ds.pixel_array.astype(np.float64), float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(_one(_path("MR_small.dcm")), expected, atol=1e-6)


def test_rle_decodes_equal_to_uncompressed():
    np.testing.assert_array_equal(_one(_path("MR_small_RLE.dcm")), _one(_path("MR_small.dcm")))


def test_monochrome1_is_inverted_after_voi():
    ds = _ds("MR_small.dcm")
    original = _one(_to_bytes(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(_one(_to_bytes(ds)), 1.0 - original, atol=1e-6)


def test_real_monochrome1_chest_cr():
    pytest.importorskip("data_store", reason="pydicom-data (RG1_UNCR.dcm) not installed")
    ds = _ds("RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    pixels = _one(_path("RG1_UNCR.dcm"))
    assert pixels.shape == (1955, 1841)
    windowed = _linear_window(ds.pixel_array.astype(np.float64), float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(pixels, 1.0 - windowed, atol=1e-6)


# --- multi-frame and colour DICOM -----------------------------------------------------------


def test_multiframe_middle_all_mip():
    vol = _ds("rtdose.dcm").pixel_array.astype(np.float64)
    assert vol.shape == (15, 10, 10)
    (middle,) = read_image(_path("rtdose.dcm"))
    assert middle.frame == 7 and middle.pixels.shape == (10, 10)
    np.testing.assert_allclose(middle.pixels, _percentile_window(vol[7]), atol=1e-6)

    every = read_image(_path("rtdose.dcm"), frames="all")
    assert [im.frame for im in every] == list(range(15))
    assert all(im.pixels.shape == (10, 10) for im in every)
    np.testing.assert_array_equal(every[7].pixels, middle.pixels)

    (mip,) = read_image(_path("rtdose.dcm"), frames="mip")
    assert mip.frame is None and mip.pixels.shape == (10, 10)
    np.testing.assert_allclose(mip.pixels, _percentile_window(vol).max(axis=0), atol=1e-6)


def test_rgb_rle_multiframe():
    raw = _ds("SC_rgb_rle_2frame.dcm").pixel_array
    images = read_image(_path("SC_rgb_rle_2frame.dcm"), frames="all")
    assert [im.frame for im in images] == [0, 1]
    for im, frame in zip(images, raw):
        assert im.pixels.shape == (100, 100, 3)
        np.testing.assert_allclose(im.pixels, frame / 255.0, atol=1e-6)
    (middle,) = read_image(_path("SC_rgb_rle_2frame.dcm"))
    assert middle.frame == 1


def test_ybr_is_converted_to_rgb():
    rgb = _one(_path("SC_rgb.dcm"))
    ybr = _one(_path("SC_ybr_full_422_uncompressed.dcm"))
    assert ybr.shape == rgb.shape == (100, 100, 3)
    assert np.abs(ybr - rgb).max() < 12 / 255  # 4:2:2 chroma subsampling is lossy at edges
    np.testing.assert_allclose(rgb[50, 50], [128 / 255, 128 / 255, 1.0], atol=1e-6)


def test_palette_color_uses_lut():
    ds = _ds("examples_palette.dcm")
    pixels = _one(_path("examples_palette.dcm"))
    assert pixels.shape == (350, 800, 3)
    np.testing.assert_allclose(pixels, apply_color_lut(ds.pixel_array, ds) / 65535.0, atol=1e-6)


def test_jpeg2000_decodes_when_a_plugin_is_available():
    # Pillow wheels bundle OpenJPEG, which pydicom 3 uses for JPEG 2000.
    ds = _ds("JPEG2000.dcm")
    np.testing.assert_allclose(_one(_path("JPEG2000.dcm")), _percentile_window(ds.pixel_array.astype(float)), atol=1e-6)


def test_missing_decoder_names_syntax_and_extra(monkeypatch):
    from types import SimpleNamespace

    from epee_annotate import image_decoding
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:  # the codecs extra is installed: take it away for this test
        missing = SimpleNamespace(is_available=False, missing_dependencies=["pylibjpeg - requires pylibjpeg-libjpeg"])
        monkeypatch.setattr(image_decoding, "get_decoder", lambda uid: missing)
    with pytest.raises(ImageReadError) as err:
        read_image(_path("MR_small_jpeg_ls_lossless.dcm"))
    msg = str(err.value)
    assert "JPEG-LS Lossless Image Compression" in msg and "1.2.840.10008.1.2.4.80" in msg
    assert 'pip install "epee-annotate[dicom-codecs]"' in msg
    assert "\n" not in msg


# --- metadata --------------------------------------------------------------------------------


def test_metadata_is_non_phi_by_default():
    ds = _ds("CT_small.dcm")
    (img,) = read_image(_path("CT_small.dcm"))
    assert img.frame is None
    assert img.metadata == {
        "SOPInstanceUID": ds.SOPInstanceUID,
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "Modality": "CT",
        "BodyPartExamined": "",
    }
    assert not any(str(ds.PatientName) in v or ds.PatientID in v for v in img.metadata.values())


def test_metadata_extra_tags_added_as_strings():
    (img,) = read_image(_path("CT_small.dcm"), extra_tags=("PatientName", "StudyDate", "OperatorsName"))
    assert img.metadata["PatientName"] == "CompressedSamples^CT1"
    assert img.metadata["StudyDate"] == "20040119"
    assert img.metadata["OperatorsName"] == ""


def test_invalid_arguments_are_value_errors():
    with pytest.raises(ValueError, match="frames"):
        read_image(_path("CT_small.dcm"), frames="first")
    with pytest.raises(ValueError, match="keyword"):
        read_image(_path("CT_small.dcm"), extra_tags=("NotAKeyword",))


# --- raster ----------------------------------------------------------------------------------


def _save(tmp_path, img: Image.Image, fmt: str, name: str = "img") -> str:
    path = tmp_path / f"{name}.{fmt.lower()}"
    img.save(path, fmt)
    return str(path)


def test_png_l_and_bytes_input(tmp_path):
    arr = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(arr), "PNG")
    pixels = _one(path)
    assert pixels.shape == (2, 2)
    np.testing.assert_allclose(pixels, arr / 255.0, atol=1e-7)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(_one(fh.read()), pixels)
    assert read_image(path)[0].frame is None and read_image(path)[0].metadata == {}


def test_png_mode_1(tmp_path):
    arr = np.array([[True, False], [False, True]])
    img = Image.fromarray(arr)
    assert img.mode == "1"
    np.testing.assert_array_equal(_one(_save(tmp_path, img, "PNG")), arr.astype(np.float32))


def test_png_palette_to_rgb(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="L").convert("P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pixels = _one(_save(tmp_path, img, "PNG"))
    assert pixels.shape == (2, 2, 3)
    np.testing.assert_array_equal(pixels[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(pixels[0, 1], [0, 0, 1])


def test_png_palette_transparency_composited_on_white(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="L").convert("P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.info["transparency"] = 0
    path = tmp_path / "t.png"
    img.save(path, transparency=0)
    pixels = _one(str(path))
    np.testing.assert_array_equal(pixels[0, 0], [1, 1, 1])
    np.testing.assert_array_equal(pixels[0, 1], [0, 0, 1])


def test_png_rgb(tmp_path):
    arr = np.array([[[255, 0, 0], [0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(_one(_save(tmp_path, Image.fromarray(arr), "PNG")), arr / 255.0, atol=1e-7)


def test_png_rgba_composited_on_white(tmp_path):
    arr = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    pixels = _one(_save(tmp_path, Image.fromarray(arr, mode="RGBA"), "PNG"))
    assert pixels.shape == (1, 3, 3)
    np.testing.assert_allclose(pixels[0, 0], [1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(pixels[0, 1], [0, 0, 1], atol=1e-7)
    np.testing.assert_allclose(pixels[0, 2], [1 - 128 / 255] * 3, atol=1e-6)


def test_png_la_composited_on_white_stays_grayscale(tmp_path):
    arr = np.array([[[0, 0], [0, 255], [200, 255]]], dtype=np.uint8)
    pixels = _one(_save(tmp_path, Image.fromarray(arr, mode="LA"), "PNG"))
    assert pixels.shape == (1, 3)
    np.testing.assert_allclose(pixels[0], [1, 0, 200 / 255], atol=1e-6)


def test_png_16bit_grayscale(tmp_path):
    arr = np.array([[0, 1000], [65535, 30000]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    np.testing.assert_allclose(_one(_save(tmp_path, img, "PNG")), arr / 65535.0, atol=1e-7)


def test_tiff_16bit_big_endian(tmp_path):
    arr = np.array([[0, 1000], [65535, 30000]], dtype=">u2")
    img = Image.frombytes("I;16B", (2, 2), arr.tobytes())
    path = _save(tmp_path, img, "TIFF")
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16B"
    np.testing.assert_allclose(_one(path), arr.astype(np.float64) / 65535.0, atol=1e-7)


def test_tiff_mode_i_fits_16bit_range(tmp_path):
    arr = np.array([[0, 1000], [65535, 30000]], dtype=np.int32)
    path = _save(tmp_path, Image.fromarray(arr, mode="I"), "TIFF")
    with Image.open(path) as reopened:
        assert reopened.mode == "I"
    np.testing.assert_allclose(_one(path), arr / 65535.0, atol=1e-7)


def test_tiff_mode_i_out_of_range_uses_min_max(tmp_path):
    arr = np.array([[-1000, 0], [100000, 49500]], dtype=np.int32)
    path = _save(tmp_path, Image.fromarray(arr, mode="I"), "TIFF")
    np.testing.assert_allclose(_one(path), (arr + 1000) / 101000.0, atol=1e-7)


def test_tiff_mode_f(tmp_path):
    inside = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(_one(_save(tmp_path, Image.fromarray(inside, mode="F"), "TIFF", "in")), inside)
    outside = np.array([[-2.0, 0.0], [2.0, 6.0]], dtype=np.float32)
    np.testing.assert_allclose(
        _one(_save(tmp_path, Image.fromarray(outside, mode="F"), "TIFF", "out")), (outside + 2) / 8, atol=1e-7
    )


def test_tiff_cmyk_to_rgb(tmp_path):
    img = Image.new("CMYK", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 255, 0, 0))
    pixels = _one(_save(tmp_path, img, "TIFF"))
    np.testing.assert_array_equal(pixels, [[[1, 1, 1], [1, 0, 1]]])


def test_bmp_rgb(tmp_path):
    arr = np.array([[[10, 20, 30], [200, 100, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(_one(_save(tmp_path, Image.fromarray(arr), "BMP")), arr / 255.0, atol=1e-7)


def test_jpeg_gray_and_colour(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    gray = _one(_save(tmp_path, Image.fromarray(ramp), "JPEG", "g"))
    assert gray.shape == (32, 32)
    np.testing.assert_allclose(gray, ramp / 255.0, atol=0.05)
    colour = _one(_save(tmp_path, Image.fromarray(np.stack([ramp] * 3, axis=-1)), "JPEG", "c"))
    assert colour.shape == (32, 32, 3)


def test_jpeg_exif_orientation_applied(tmp_path):
    img = Image.fromarray(np.tile(np.arange(0, 240, 40, dtype=np.uint8), (4, 1)))  # 4 x 6
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert _one(str(path)).shape == (6, 4)


# --- bad input -------------------------------------------------------------------------------


def _raises(source, match: str, **kwargs) -> str:
    with pytest.raises(ImageReadError, match=match) as err:
        read_image(source, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and "CompressedSamples" not in msg and "CT_small" not in msg
    return msg


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (0.6, "corrupt or truncated DICOM pixel data"),  # inside the pixel data
        (0.1, "no pixel data"),  # before the pixel data element
        (200, "corrupt or truncated DICOM header"),  # inside the file meta header
    ],
)
def test_truncated_dicom(cut, match):
    with open(_path("CT_small.dcm"), "rb") as fh:
        data = fh.read()
    _raises(data[: int(len(data) * cut) if cut < 1 else cut], match)


def test_garbage_after_dicm_marker():
    noise = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    _raises(b"\0" * 128 + b"DICM" + noise, "corrupt or truncated DICOM header")


def test_dicom_without_pixel_data():
    ds = _ds("CT_small.dcm")
    del ds.PixelData
    _raises(_to_bytes(ds), "no pixel data")


def test_zero_size_dicom():
    ds = _ds("CT_small.dcm")
    ds.Rows = 0
    _raises(_to_bytes(ds), "zero-size")


def test_empty_file_and_bytes(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    _raises(str(empty), "empty")
    _raises(b"", "empty")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])  # percentile and file-window paths
def test_constant_dicom_raises(name):
    ds = _ds(name)
    ds.PixelData = np.full(ds.pixel_array.shape, 7, dtype=ds.pixel_array.dtype).tobytes()
    _raises(_to_bytes(ds), "constant image")


def test_constant_png_raises(tmp_path):
    _raises(_save(tmp_path, Image.new("L", (4, 4), 9), "PNG"), "constant image")


def test_non_finite_after_rescale():
    ds = _ds("CT_small.dcm")
    ds.RescaleSlope = "1e308"
    _raises(_to_bytes(ds), "non-finite")


def test_non_finite_float_tiff(tmp_path):
    arr = np.array([[0.0, np.nan], [0.5, 1.0]], dtype=np.float32)
    _raises(_save(tmp_path, Image.fromarray(arr, mode="F"), "TIFF"), "non-finite")


def test_unsupported_photometric():
    ds = _ds("SC_rgb.dcm")
    ds.PhotometricInterpretation = "HSV"
    _raises(_to_bytes(ds), "unsupported DICOM photometric interpretation 'HSV'")


def test_invalid_window_width():
    ds = _ds("MR_small.dcm")
    ds.WindowWidth = 0
    _raises(_to_bytes(ds), "invalid DICOM VOI")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("patient notes, not an image\n" * 20)
    _raises(str(path), "unrecognised image format")
    _raises(b"\x00" * 200, "unrecognised image format")


def test_truncated_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    with open(_save(tmp_path, Image.fromarray(arr), "PNG"), "rb") as fh:
        data = fh.read()
    _raises(data[: len(data) // 2], "corrupt or truncated raster")


def test_missing_file(tmp_path):
    _raises(str(tmp_path / "absent.dcm"), "file not found")
    _raises(tmp_path, "not a regular file")  # a directory is not an image file


# --- is_dicom and npz ------------------------------------------------------------------------


def test_is_dicom(tmp_path):
    assert is_dicom(_path("CT_small.dcm"))
    with open(_path("CT_small.dcm"), "rb") as fh:
        assert is_dicom(fh.read())
    assert not is_dicom(_save(tmp_path, Image.new("L", (2, 2)), "PNG"))
    assert not is_dicom(b"short")
    assert not is_dicom(tmp_path / "absent.dcm")


def test_load_npz_split(tmp_path):
    path = tmp_path / "pathmnist.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_images=rng.integers(0, 255, (5, 28, 28, 3), dtype=np.uint8),
        train_labels=np.arange(5, dtype=np.uint8).reshape(5, 1),
        val_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        val_labels=np.zeros((2, 1), dtype=np.uint8),
    )
    images, labels = load_npz_split(path, "train")
    assert images.shape == (5, 28, 28, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3, 4]
    assert load_npz_split(path, "val")[0].shape == (2, 28, 28)
    with pytest.raises(ImageReadError, match=r"'test' not in npz; available splits: \['train', 'val'\]"):
        load_npz_split(path, "test")


def test_load_npz_split_bad_inputs(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4, 4, 4), np.uint8), train_labels=np.zeros(2))
    with pytest.raises(ImageReadError, match="expected uint8"):
        load_npz_split(bad, "train")
    with pytest.raises(ImageReadError, match="cannot read npz"):
        load_npz_split(tmp_path / "absent.npz", "train")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ImageReadError, match="cannot read npz"):
        load_npz_split(tmp_path / "junk.npz", "train")


def test_decoded_image_is_public_dataclass():
    import dataclasses

    import epee_annotate.imaging as imaging
    from epee_annotate.vocab import DICOM_COLUMNS

    assert "DecodedImage" in imaging.__all__ and imaging.DecodedImage is DecodedImage
    assert [f.name for f in dataclasses.fields(DecodedImage)] == ["pixels", "frame", "metadata"]
    # What read_image returns is that dataclass, with float pixels in [0, 1] and only the known DICOM keywords.
    [decoded] = read_image(get_testdata_file("CT_small.dcm"))
    assert isinstance(decoded, DecodedImage) and decoded.pixels.dtype == np.float32
    assert 0.0 <= decoded.pixels.min() and decoded.pixels.max() <= 1.0
    assert decoded.metadata and set(decoded.metadata) <= set(DICOM_COLUMNS)


def _series(photometric: str, frames: np.ndarray, slope: float = 1.0, intercept: float = -1024.0) -> bytes:
    """An uncompressed 16-bit multi-frame DICOM of ``frames`` (no VOI: the percentile window applies)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CT", photometric, 1
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.NumberOfFrames = slope, intercept, len(frames)
    ds.PixelData = frames.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("photometric,slope", [("MONOCHROME2", 1.0), ("MONOCHROME1", 1.0), ("MONOCHROME2", -2.0)])
def test_mip_is_decoded_frame_by_frame_with_the_volume_window(photometric, slope):
    """The MIP equals the max of the volume shown in one percentile window, and its memory is that of a
    frame: the stored volume is never decoded (or converted to float) whole."""
    import tracemalloc

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 4096, (200, 64, 64)).astype(np.uint16)
    frames[5] = 2048  # a blank frame in a series is fine; a blank MIP is not
    data = _series(photometric, frames, slope)
    shown = _percentile_window(frames.astype(np.float64) * slope - 1024.0)
    expected = (1.0 - shown if photometric == "MONOCHROME1" else shown).max(axis=0)
    tracemalloc.start()
    try:
        (mip,) = read_image(data, frames="mip", reduce_to=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mip.frame is None and mip.pixels.shape == (64, 64)
    np.testing.assert_allclose(mip.pixels, expected, atol=1e-5)
    # The file's own bytes, the 16-bit histogram (2 x 512 KB) and a few frame-sized buffers; decoding the
    # volume whole would add its stored values and a float32 copy (3x the pixel data, 4.9 MB here).
    assert peak < len(data) + 2**20 + 2**19 + 64 * 64 * 64, (peak, len(data))
