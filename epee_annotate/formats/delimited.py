"""CSV and TSV with a header row: one record per data row, keyed by the header's names.

Quoted fields may span lines; a record's position is the line it starts on. A row with the wrong
number of fields, a row the CSV parser rejects, or a row holding bytes that do not decode is an
error record, and reading resumes at the next row. A field may be as long as a note gets: the
parser's field-size limit is raised for the duration of each row only (it is process-wide).
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from typing import BinaryIO, Iterator

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


def _rows(stream: BinaryIO, options: ReadOptions, delimiter: str):
    return csv.reader(text_stream(stream, options), delimiter=delimiter, strict=True)


def _header(rows, options: ReadOptions) -> list[str] | None:
    """The header row (None: empty file); ``HeaderError`` when it cannot be read."""
    try:
        with _field_limit():
            header = next(rows, None)
    except csv.Error:  # its message may quote the row
        raise HeaderError("malformed header row") from None
    problem = undecodable("".join(header or []), options)
    if problem is not None:
        raise HeaderError(f"header row is {problem}")
    return header


def read_header(stream: BinaryIO, options: ReadOptions, delimiter: str = ",") -> list[str]:
    """The column names (the first record only; a bad row further down is that row's error)."""
    return _header(_rows(stream, options, delimiter), options) or []


def read_delimited(stream: BinaryIO, source: str, options: ReadOptions, delimiter: str = ",") -> Iterator[Record]:
    """Records of a delimited file; a file whose header cannot be read is one error record."""
    rows = _rows(stream, options, delimiter)
    try:
        header = _header(rows, options)
    except HeaderError as error:
        yield bad(source, "line 1", str(error))
        return
    if header is None:
        yield bad(source, "", "empty file (no header row)")
        return
    while True:
        where = f"line {rows.line_num + 1}"
        try:
            with _field_limit():
                row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:  # e.g. a quote left open until the end of the file
            yield bad(source, where, f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({_fault(error)})")
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
