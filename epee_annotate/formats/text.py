"""The one hardening of text input: declared encoding and byte-order mark.

Every text format (JSON Lines, JSON, CSV/TSV, PHEE, plain text) decodes through here, so a file
with a UTF-8 byte-order mark or in a declared encoding reads the same for training and for jobs.
A NUL character ends a text file with one error record (``BINARY``): binary content would
otherwise make a stream of junk records.
A UTF-8 BOM is dropped when the encoding is UTF-8 (UTF-16/32 codecs drop their own). Bytes that
do not decode make the record they sit in an error record ("not valid utf-8 (byte 5)"), never the
whole file.
"""

from __future__ import annotations

import codecs
import io
import re
from typing import BinaryIO, TextIO

from .records import ReadOptions

UTF8_BOM = codecs.BOM_UTF8
_ESCAPED = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of undecodable bytes


def codec(options: ReadOptions) -> str:
    """The Python codec for the declared encoding (UTF-8 reads through "utf-8-sig": BOM dropped)."""
    return "utf-8-sig" if options.default_encoding else options.encoding


def encoding_name(options: ReadOptions) -> str:
    """The encoding's canonical name as messages give it ("UTF-8", "ISO8859-1")."""
    return codecs.lookup(options.encoding).name.upper()


def decode(raw: bytes, options: ReadOptions, first: bool = False) -> str:
    """``raw`` as text; ValueError naming the first bad byte (never the text). ``first``: a file's start (BOM)."""
    try:
        return raw.decode(codec(options) if first else options.encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"not valid {encoding_name(options)} (byte {error.start})") from None


def text_stream(binary: BinaryIO, options: ReadOptions) -> TextIO:
    """A text view of a binary stream; undecodable bytes stay visible to ``undecodable`` per record.

    ``newline=""``: lines end at "\\n", "\\r\\n" or "\\r" only (not U+2028 inside a JSON string), and
    CSV quoting sees the line ends as they are.
    """
    return io.TextIOWrapper(binary, encoding=codec(options), errors="surrogateescape", newline="")


BINARY = "binary content (a NUL byte): not a text file; the rest of the file was not read"


def is_binary(value: str) -> bool:
    """True for text holding a NUL character, which no text record holds: the file is binary from here on."""
    return "\x00" in value


def undecodable(value: str, options: ReadOptions) -> str | None:
    """Why text from ``text_stream`` is not valid in the declared encoding (first bad byte); None when it is."""
    match = _ESCAPED.search(value)
    if match is None:
        return None
    offset = len(value[: match.start()].encode(options.encoding, "surrogateescape"))
    return f"not valid {encoding_name(options)} (byte {offset})"
