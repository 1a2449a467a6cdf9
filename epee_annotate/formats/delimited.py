"""CSV and TSV with a header row: one record per data row, keyed by the header's names.

Quoted fields may span lines; a record's position is the line it starts on. A row with the wrong
number of fields, a row the CSV parser rejects, or a row holding bytes that do not decode is an
error record, and reading resumes at the next row. A field may be as long as a note gets: the
parser's field-size limit is raised for the duration of each row only (it is process-wide).

A quote left open must not swallow the records after it: a record whose quoted field spans more
than ``ReadOptions.max_field_lines`` lines, or that the parser rejects after spanning several
lines (a quote still open at the end of the file, a stray quote further down), is one error record
naming the line where it started, and the lines after that one are read again as records.
"""

from __future__ import annotations

import csv
from collections import deque
from contextlib import contextmanager
from typing import BinaryIO, Iterable, Iterator

from .records import ReadOptions, Record, bad, select
from .text import BINARY, is_binary, text_stream, undecodable

FIELD_LIMIT = 2**31 - 1


class HeaderError(ValueError):
    """The header row cannot be read (the message never quotes the file)."""


@contextmanager
def _field_limit():
    previous = csv.field_size_limit(FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class _OpenQuote(Exception):
    """The record being parsed spans more lines than ``max_field_lines``."""


class _Lines:
    """The lines handed to the CSV parser, numbered; the current record's lines are kept to read them again."""

    def __init__(self, text: Iterable[str], limit: int):
        self.text = iter(text)
        self.limit = limit
        self.pending: deque[str] = deque()  # lines to hand out again (after a quote left open)
        self.number = 0  # of the last line handed out
        self.record: list[str] = []

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if len(self.record) >= self.limit:
            raise _OpenQuote
        line = self.pending.popleft() if self.pending else next(self.text)
        self.number += 1
        self.record.append(line)
        return line

    def start(self) -> int:
        """Begin a record; its first line's number."""
        self.record = []
        return self.number + 1

    def read_again(self) -> None:
        """Hand out the current record's lines after its first one again."""
        rest = self.record[1:]
        self.pending.extendleft(reversed(rest))
        self.number -= len(rest)
        self.record = []


def _rows(stream: BinaryIO, options: ReadOptions, delimiter: str):
    lines = _Lines(text_stream(stream, options), options.max_field_lines)
    return lines, csv.reader(lines, delimiter=delimiter, strict=True)


def _header(lines: _Lines, rows, options: ReadOptions) -> list[str] | None:
    """The header row (None: empty file); ``HeaderError`` when it cannot be read."""
    lines.start()
    try:
        with _field_limit():
            header = next(rows, None)
    except _OpenQuote:
        raise HeaderError(f"header row has a quote left open (still open after {options.max_field_lines} "
                          "lines)") from None
    except csv.Error:  # its message may quote the row
        raise HeaderError("malformed header row") from None
    problem = undecodable("".join(header or []), options)
    if problem is not None:
        raise HeaderError(f"header row is {problem}")
    return header


def read_header(stream: BinaryIO, options: ReadOptions, delimiter: str = ",") -> list[str]:
    """The column names (the first record only; a bad row further down is that row's error)."""
    return _header(*_rows(stream, options, delimiter), options) or []


def read_delimited(stream: BinaryIO, source: str, options: ReadOptions, delimiter: str = ",") -> Iterator[Record]:
    """Records of a delimited file; a file whose header cannot be read is one error record."""
    lines, rows = _rows(stream, options, delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = _header(lines, rows, options)
    except HeaderError as error:
        yield bad(source, "line 1", str(error))
        return
    if header is None:
        yield bad(source, "", "empty file (no header row)")
        return
    while True:
        first = lines.start()
        where = f"line {first}"
        try:
            with _field_limit():
                row = next(rows)
        except StopIteration:
            return
        except _OpenQuote:
            yield bad(source, where, f"quote opened in line {first} still open after {options.max_field_lines} "
                                     f"lines (the max field lines); lines from {first + 1} on are read again")
            lines.read_again()
            continue
        except csv.Error as error:
            if len(lines.record) > 1:  # a quote opened in the first line and never properly closed
                end = first + len(lines.record) - 1
                yield bad(source, where, f"malformed {kind}: quote opened in line {first} not closed properly "
                                         f"({_fault(error)} at line {end}); lines from {first + 1} on are "
                                         "read again")
                lines.read_again()
            else:
                yield bad(source, where, f"malformed {kind} ({_fault(error)})")
            continue
        if not row:
            continue  # blank line
        if any(is_binary(value) for value in row):
            yield bad(source, where, BINARY)
            return
        if len(row) != len(header):
            yield bad(source, where, f"wrong number of fields (expected {len(header)}, found {len(row)})")
            continue
        data = dict(zip(header, row))
        problems = [(i, p) for i, p in enumerate(undecodable(v, options) for v in row) if p is not None]
        if problems:
            i, problem = problems[0]
            readable = {name: value for j, (name, value) in enumerate(data.items()) if j not in dict(problems)}
            yield bad(source, where, f"field {i + 1} is {problem}", select(readable, options.columns))
            continue
        yield Record(source, where, select(data, options.columns))


def _fault(error: csv.Error) -> str:
    """The kind of a csv module error, without any quoted text."""
    message = str(error)
    for known in ("unexpected end of data", "line contains NUL", "field larger than field limit"):
        if known in message:
            return known
    return "parse error"


def read_csv(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    return read_delimited(stream, source, options, ",")


def read_tsv(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    return read_delimited(stream, source, options, "\t")
