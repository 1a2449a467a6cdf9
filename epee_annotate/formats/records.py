"""What every format reader yields: a ``Record`` (data, or the reason one record could not be read).

A reader never raises for one bad record: it yields an error record naming the file, the position
(line, row, sentence ...) and the kind of fault, never the record's text, and reads on. What
happens to error records is the reader option ``on_bad_record`` (``ReadOptions``), applied in one
place (``apply_mode``): ``permissive`` passes them on (training counts or skips them, jobs write
them as error rows), ``failfast`` stops at the first one with ``BadRecordError``. A job may also
cap how many there may be in all (``BadRecordLimit``, ``--max-bad-records N|F%``).
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..vocab import BAD_RECORD_MODES, DEFAULT_MAX_FIELD_LINES


class BadRecordError(ValueError):
    """``on_bad_record="failfast"`` met a bad record; the message names file and position, never the text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.record_message = message  # kept apart: Ray appends its retry advice to a task error's message


class TooManyBadRecords(ValueError):
    """More bad records than ``ReadOptions.max_bad_records`` allows (the message gives the counts)."""


@dataclass(frozen=True)
class BadRecordLimit:
    """At most ``count`` bad records, or at most ``share`` (0-1) of the records read (``--max-bad-records``)."""

    count: int | None = None
    share: float | None = None

    @classmethod
    def parse(cls, text: str) -> "BadRecordLimit":
        """``"10"`` (a count) or ``"0.5%"`` (a share of the records read); ValueError otherwise."""
        value = str(text).strip()
        try:
            if value.endswith("%"):
                share = float(value[:-1]) / 100
                if not 0.0 <= share <= 1.0:
                    raise ValueError
                return cls(share=share)
            count = int(value)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise ValueError(f"max bad records must be a count (e.g. 10) or a share (e.g. 0.5%), got {text!r}") \
                from None

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{(self.share or 0.0) * 100:g}%"

    def check(self, bad_records: int, records: int) -> None:
        """``TooManyBadRecords`` when ``bad_records`` of ``records`` read is over the limit."""
        reason = self.exceeded(bad_records, records)
        if reason is not None:
            raise TooManyBadRecords(reason)

    def exceeded(self, bad_records: int, records: int) -> str | None:
        """Why ``bad_records`` of ``records`` read is over the limit (one line), or None when it is not."""
        if self.count is not None and bad_records > self.count:
            return f"{bad_records} bad record(s), more than the {self.count} allowed"
        if self.share is not None and bad_records > self.share * max(records, 0):
            return (f"{bad_records} bad record(s) of {records} read ({bad_records / max(records, 1):.2%}), "
                    f"more than the {self} allowed")
        return None


@dataclass(frozen=True)
class ReadOptions:
    """Reader options every format takes (a format that cannot honour one refuses it)."""

    encoding: str = "utf-8"  # declared text encoding; a UTF-8 byte-order mark is always dropped
    on_bad_record: str = "permissive"
    columns: Sequence[str] | None = None  # fields a record needs (None: all); readers may skip the rest
    # CSV/TSV: a quoted field spanning more lines is taken for a quote left open (other formats' records
    # are one line each, or not made of lines).
    max_field_lines: int = DEFAULT_MAX_FIELD_LINES
    # How many bad records a whole job (all files) may meet; checked by the job over all records read.
    max_bad_records: BadRecordLimit | None = None

    def __post_init__(self) -> None:
        if self.on_bad_record not in BAD_RECORD_MODES:
            raise ValueError(f"on_bad_record must be one of {', '.join(BAD_RECORD_MODES)}; "
                             f"got {self.on_bad_record!r}")
        if self.max_field_lines < 1:
            raise ValueError(f"max_field_lines must be >= 1; got {self.max_field_lines}")
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
