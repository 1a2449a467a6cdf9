"""JSON Lines (one object per line; ``.jsonl``, ``.ndjson``, ``.json``) and JSON arrays (``[{...}, ...]``)."""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator

from .records import ReadOptions, Record, bad, select
from .text import BINARY, decode, is_binary, text_stream, undecodable


def parse_object(text: str, size: int) -> dict[str, Any]:
    """One JSON object; ValueError with a one-line reason that never quotes the content."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise ValueError("nested too deeply to parse (RecursionError)") from None
    except MemoryError:
        raise ValueError(f"too large to parse ({size} characters, MemoryError)") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {_kind(value)}, not an object")
    return value


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


JSON_ARRAY = ("a JSON array, not JSON Lines (one object per line): convert it, or read it as the json format; "
              "the file was not read")


def read_jsonl(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    """One record per non-blank line; a line that is not a JSON object is an error record."""
    text = text_stream(stream, options)
    first = True
    for number, line in enumerate(text, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"line {number}"
        if first and line.lstrip().startswith("["):  # a JSON array: each of its lines would be an error
            yield bad(source, where, JSON_ARRAY)
            return
        first = False
        if is_binary(line):
            yield bad(source, where, BINARY)
            return
        problem = undecodable(line, options)
        if problem is not None:
            yield bad(source, where, problem)
            continue
        try:
            data = parse_object(line, len(line))
        except ValueError as error:
            yield bad(source, where, str(error))
            continue
        yield Record(source, where, select(data, options.columns))
    if first:  # not one line with content: nothing would account for this file
        yield bad(source, "", EMPTY)


EMPTY = "empty file (no records)"


def read_json_array(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    """One record per element of a top-level JSON array; an element that is not an object is an error record."""
    try:
        value = json.loads(decode(stream.read(), options, first=True))
    except ValueError as error:  # JSONDecodeError is a ValueError; so is a decoding failure
        reason = f"not valid JSON ({error.msg} at line {error.lineno})" if isinstance(error, json.JSONDecodeError) \
            else str(error)
        yield bad(source, "", reason)
        return
    except RecursionError:
        yield bad(source, "", "nested too deeply to parse (RecursionError)")
        return
    if not isinstance(value, list):
        yield bad(source, "", f"a JSON {_kind(value)}, not an array of objects (use JSON Lines for one object "
                              "per line)")
        return
    if not value:
        yield bad(source, "", EMPTY)
    for number, item in enumerate(value, start=1):
        where = f"record {number}"
        if isinstance(item, dict):
            yield Record(source, where, select(item, options.columns))
        else:
            yield bad(source, where, f"a JSON {_kind(item)}, not an object")
