"""Image decoding: memory bound (early downscale, pixel cap), truthful codec errors, non-image DICOM objects."""

import io
import os
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder

from epee_annotate.imaging import ImageReadError, read_image
from epee_annotate.image_decoding import MAX_PIXELS


def _png(width: int, height: int, mode: str = "L") -> bytes:
    rng = np.random.default_rng(0)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _claimed_size_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's header, tiny on disk)."""
    data = bytearray(_png(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_large_images_are_box_reduced_at_decode_time_towards_the_model_input():
    png = _png(640, 480)
    (full,) = read_image(png)
    (small,) = read_image(png, reduce_to=32)
    assert full.pixels.shape == (480, 640) and small.pixels.shape == (32, 43)  # factor 480 // 32 = 15
    expected = full.pixels[:480, :630].reshape(32, 15, 42, 15).mean(axis=(1, 3))
    np.testing.assert_allclose(small.pixels[:, :42], expected, atol=2 / 255)  # same picture, smaller
    jpeg = io.BytesIO()
    Image.fromarray((np.add.outer(np.arange(480), np.arange(640)) % 256).astype(np.uint8)).save(jpeg, "JPEG")
    (from_jpeg,) = read_image(jpeg.getvalue(), reduce_to=32)
    assert min(from_jpeg.pixels.shape) >= 32 and max(from_jpeg.pixels.shape) < 128
    (ct,) = read_image(get_testdata_file("CT_small.dcm"), reduce_to=32)
    assert ct.pixels.shape == (32, 32) and ct.pixels.dtype == np.float32
    (kept,) = read_image(_png(40, 30), reduce_to=32)  # already small: untouched
    assert kept.pixels.shape == (30, 40)


def test_pixels_above_the_cap_are_a_per_item_error_found_from_the_header():
    with pytest.raises(ImageReadError, match=r"has 0.0 megapixels, above the limit of 0.0 megapixels"):
        read_image(_png(100, 50), max_pixels=4999)
    bomb = _claimed_size_png(30_000, 30_000)  # 900 megapixels claimed, 70 bytes on disk
    with pytest.raises(ImageReadError, match=r"900.0 megapixels, above the limit of 179.0 megapixels") as err:
        read_image(bomb)
    assert "corrupt" not in str(err.value)
    with pytest.raises(ImageReadError, match=r"DICOM image has 0.0 megapixels"):
        read_image(get_testdata_file("CT_small.dcm"), max_pixels=100)
    assert MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


def test_twelve_bit_jpeg_without_its_codec_names_the_missing_plugin(monkeypatch):
    path = get_testdata_file("JPEG-lossy.dcm")  # valid JPEG Extended, 12-bit: Pillow cannot decode it
    decoder = get_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    # Hide pylibjpeg/gdcm whether or not they are installed: only Pillow is left.
    monkeypatch.setattr(decoder, "_available", {k: v for k, v in decoder._available.items() if k == "pillow"})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)
    assert "corrupt" not in message and "JPEG Extended" in message and "12-bit" in message
    assert "pylibjpeg" in message and "(pillow)" in message and "epee-annotate[dicom-codecs]" in message
    assert "\n" not in message


def _as_sop_class(path: str, sop_class: str, modality: str) -> bytes:
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("source, kind", [
    (lambda: _as_sop_class(get_testdata_file("CT_small.dcm"), "1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
     "segmentation"),
    (lambda: _as_sop_class(get_testdata_file("CT_small.dcm"), "1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT"),
     "radiotherapy object"),
    (lambda: get_testdata_file("test-SR.dcm"), "structured report"),
])
def test_dicom_objects_without_an_image_are_per_item_errors(source, kind):
    with pytest.raises(ImageReadError, match=f"is a {kind}.*not an image to classify"):
        read_image(source())


def test_unreadable_files_in_a_folder_are_error_rows(tmp_path):
    from epee_annotate.imaging.classify import decode_sources, find_image_files

    (tmp_path / "a.png").write_bytes(_png(40, 30))
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    decoded = dict(decode_sources(find_image_files([tmp_path])))
    names = {os.path.basename(k): v for k, v in decoded.items()}
    assert sorted(names) == ["a.png", "dangling.png", "loop1", "loop2"]
    assert str(names["dangling.png"]) == "dangling symbolic link (its target does not exist)"
    assert str(names["loop1"]) == "symbolic link loop"
    assert names["a.png"].pixels.shape == (30, 40)
