"""Plain text: one file is one note (a directory of ``.txt`` files is a directory of notes).

The record is ``{"id": <the file's path or URI>, "text": <its content>}``: the id is unique by
construction, as image ids are.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from .records import ReadOptions, Record, bad, select
from .text import decode


def read_txt(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    try:
        text = decode(stream.read(), options, first=True)
    except ValueError as error:
        yield bad(source, "", str(error))
        return
    yield Record(source, "", select({"id": source, "text": text}, options.columns))
