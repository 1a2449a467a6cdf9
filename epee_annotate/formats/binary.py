"""Image files (PNG/JPEG/TIFF/BMP) and DICOM files: one record per file, ``{"path", "bytes"}``.

Reading is only reading: decoding (DICOM recognised by its marker, anything else through Pillow)
is ``imaging.reading``'s, per record, so a corrupt or empty image is that image's error, not the reader's.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from .records import ReadOptions, Record, select


def read_binary(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    yield Record(source, "", select({"path": source, "bytes": stream.read()}, options.columns))
