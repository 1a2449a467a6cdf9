"""Decode DICOM, raster (PNG/JPEG/TIFF/BMP) and MedMNIST .npz files into float arrays.

Core layer: the model's image encoder decodes file inputs with it (``inputs.to_unit_array``), and
the imaging and data readers build on it (``epee_annotate.imaging`` re-exports its public names).

Decoding, plus an optional early downscale: the final resize and model normalisation happen
downstream. Every image comes back as float32 in [0, 1], shape (H, W) for grayscale or (H, W, 3)
for colour.

Memory bound (see docs/batch_jobs.md):

* ``max_pixels`` (default ``MAX_PIXELS`` = 178,956,970, Pillow's own decompression-bomb limit,
  which also applies to rasters when ``max_pixels`` is larger): an image (all decoded frames of
  a DICOM together) with more pixels than this is an ImageReadError, found from the header
  before any pixel is decoded.
* ``reduce_to=S``: images whose shorter side is at least 2*S are box-averaged by the largest
  integer factor that keeps the shorter side >= S, at decode time (JPEG decodes at the reduced
  scale through Pillow's draft mode). Callers that feed a model pass its input side, so a batch
  holds small images, not full-resolution ones; only one full-size image is held at a time.

Documented choices:

* DICOM grayscale: Modality LUT (rescale) -> VOI -> MONOCHROME1 inversion (1 - x).
  VOI is the file's VOI LUT Sequence or first Window Center/Width (pydicom decides, LUT first);
  the result is scaled to [0, 1] by the VOI step's full output range. Without either, a robust
  window from the 0.5/99.5 percentiles is used (min/max if those coincide).
* Multi-frame DICOM: ``frames="middle"`` (default) decodes only frame ``n // 2``;
  ``"all"`` returns every frame with its index; ``"mip"`` is the max over frames of the
  fully displayed frames (after VOI and inversion), with ``frame=None``. A percentile
  window is computed per frame for "middle"/"all" (so ``all[n // 2]`` equals "middle")
  and over the whole volume for "mip" (from a histogram of the stored values counted frame by
  frame; every mode decodes one frame at a time). ``frame`` is None for single-frame files.
* Constant images (all stored values equal, or a blank result after VOI) raise ImageReadError
  rather than returning zeros: a blank image carries nothing to classify, and windowing it
  would divide by zero.
* Colour DICOM (RGB, YBR_* -> RGB by pydicom's decoder; PALETTE COLOR via its LUT) is scaled
  by bit depth, no windowing.
* Raster: 8-bit /255; I;16* /65535; "I" /65535 when values fit [0, 65535], else min/max;
  "F" kept when in [0, 1], else min/max. Alpha (RGBA/LA/P with transparency) is composited
  on white, as most viewers show it. "1" -> L, P/CMYK/other colour modes -> RGB.
  EXIF orientation is applied. Only the first frame of multi-page rasters is read.
* DICOM is recognised only by the "DICM" marker at byte 128; preamble-less files are rejected.
* DICOM objects that are not images to classify (segmentations, RT structure sets/plans/records,
  structured reports, presentation states, encapsulated documents, waveforms: ``NON_IMAGE_SOP_CLASSES``)
  raise ImageReadError naming the SOP class, even when they carry pixel data.
* A compressed transfer syntax with no installed decoder raises ImageReadError naming the
  syntax and UID, the codecs extra, and pydicom's list of plugins that would decode it. When
  the installed plugins cannot decode this particular file but missing ones could (12-bit JPEG
  Extended with Pillow only), the error says so and names the missing plugins instead of
  calling the file corrupt. RLE is built in; 8-bit JPEG and JPEG 2000 decode through Pillow.
* ImageReadError messages never include file names or patient/study tag values (PHI risk);
  callers add their own context. The underlying exception is chained for debugging.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # the imaging extra: raster images decode without it, DICOM files need it (_require_pydicom)
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
except ImportError as _error:
    if (_error.name or "").split(".")[0] != "pydicom":
        raise
    pydicom = None

from .extras import missing
from .filesystem import problem as unreadable_reason
from .formats.npz import NpzError, load_split
from .vocab import DICOM_COLUMNS, FRAME_MODES

__all__ = ["MAX_PIXELS", "DecodedImage", "ImageReadError", "is_dicom", "load_npz_split", "read_image"]

Source = str | os.PathLike | bytes

METADATA_KEYWORDS = tuple(DICOM_COLUMNS)
CODECS_HINT = 'install the codecs extra: pip install "epee-annotate[dicom-codecs]"'
_MONO = ("MONOCHROME1", "MONOCHROME2")
# pydicom's decoders return these as RGB when raw=False.
_RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow raises DecompressionBombError above this
# SOP Class UID prefixes of DICOM objects that are not images to classify (PS3.4 Annex B).
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
    "1.2.840.10008.5.1.4.1.1.66.5": "surface segmentation",
    "1.2.840.10008.5.1.4.1.1.66.": "raw data, registration or fiducials object",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",  # but RT Image and RT Dose: RT_IMAGE_CLASSES
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
}
# RT Image (portal images) and RT Dose (dose grids, multi-frame) carry an image pixel module.
RT_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.2")


class ImageReadError(ValueError):
    """An input could not be decoded into an image; the message is one line without PHI."""


@dataclass
class DecodedImage:
    """One decoded image: float32 pixels in [0, 1], its frame index and non-PHI metadata."""

    pixels: np.ndarray
    frame: int | None
    metadata: dict[str, str]


def is_dicom(data_or_path: Source) -> bool:
    """True when bytes 128:132 are b"DICM" (the DICOM Part 10 marker); missing files are False."""
    if isinstance(data_or_path, bytes):
        return data_or_path[128:132] == b"DICM"
    try:
        with open(data_or_path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_image(
    source: Source, *, frames: str = "middle", extra_tags: Sequence[str] = (), reduce_to: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> list[DecodedImage]:
    """Decode one file (path or bytes) into one or more images (several only for frames='all').

    ``reduce_to`` and ``max_pixels`` bound memory (module docstring); None turns either off.
    """
    if frames not in FRAME_MODES:
        raise ValueError(f"frames must be one of {FRAME_MODES}, got {frames!r}")
    if extra_tags:
        _require_pydicom()
    for keyword in extra_tags:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"unknown DICOM keyword in extra_tags: {keyword!r}")
    if isinstance(source, bytes):
        if not source:
            raise ImageReadError("empty input: no bytes to decode")
        stream: Path | io.BytesIO = io.BytesIO(source)
    else:
        stream = Path(source)
        problem = unreadable_reason(stream)
        if problem is not None:
            raise ImageReadError(problem)
        if stream.stat().st_size == 0:
            raise ImageReadError("empty file: no bytes to decode")
    limits = _Limits(reduce_to, max_pixels)
    if is_dicom(source):
        return _read_dicom(stream, frames, extra_tags, limits)
    return [DecodedImage(_read_raster(stream, limits), None, {})]


@dataclass(frozen=True)
class _Limits:
    """The memory bound of one decode: early box reduction and the pixel cap."""

    reduce_to: int | None
    max_pixels: int | None

    def check(self, pixels: int, what: str) -> None:
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise ImageReadError(f"{what} has {pixels / 1e6:.1f} megapixels, above the limit of "
                                 f"{self.max_pixels / 1e6:.1f} megapixels (max_pixels)")

    def factor(self, height: int, width: int) -> int:
        """Integer box-reduction factor keeping the shorter side >= reduce_to (1 = keep)."""
        if not self.reduce_to:
            return 1
        return max(1, min(height, width) // int(self.reduce_to))


def load_npz_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load MedMNIST f"{split}_images" (uint8 (N,H,W) or (N,H,W,3)) and f"{split}_labels" (int64).

    Labels are (N,) for single-label sets; multi-label sets such as ChestMNIST keep (N, K). The
    archive is read by ``formats.npz``; its faults come back as ImageReadError.
    """
    try:
        with open(path, "rb") as fh:
            return load_split(fh, split)
    except OSError as exc:
        raise ImageReadError(f"cannot read npz archive ({type(exc).__name__})") from exc
    except NpzError as exc:
        raise ImageReadError(str(exc)) from exc


