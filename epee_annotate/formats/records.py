"""What every format reader yields: a ``Record`` (data, or the reason one record could not be read).

A reader never raises for one bad record: it yields an error record naming the file, the position
(line, row, sentence ...) and the kind of fault, never the record's text, and reads on. What
happens to error records is the reader option ``on_bad_record`` (``ReadOptions``), applied in one
place (``apply_mode``): ``permissive`` passes them on (training counts or skips them, jobs write
them as error rows), ``failfast`` stops at the first one with ``BadRecordError``.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..vocab import BAD_RECORD_MODES


class BadRecordError(ValueError):
    """``on_bad_record="failfast"`` met a bad record; the message names file and position, never the text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.record_message = message  # kept apart: Ray appends its retry advice to a task error's message


@dataclass(frozen=True)
class ReadOptions:
    """Reader options every format takes (a format that cannot honour one refuses it)."""

    encoding: str = "utf-8"  # declared text encoding; a UTF-8 byte-order mark is always dropped
    on_bad_record: str = "permissive"
    columns: Sequence[str] | None = None  # fields a record needs (None: all); readers may skip the rest

    def __post_init__(self) -> None:
        if self.on_bad_record not in BAD_RECORD_MODES:
            raise ValueError(f"on_bad_record must be one of {', '.join(BAD_RECORD_MODES)}; "
                             f"got {self.on_bad_record!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {self.encoding!r}") from None

    @property
    def default_encoding(self) -> bool:
        return codecs.lookup(self.encoding).name == "utf-8"


@dataclass
class Record:
    """One record of ``source``: ``data`` (field -> value), or ``error`` (why it could not be read)."""

    source: str  # the file (path or URI) it came from
    where: str = ""  # position in the file: "line 3", "row 7", "sentence d1.s0", "" for the whole file
    data: dict[str, Any] = field(default_factory=dict)  # an error record may keep the fields it could read
    error: str | None = None

    @property
    def position(self) -> str:
        """``"notes.csv line 3"``: file name and position, as every message names a record."""
        name = os.path.basename(str(self.source).rstrip("/")) or str(self.source)
        return f"{name} {self.where}".strip()

    @property
    def message(self) -> str | None:
        """The one-line error naming the record (None for a good record)."""
        return None if self.error is None else f"{self.position}: {self.error}"


def bad(source: str, where: str, reason: str, data: dict[str, Any] | None = None) -> Record:
    """An error record (``reason`` must not quote the data; ``data``: fields that could be read, e.g. the id)."""
    return Record(source, where, data or {}, reason)


def apply_mode(records: Iterable[Record], options: ReadOptions) -> Iterator[Record]:
    """Records as the ``on_bad_record`` mode says: all of them, or stop at the first error record."""
    for record in records:
        if record.error is not None and options.on_bad_record == "failfast":
            raise BadRecordError(record.message)
        yield record


def select(data: dict[str, Any], columns: Sequence[str] | None) -> dict[str, Any]:
    """The requested fields that ``data`` has (all of them when ``columns`` is None)."""
    return data if columns is None else {c: data[c] for c in columns if c in data}
