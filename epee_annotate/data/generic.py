"""Generic JSONL/CSV/TSV/Parquet loaders for text, relation and image-list data (readers: ``formats``).

Columns (CSV header, JSONL keys or Parquet columns):

- text: ``text``, ``label``;
- relation: ``text``, ``head_start``, ``head_end``, ``tail_start``, ``tail_end``, ``label``
  (character offsets, end exclusive); JSONL may give ``head`` and ``tail`` as ``[start, end]``;
- image list: ``path`` (relative to the list file's folder, or absolute), ``label``.

Optional ``id`` and ``group`` (document) columns are kept on the examples. ``columns`` maps
these standard names to the file's own column names (``{"text": "note_text"}``). Labels are read as
strings. A bad record stops loading with an error naming the file and line, unless
``on_error="skip"``, which skips it and logs a count with line numbers (never the text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import filesystem
from ..formats import HeaderError, ReadOptions, read_csv_header
from .examples import DataError, Example, SkipCounter, read_records, require_examples

REQUIRED = {
    "text": ("text", "label"),
    "relation": ("text", "head_start", "head_end", "tail_start", "tail_end", "label"),
    "image": ("path", "label"),
}


class RecordError(ValueError):
    """One record does not fit the expected columns."""


TABLE_FORMATS = ("jsonl", "csv", "tsv", "parquet")


def load_records(path: str | Path, fmt: str, task: str, on_error: str = "stop",
                 columns: dict[str, str] | None = None, encoding: str = "utf-8") -> list[Example]:
    """Examples of ``task`` from a JSONL, CSV, TSV or Parquet file (``fmt``), read through ``formats``."""
    source = str(path)
    columns = dict(columns or {})
    if task not in REQUIRED:
        raise ValueError(f"task must be one of {sorted(REQUIRED)}, got {task!r}")
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"generic format must be one of {list(TABLE_FORMATS)}, got {fmt!r}")
    if not filesystem.is_file(source):
        raise FileNotFoundError(f"data file {source!r} does not exist")
    if task == "image" and filesystem.is_uri(source):  # the images it lists are decoded from local files
        raise ValueError(f"an image list must be a local file, got {source!r}")
    if fmt in ("csv", "tsv"):
        _check_header(source, fmt, task, columns, encoding)
    counter = SkipCounter(on_error, source)
    examples = []
    for record in read_records(source, fmt, counter, encoding):
        try:
            examples.append(_example(_rename(record.data, columns), task, Path(source).parent))
        except RecordError as error:
            counter.bad(record.position, str(error))
    counter.finish()
    require_examples(examples, source, len(counter.skipped))
    return examples


def _check_header(source: str, fmt: str, task: str, columns: dict[str, str], encoding: str) -> None:
    """A missing column is a file-level problem (no row could be read), so it always stops."""
    try:
        header = read_csv_header(source, fmt, ReadOptions(encoding))
    except HeaderError as error:
        raise DataError(f"{source}, line 1: cannot read the header ({error})") from None
    missing = [columns.get(c, c) for c in REQUIRED[task] if columns.get(c, c) not in header]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {header}")


def _rename(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The row under the standard names (``columns``: standard name -> the file's column)."""
    if not columns:
        return row
    renamed = {k: v for k, v in row.items() if k not in columns}
    renamed.update({standard: row[own] for standard, own in columns.items() if own in row})
    return renamed


def _example(row: dict[str, Any], task: str, base: Path) -> Example:
    missing = [c for c in _required_keys(row, task) if c not in row or row[c] is None]
    if missing:
        raise RecordError(f"missing field(s) {missing}")
    label = row["label"]
    if isinstance(label, (dict, list, bool)) or str(label).strip() == "":
        raise RecordError("label must be a non-empty string or number")
    label = str(label).strip()
    ident = None if row.get("id") is None else str(row["id"])
    group = None if row.get("group") in (None, "") else str(row["group"])
    if task == "text":
        return Example(_text(row["text"]), label, ident, group)
    if task == "relation":
        text = _text(row["text"])
        head, tail = _span(row, "head", len(text)), _span(row, "tail", len(text))
        return Example({"text": text, "head": head, "tail": tail}, label, ident, group)
    path = Path(str(row["path"]))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise RecordError("image file does not exist")  # the path itself may name a patient
    return Example(str(path), label, ident, group)


def _required_keys(row: dict[str, Any], task: str) -> tuple[str, ...]:
    if task == "relation" and "head" in row and "tail" in row:
        return ("text", "head", "tail", "label")
    return REQUIRED[task]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError("text must be a non-empty string")
    return value


def _span(row: dict[str, Any], name: str, length: int) -> tuple[int, int]:
    raw = row[name] if name in row else (row[f"{name}_start"], row[f"{name}_end"])
    try:
        start, end = (int(str(x).strip()) for x in raw)
    except (TypeError, ValueError):
        raise RecordError(f"{name} must be a [start, end] pair of integer character offsets") from None
    if not 0 <= start < end <= length:
        raise RecordError(f"{name} span ({start}, {end}) is outside the text of length {length}")
    return start, end