def _require_pydicom() -> None:
    if pydicom is None:
        raise missing("pydicom", "decoding DICOM")


def _read_dicom(stream: Path | io.BytesIO, frames: str, extra_tags: Sequence[str], limits: _Limits) -> list[DecodedImage]:
    """Decode a DICOM Part 10 file following the module's documented rules."""
    _require_pydicom()
    ds = _read_dicom_header(stream)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in (*_MONO, *_RGB_LIKE, "PALETTE COLOR"):
        raise ImageReadError(f"unsupported DICOM photometric interpretation {photometric[:24]!r}")
    _check_decoder(ds)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    decoded_frames = 1 if frames == "middle" else n_frames
    limits.check(int(ds.Rows) * int(ds.Columns) * decoded_frames, "DICOM image" if decoded_frames == 1
                 else f"DICOM image ({decoded_frames} frames)")
    indices = [n_frames // 2] if frames == "middle" else list(range(n_frames))
    _check_complete_frames(ds, indices, n_frames)
    metadata = _metadata(ds, extra_tags)
    factor = limits.factor(int(ds.Rows), int(ds.Columns))
    if frames == "mip":
        shown = _mip(ds, n_frames, photometric)
        _check_not_constant(shown)
        return [DecodedImage(_box_reduce(shown, factor), None, metadata)]
    images = []
    for i in indices:  # one frame at a time: memory is that of the largest frame, not of the series
        shown = _dicom_display(ds, _dicom_frames(ds, i, n_frames), photometric, per_frame=True)[0]
        _check_not_constant(shown)
        images.append(DecodedImage(_box_reduce(shown, factor), i if n_frames > 1 else None, dict(metadata)))
        del shown
    return images


def _mip(ds: pydicom.Dataset, n_frames: int, photometric: str) -> np.ndarray:
    """Max over frames of the displayed frames, decoding one frame at a time.

    The percentile window of a monochrome file without VOI spans the volume: a first pass counts
    the stored values frame by frame (``_stored_percentiles``), the second displays each frame in
    that window. Where a histogram does not apply (a Modality LUT, stored values wider than 16
    bits) the frames are decoded together, as the docs state.
    """
    window = None
    if photometric in _MONO and not _has_voi(ds):
        window = _stored_percentiles((_dicom_frames(ds, i, n_frames)[0] for i in range(n_frames)), ds,
                                     (0.5, 99.5, 0.0, 100.0))
        if window is None:
            return _dicom_display(ds, _dicom_frames(ds, None, n_frames), photometric, per_frame=False).max(axis=0)
    peak = None
    for i in range(n_frames):
        shown = _dicom_display(ds, _dicom_frames(ds, i, n_frames), photometric, per_frame=True, window=window)[0]
        peak = shown if peak is None else np.maximum(peak, shown, out=peak)
        del shown
    return peak


def _read_dicom_header(stream: Path | io.BytesIO) -> pydicom.Dataset:
    """The parsed file, refused unless it is a complete image object with pixel data and a size."""
    try:
        ds = pydicom.dcmread(stream)
    except Exception as exc:  # pydicom raises many types (EOFError, struct.error, ...) on damaged headers
        raise ImageReadError(f"corrupt or truncated DICOM header ({type(exc).__name__})") from exc
    # pydicom stops quietly at damage or EOF, so check for UIDs every valid Part 10 file has.
    if ds.file_meta.get("TransferSyntaxUID") is None or "SOPClassUID" not in ds:
        raise ImageReadError("corrupt or truncated DICOM header (no Transfer Syntax or SOP Class UID)")
    _check_is_image(ds)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageReadError("DICOM has no pixel data (a non-image object such as a structured report, or truncated)")
    if not int(ds.get("Rows") or 0) or not int(ds.get("Columns") or 0):
        raise ImageReadError("zero-size DICOM image (Rows or Columns is 0 or missing)")
    return ds


def _check_complete_frames(ds: pydicom.Dataset, indices: Sequence[int], n_frames: int) -> None:
    """Refuse encapsulated JPEG-family frames without an end marker (a truncated file), before any decoder
    runs: Pillow fills a truncated JPEG with grey, and a failing decoder would be blamed on a missing codec."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    if ds.file_meta.TransferSyntaxUID not in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes,
                                              *JPEG2000TransferSyntaxes) or "PixelData" not in ds:
        return
    wanted = set(indices)
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
            if index in wanted and not frame.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):  # EOI/EOC, then padding
                raise ImageReadError(f"corrupt or truncated DICOM pixel data (frame {index}: the compressed "
                                     "stream has no end marker)")
    except ImageReadError:
        raise
    except Exception as exc:  # a damaged fragment list
        raise ImageReadError(f"corrupt or truncated DICOM pixel data ({type(exc).__name__})") from exc


def _dicom_frames(ds: pydicom.Dataset, index: int | None, n_frames: int) -> np.ndarray:
    """Stored frame ``index`` (None: all of them) as a stack (F, H, W[, 3])."""
    try:
        if index is not None and n_frames > 1:
            stack = pixel_array(ds, index=index)[None]
        else:
            stack = pixel_array(ds)
            if n_frames == 1:
                stack = stack[None]
    except Exception as exc:  # decoder/plugin errors vary by codec
        raise _pixel_data_error(ds, exc) from exc
    if stack.size == 0:
        raise ImageReadError("zero-size DICOM image (no pixels decoded)")
    return stack


def _dicom_display(ds: pydicom.Dataset, stack: np.ndarray, photometric: str, per_frame: bool,
                   window: tuple[float, ...] | None = None) -> np.ndarray:
    """Stored values -> display values in [0, 1], float32 (VOI for monochrome, LUT for palette colour).

    ``window``: a percentile window already found over the volume (``_mip``), for a frame of it.
    """
    if photometric in _MONO:
        if per_frame:
            shown = _display_mono(stack[0], ds, window)[None] if len(stack) == 1 else \
                np.stack([_display_mono(f, ds, window) for f in stack])
        else:
            shown = _display_mono(stack, ds)
        del stack
        if photometric == "MONOCHROME1":
            np.subtract(1.0, shown, out=shown)
        return shown
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stack, ds)
        return (rgb / np.float32(np.iinfo(rgb.dtype).max)).astype(np.float32, copy=False)
    return np.clip(stack / np.float32(2 ** int(ds.get("BitsStored") or 8) - 1), 0.0, 1.0).astype(np.float32,
                                                                                            copy=False)


def _box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks ((H, W) or (H, W, C)), as float32; edge rows/columns that do not fill a block are dropped."""
    if factor <= 1:
        return image.astype(np.float32, copy=False)
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:height, :width].reshape(height // factor, factor, width // factor, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _check_is_image(ds: pydicom.Dataset) -> None:
    """Reject DICOM objects that are not images to classify (``NON_IMAGE_SOP_CLASSES``)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in RT_IMAGE_CLASSES:
        return
    for prefix, kind in sorted(NON_IMAGE_SOP_CLASSES.items(), key=lambda item: -len(item[0])):  # longest first
        if sop_class == prefix or (prefix.endswith(".") and sop_class.startswith(prefix)):
            name = getattr(ds.SOPClassUID, "name", sop_class)
            raise ImageReadError(f"DICOM object is a {kind} ({name}), not an image to classify")


def _pixel_data_error(ds: pydicom.Dataset, exc: Exception) -> ImageReadError:
    """What to say when decoding the pixel data failed: a missing codec, else damage."""
    tsyntax = ds.file_meta.TransferSyntaxUID
    if tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            decoder = None
        if decoder is not None and decoder.missing_dependencies and not _installed_plugin_failed(exc):
            installed = ", ".join(decoder.available_plugins) or "none"
            missing = "; ".join(decoder.missing_dependencies)
            return ImageReadError(
                f"the installed DICOM plugins ({installed}) cannot decode this {tsyntax.name} pixel data "
                f"({int(ds.get('BitsStored') or 0)}-bit, {type(exc).__name__}); plugins that may: {missing}; "
                f"{CODECS_HINT}"
            )
    return ImageReadError(f"corrupt or truncated DICOM pixel data ({type(exc).__name__})")


def _installed_plugin_failed(exc: Exception) -> bool:
    """True when an installed plugin that supports the data failed on it (damage), not only ones that do not."""
    # pydicom lists each plugin's error on its own line: "  pillow: Pillow does not support ..."
    reasons = [line.split(":", 1)[1] for line in str(exc).splitlines()[1:] if ":" in line]
    return any("support" not in reason for reason in reasons)


def _check_decoder(ds: pydicom.Dataset) -> None:
    """Raise a clear error when no installed plugin can decode the transfer syntax."""
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise ImageReadError(f"DICOM transfer syntax {tsyntax.name} ({tsyntax}) is not supported") from exc
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies)
        raise ImageReadError(
            f"no decoder installed for DICOM transfer syntax {tsyntax.name} ({tsyntax}): "
            f"{CODECS_HINT} (pydicom plugins: {options})"
        )


def _display_mono(raw: np.ndarray, ds: pydicom.Dataset, volume: tuple[float, ...] | None = None) -> np.ndarray:
    """Modality LUT then VOI (file's LUT/window, else percentile window) scaled to [0, 1], as float32.

    Float32 and in place where pydicom's own steps would make float64 copies: a frame costs about
    4 bytes per pixel plus the stored frame, and a percentile window one more 4-byte copy.
    ``volume``: the (0.5, 99.5, 0, 100) percentiles of the whole volume this frame belongs to (a MIP).
    """
    if volume is not None:
        window = volume[:2] if volume[1] > volume[0] else volume[2:]
    else:
        window = _stored_percentiles([raw], ds, (0.5, 99.5)) if not _has_voi(ds) else None
    values = _modality(raw, ds)
    if not np.isfinite(values).all():
        raise ImageReadError("non-finite (NaN/inf) pixel values after modality rescale")
    if volume is None:  # one frame of a MIP may be blank; the MIP itself is checked
        _check_not_constant(values)
    if _has_voi(ds):
        if _linear_window(values, ds):
            return values
        # A VOI LUT indexes by integer input value; round rather than let pydicom truncate floats.
        voi_input = np.rint(values).astype(np.int64) if _has_voi_lut(ds) else values.astype(np.float64)
        try:
            lo, hi = _voi_output_range(ds)
            values = apply_voi_lut(voi_input, ds, prefer_lut=True).astype(np.float32)
        except (ValueError, NotImplementedError) as exc:
            raise ImageReadError(f"invalid DICOM VOI LUT or window ({type(exc).__name__})") from exc
        del voi_input
    else:
        lo, hi = window or (float(v) for v in np.percentile(values, [0.5, 99.5]))
        if hi <= lo:
            lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise ImageReadError("VOI window has zero width")
    values -= np.float32(lo)
    values /= np.float32(hi - lo)
    return np.clip(values, 0.0, 1.0, out=values)


_CHUNK = 1 << 20  # stored values counted per chunk: bincount's own copy stays small


def _stored_percentiles(frames: Iterable[np.ndarray], ds: pydicom.Dataset,
                        qs: Sequence[float]) -> tuple[float, ...] | None:
    """``np.percentile`` (linear) of the rescaled values of ``frames`` (taken one at a time), from a histogram
    of the stored integers (no copy of a frame); None where that does not apply (a Modality LUT, stored
    values wider than 16 bits)."""
    if "ModalityLUTSequence" in ds:
        return None
    counts, offset, size = None, 0, 0
    for raw in frames:
        if raw.dtype.kind not in "iu" or raw.dtype.itemsize > 2:
            return None
        if counts is None:
            offset = -int(np.iinfo(raw.dtype).min)
            counts = np.zeros(1 << (8 * raw.dtype.itemsize), dtype=np.int64)
        flat = raw.reshape(-1)
        size += flat.size
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK].astype(np.int64) + offset
            counts[: chunk.max() + 1] += np.bincount(chunk)
    if counts is None or not size:
        return None
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    slope, intercept = (1.0, 0.0) if slope is None or intercept is None else (float(slope), float(intercept))
    ranks = np.cumsum(counts)
    out = []
    for q in qs:
        position = (q if slope >= 0 else 100 - q) / 100 * (size - 1)
        below = int(np.floor(position))
        first, second = (int(np.searchsorted(ranks, r, side="right")) - offset
                         for r in (below, min(below + 1, size - 1)))
        out.append((first + (position - below) * (second - first)) * slope + intercept)
    return tuple(out)


def _modality(raw: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values through the Modality LUT or rescale, as float32 (pydicom's step, without its float64 copy)."""
    if "ModalityLUTSequence" in ds:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    values = raw.astype(np.float32)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            values *= np.float32(slope)
            values += np.float32(intercept)
    return values


def _linear_window(values: np.ndarray, ds: pydicom.Dataset) -> bool:
    """Apply a LINEAR or LINEAR_EXACT window (PS3.3 C.11.2.1.2) in place, scaled to [0, 1]; False when
    the VOI step is another kind (a LUT, SIGMOID, an invalid width), left to pydicom."""
    if _has_voi_lut(ds):
        return False
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (ds.WindowCenter, ds.WindowWidth))
    if function == "LINEAR" and width >= 1:
        offset, scale = center - 0.5, (width - 1) if width > 1 else None
    elif function == "LINEAR_EXACT" and width > 0:
        offset, scale = center, width
    else:
        return False
    if scale is None:  # width 1: a step at the center, as pydicom does it
        np.copyto(values, values > offset, casting="unsafe")
        return True
    values -= np.float32(offset)
    values /= np.float32(scale)
    values += np.float32(0.5)
    np.clip(values, 0.0, 1.0, out=values)
    return True


def _has_voi(ds: pydicom.Dataset) -> bool:
    """True when pydicom's apply_voi_lut would change the data (usable VOI LUT or window)."""
    return _has_voi_lut(ds) or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)


