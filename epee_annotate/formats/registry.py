"""The format registry: one reader per input format, found by name or by file name.

A reader is ``read(stream, source, options, **format_options) -> Iterator[Record]`` over one file's
binary stream (``records``). ``read_file`` opens a path or URI through ``filesystem`` and
``read_stream`` reads an open stream (Ray's read tasks hand one over): both decompress
``.gz``/``.bz2``/``.zst`` text files by their name, refuse options a format cannot honour, and
apply the ``on_bad_record`` mode. A file that cannot be opened is one error record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from .. import filesystem
from .binary import read_binary
from .ddi import read_ddi
from .delimited import read_csv, read_header, read_tsv
from .jsonl import read_json_array, read_jsonl
from .npz import read_npz
from .parquet import read_parquet
from .phee import read_phee
from .records import ReadOptions, Record, apply_mode, bad
from .txt import read_txt

COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima", "")  # "": extension-less files, common for DICOM


class UnsupportedFormat(ValueError):
    """A format name or file name the registry has no reader for (the message lists the supported ones)."""


@dataclass(frozen=True)
class Format:
    """One input format: its reader and what it accepts."""

    name: str
    read: Callable[..., Iterator[Record]]
    extensions: tuple[str, ...] = ()  # recognised from file names (lower case); () = only when named
    text: bool = False  # decodes text, so it takes ``encoding``
    compressible: bool = False  # .gz/.bz2/.zst of it are read too
    options: tuple[str, ...] = ()  # format options the reader takes (npz: split)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("jsonl", read_jsonl, (".jsonl", ".ndjson"), text=True, compressible=True),
    Format("json", read_json_array, (), text=True, compressible=True),
    Format("csv", read_csv, (".csv",), text=True, compressible=True),
    Format("tsv", read_tsv, (".tsv",), text=True, compressible=True),
    Format("parquet", read_parquet, (".parquet", ".pq")),
    Format("txt", read_txt, (".txt",), text=True, compressible=True),
    Format("phee", read_phee, (), text=True, compressible=True),
    Format("ddi", read_ddi, (".xml",)),
    Format("npz", read_npz, (".npz",), options=("split",)),
    Format("image", read_binary, RASTER_EXTENSIONS),
    Format("dicom", read_binary, DICOM_EXTENSIONS),
)}


def supported() -> str:
    """The supported format names, for one-line errors."""
    return ", ".join(FORMATS)


def get(name: str) -> Format:
    """The format called ``name``; ``UnsupportedFormat`` naming the supported ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UnsupportedFormat(f"unsupported input format {name!r}; supported: {supported()}") from None


def split_name(location: str) -> tuple[str, str | None]:
    """(extension without compression suffix, compression codec or None) of a file name, lower case."""
    stem, ext = os.path.splitext(os.path.basename(str(location).rstrip("/")).lower())
    codec = COMPRESSION.get(ext)
    if codec is not None:
        stem, ext = os.path.splitext(stem)
    return ext, codec


def format_of(location: str, names: tuple[str, ...] | None = None) -> str | None:
    """The format a file name says (among ``names``, default all), or None; ``.json`` is JSON Lines here."""
    ext, codec = split_name(location)
    if ext == ".json":
        ext = ".jsonl"  # many exports (PHEE included) are JSON Lines named .json; ``sniff_json`` tells arrays
    for fmt in FORMATS.values():
        if (names is None or fmt.name in names) and ext in fmt.extensions and (codec is None or fmt.compressible):
            return fmt.name
    return None


def check_options(fmt: Format, options: ReadOptions, format_options: dict[str, Any]) -> None:
    """Refuse options this format cannot honour (never drop them silently)."""
    if not options.default_encoding and not fmt.text:
        raise ValueError(f"format {fmt.name!r} does not take an encoding (got {options.encoding!r})")
    unknown = sorted(set(format_options) - set(fmt.options))
    if unknown:
        raise TypeError(f"format {fmt.name!r} takes no option(s) {unknown}")


def read_stream(stream: BinaryIO, source: str, fmt: str, options: ReadOptions = ReadOptions(),
                **format_options: Any) -> Iterator[Record]:
    """Records of one open file ``source`` (decompressed by its name when the format allows)."""
    spec = get(fmt)
    check_options(spec, options, format_options)
    return apply_mode(_guarded(spec, _decompressed(stream, source, spec), source, options, format_options), options)


def _decompressed(stream: BinaryIO, source: str, spec: Format | None = None) -> BinaryIO:
    codec = split_name(source)[1]
    if codec is None or (spec is not None and not spec.compressible):
        return stream
    import pyarrow as pa

    return pa.CompressedInputStream(stream, codec)


def _guarded(spec: Format, stream, source: str, options: ReadOptions, format_options) -> Iterator[Record]:
    """The reader's records; a read failure mid-file (I/O, corrupt compression) ends the file with one error record."""
    import pyarrow as pa

    last = ""
    try:
        for record in spec.read(stream, source, options, **format_options):
            last = record.where
            yield record
    except (OSError, EOFError, pa.ArrowException) as error:  # e.g. a truncated or corrupt .gz: the rest is lost
        after = f" after {last}" if last else ""
        yield bad(source, "", f"read failed{after} ({type(error).__name__}); the rest of the file was not read")


def read_file(location: str, fmt: str | None = None, options: ReadOptions = ReadOptions(),
              **format_options: Any) -> Iterator[Record]:
    """Records of one file (path or URI); the format is taken from the file name unless given."""
    name = fmt or format_of(location)
    if name is None:
        raise UnsupportedFormat(f"cannot tell the format of {os.path.basename(str(location))!r} from its name; "
                                f"supported: {supported()}")
    check_options(get(name), options, format_options)
    return _read_file(location, name, options, format_options)


def _read_file(location: str, name: str, options: ReadOptions, format_options: dict[str, Any]) -> Iterator[Record]:
    reason = filesystem.problem(location)
    if reason is not None:
        yield from apply_mode([bad(location, "", reason)], options)
        return
    try:
        raw = filesystem.open_input(location)
    except OSError as error:
        yield from apply_mode([bad(location, "", f"cannot be opened ({type(error).__name__})")], options)
        return
    with raw:
        yield from read_stream(raw, location, name, options, **format_options)


def read_csv_header(location: str, fmt: str = "csv", options: ReadOptions = ReadOptions()) -> list[str]:
    """The header row of a CSV/TSV file (path or URI, decompressed by name); ``HeaderError`` when unreadable."""
    check_options(get(fmt), options, {})
    with filesystem.open_input(location) as raw:
        return read_header(_decompressed(raw, location), options, "\t" if fmt == "tsv" else ",")


def sniff_json(location: str) -> str:
    """"json" when a ``.json`` file starts with '[' (an array), else "jsonl"; unreadable files say "jsonl"."""
    import pyarrow as pa

    try:
        with filesystem.open_input(location) as handle:
            head = _decompressed(handle, location).read(4096)
    except (OSError, pa.ArrowException):  # reported as an error record when read; its format does not matter
        return "jsonl"
    return "json" if head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"[") else "jsonl"