def _has_voi_lut(ds: pydicom.Dataset) -> bool:
    """Mirror pydicom's validity test for the first VOI LUT Sequence item."""
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Full output range of pydicom's VOI step, found by probing it rather than re-deriving PS3.3."""
    if _has_voi_lut(ds):
        entries, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
        probe = np.arange(first, first + (entries or 2**16))
    else:
        probe = np.array([-1e300, 1e300])  # beyond any window: LINEAR clips, SIGMOID saturates
    with np.errstate(over="ignore"):
        out = apply_voi_lut(probe, ds, prefer_lut=True)
    return float(out.min()), float(out.max())


def _check_not_constant(values: np.ndarray) -> None:
    """Reject images whose pixels are all equal (see module docstring)."""
    if values.size and values.min() == values.max():
        raise ImageReadError("constant image: all pixels have the same value")


def _metadata(ds: pydicom.Dataset, extra_tags: Sequence[str]) -> dict[str, str]:
    """Non-PHI identifiers plus explicitly requested keywords, as strings ("" when absent)."""
    out = {}
    for keyword in (*METADATA_KEYWORDS, *extra_tags):
        value = ds.get(keyword)
        if value is None:
            out[keyword] = ""
        elif isinstance(value, MultiValue):
            out[keyword] = "\\".join(str(v) for v in value)
        else:
            out[keyword] = str(value)
    return out


def _read_raster(stream: Path | io.BytesIO, limits: _Limits) -> np.ndarray:
    """Decode a Pillow-readable raster into float32 [0, 1], (H, W) or (H, W, 3)."""
    try:
        with warnings.catch_warnings():
            # Our own cap (checked from the header, before decoding) replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                limits.check(opened.width * opened.height, "raster image")
                factor = limits.factor(opened.height, opened.width)
                if factor > 1 and opened.format == "JPEG":
                    opened.draft(opened.mode, (opened.width // factor, opened.height // factor))
                opened.load()
                img = _reduce(opened, limits.factor(opened.height, opened.width))
                img = ImageOps.exif_transpose(img)
                img.load()
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked in Image.open
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        if claimed:
            _Limits(None, min(limits.max_pixels or MAX_PIXELS, MAX_PIXELS)).check(int(claimed.group(1)), "raster image")
        raise ImageReadError("raster image is above Pillow's decompression-bomb pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError("unrecognised image format (not DICOM with a DICM marker, not PNG/JPEG/TIFF/BMP)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"corrupt or truncated raster image ({type(exc).__name__})") from exc
    if img.width == 0 or img.height == 0:
        raise ImageReadError("zero-size raster image")
    out = pil_to_unit_array(img)
    _check_not_constant(out)
    return out.astype(np.float32)


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """Box-average by ``factor`` in Pillow (palette and 1-bit images first become RGB(A)/L, 16-bit I)."""
    if factor <= 1:
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")  # same values; pil_to_unit_array scales "I" by 65535 when they fit
    return img.reduce(factor)


def pil_to_unit_array(img: Image.Image) -> np.ndarray:
    """Map a Pillow image to [0, 1], (H, W) or (H, W, 3), per the module's raster rules."""
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float64) / 65535.0
    if mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if not np.isfinite(arr).all():
            raise ImageReadError("non-finite (NaN/inf) pixel values in raster image")
        lo, hi = arr.min(), arr.max()
        top = 65535.0 if mode == "I" else 1.0
        if lo >= 0 and hi <= top:
            return arr / top
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    arr = np.asarray(img).astype(np.float64) / 255.0
    if img.mode in ("LA", "RGBA"):
        alpha = arr[..., -1:]
        arr = arr[..., :-1] * alpha + (1.0 - alpha)  # composite on white
        if img.mode == "LA":
            arr = arr[..., 0]
    return arr
