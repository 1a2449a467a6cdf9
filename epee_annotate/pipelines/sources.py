"""Input side of the batch jobs: a thin Ray Data adapter over the format registry (``epee_annotate.formats``).

Files are listed through ``epee_annotate.filesystem`` and read by ``RecordsDatasource``, whose read
tasks call the very readers training uses, so hardening (byte-order mark, declared encoding,
malformed records) is the same for both. Each record becomes one row of a block:

* ``__record``: the record's requested fields as JSON text (Parquet: the columns themselves, typed);
* ``__where`` / ``__source_file``: its position ("line 3", "row 7") and file;
* ``__read_error``: for an error record, its one-line message (file, position, reason; never the text);
* ``__input_bytes``: the file bytes the block's records were read from, on its first row (0 on the
  others), so the job's progress (``progress``) counts input bytes annotated against the listed sizes.

A listed path that cannot be read as a file (dangling symlink, symlink loop, no permission) is
kept in the file list and becomes one error row (``unreadable_inputs``), never a job failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa

from .. import filesystem
from ..formats import FORMATS, HeaderError, ReadOptions, Record, format_of, read_csv_header, read_stream, sniff_json
from ..formats.registry import split_name
from ..vocab import NOTE_FORMATS
from .errors import SettingError

# A notes job reads ``NOTE_FORMATS``; these are also recognised from file names (.json: JSON Lines or
# a JSON array, by its first character). The others are read when named (``fmt``).
NAMED_NOTE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
FOLDER_FORMATS = ("txt", "ddi")  # named: only files with their extensions are read from a folder
IMAGE_FORMATS = ("image", "dicom")
# Column names used between the reader and the annotator (never written).
RECORD, WHERE, SOURCE_FILE, READ_ERROR = "__record", "__where", "__source_file", "__read_error"
INPUT_BYTES = "__input_bytes"
TYPED_FORMATS = ("parquet",)  # records keep the file's column types instead of JSON text
ROWS_PER_BLOCK = 2048


def unreadable_inputs(files: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(readable files, {unreadable file: reason}); each unreadable one becomes an error row."""
    problems = {path: reason for path in files if (reason := filesystem.problem(path)) is not None}
    return [path for path in files if path not in problems], problems


def note_format(path: str) -> str | None:
    """Input format from a file name (``.json``: JSON Lines unless the file starts with '[')."""
    if split_name(path)[0] == ".json":
        return sniff_json(path)
    return format_of(path, NAMED_NOTE_FORMATS)


def _keeps(fmt: str | None):
    """Which listed files a job with format ``fmt`` reads (None: any file whose name says a note format)."""
    if fmt is None:
        return lambda p: filesystem.visible(p) and note_format(p) is not None
    if fmt in FOLDER_FORMATS:  # a folder of notes may hold other files
        return lambda p: filesystem.visible(p) and format_of(p, (fmt,)) == fmt
    return filesystem.visible


def _not_read(fmt: str | None) -> str:
    """Why a listed file is not read by a notes job in format ``fmt`` (its name)."""
    if fmt is None:
        return f"file name says no notes format ({', '.join(NAMED_NOTE_FORMATS)}, json; also .gz/.bz2/.zst)"
    return f"not a {', '.join(FORMATS[fmt].extensions)} file (format {fmt})"


def resolve_note_inputs(specs: Sequence[str], fmt: str | None = None,
                        skipped: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """(format, files): one format per job, taken from ``fmt`` or the file names; ``skipped`` gets the rest."""
    if fmt is not None and fmt not in NOTE_FORMATS:
        raise SettingError(f"unsupported notes format {fmt!r}; supported: {', '.join(NOTE_FORMATS)}", "fmt")
    files = filesystem.expand(specs, _keeps(fmt), skipped, _not_read(fmt))
    if fmt is None:
        readable = [f for f in files if filesystem.problem(f) is None] or files
        formats = {note_format(f) for f in readable}
        if None in formats:
            unknown = [f for f in readable if note_format(f) is None][:3]
            raise SettingError(f"cannot tell the format of {unknown} from the file names", "fmt")
        if len(formats) > 1:
            raise SettingError(f"inputs mix formats {sorted(formats)}; run one job per format", "fmt")
        fmt = formats.pop()
    return fmt, files


def resolve_image_inputs(specs: Sequence[str], skipped: dict[str, str] | None = None) -> list[str]:
    """Image files: raster and DICOM extensions, plus extension-less files (common for DICOM)."""
    def keep(path: str) -> bool:
        name = os.path.basename(path)
        return filesystem.visible(path) and name.upper() != "DICOMDIR" and format_of(path, IMAGE_FORMATS) is not None

    return filesystem.expand(specs, keep, skipped, "not an image or DICOM file by its name (or a DICOMDIR index)")


# ----- notes ---------------------------------------------------------------------------
def csv_header(path: str, fmt: str, options: ReadOptions = ReadOptions()) -> list[str]:
    """Column names of a CSV/TSV file (its first record only); ValueError without file content when unreadable."""
    try:
        return read_csv_header(path, fmt, options)
    except HeaderError as error:
        raise ValueError(f"{path}: not a readable CSV file ({error})") from None


def note_passthrough_fields(fmt: str, files: Sequence[str], id_column: str, text_column: str,
                            keep_columns: Sequence[str], options: ReadOptions = ReadOptions()) -> list[pa.Field]:
    """Output fields of the pass-through columns; checks that the named columns exist where we can."""
    needed = [id_column, text_column, *keep_columns]
    if len(set(needed)) != len(needed):
        raise SettingError(f"the id, text and pass-through columns must all differ: {needed}",
                           "id_column", "text_column", "keep_columns")
    if fmt == "parquet":
        first = _parquet_schema(files[0])
        for path in files:
            schema = _parquet_schema(path)
            missing = [c for c in needed if c not in schema.names]
            if missing:
                raise ValueError(f"{path}: column(s) {missing} not found; columns are {schema.names}")
            differ = [c for c in keep_columns if schema.field(c).type != first.field(c).type]
            if differ:
                raise ValueError(f"{path}: column(s) {differ} have other types than in {files[0]}; "
                                 "cast them to one type first")
        return [pa.field(c, first.field(c).type) for c in keep_columns]
    if fmt in ("csv", "tsv"):
        for path in files:
            names = csv_header(path, fmt, options)
            if not names:  # an empty file: its one error row says so when it is read
                continue
            missing = [c for c in needed if c not in names]
            if missing:
                # The header's names are not listed: in a file without a header they are note text.
                raise ValueError(f"{path}: column(s) {missing} not found in its header row "
                                 f"({len(names)} columns; check the id/text column names)")
    # Other formats' fields are only known per record: a missing id/text is that record's error row.
    return [pa.field(c, pa.string()) for c in keep_columns]


def _parquet_schema(path: str) -> pa.Schema:
    import pyarrow.parquet as pq

    with filesystem.open_input(path) as handle:
        return pq.read_schema(handle)


def records_block(records: Iterable[Record], schema: pa.Schema | None = None, input_bytes: int = 0) -> pa.Table:
    """Records as one block (module docstring); ``schema`` types the columns of typed formats."""
    records = list(records)
    errors = [r.message for r in records]
    block: dict[str, pa.Array] = {}
    if schema is None:
        encoded = [_json(r.data) for r in records]  # error records keep what they could read (e.g. the id)
        for i, text in enumerate(encoded):
            if text is None and errors[i] is None:
                errors[i] = f"{records[i].position}: record cannot be passed on (not JSON encodable)"
        block[RECORD] = pa.array(encoded, pa.large_string())
    else:
        block.update(_typed_columns([r.data for r in records], schema))
    block[WHERE] = pa.array([r.where for r in records], pa.string())
    block[SOURCE_FILE] = pa.array([str(r.source) for r in records], pa.string())
    block[READ_ERROR] = pa.array(errors, pa.string())
    block[INPUT_BYTES] = pa.array([input_bytes] + [0] * (len(records) - 1) if records else [], pa.int64())
    return pa.table(block)


def _json(data: dict[str, Any]) -> str | None:
    try:  # ASCII escapes: a lone surrogate from a JSON "\\ud800" escape stays encodable in an Arrow string
        return json.dumps(data)
    except (TypeError, ValueError, RecursionError):
        return None


def _typed_columns(rows: list[dict[str, Any]], schema: pa.Schema) -> dict[str, pa.Array]:
    """The columns of ``schema`` typed as the first file has them; other files' types are inferred."""
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a later file types the id or text column differently
        table = pa.Table.from_pylist([{c: row.get(c) for c in schema.names} for row in rows])
    return {name: table.column(name).combine_chunks() for name in schema.names}


def block_records(block: pa.Table, columns: Sequence[str]) -> list[tuple[dict[str, Any], str | None, str, str]]:
    """(fields, read error, position, file) of each row of a ``records_block`` block."""
    names = set(block.column_names)
    if RECORD in names:
        datas = [json.loads(x) if x is not None else {} for x in block.column(RECORD).to_pylist()]
    else:
        datas = block.select([c for c in columns if c in names]).to_pylist()
    return list(zip(datas, block.column(READ_ERROR).to_pylist(), block.column(WHERE).to_pylist(),
                    block.column(SOURCE_FILE).to_pylist()))


def _file_based_datasource():
    from ray.data.datasource import FileBasedDatasource

    return FileBasedDatasource


class RecordsDatasource(_file_based_datasource()):
    """Ray Data source whose read tasks run a registry reader over each file (``fmt`` None: by file name)."""

    def __init__(self, paths: Sequence[str], fmt: str | None, options: ReadOptions,
                 schema: pa.Schema | None = None, default_format: str | None = None, **kwargs: Any):
        super().__init__(list(paths), **kwargs)
        self.fmt = fmt
        self.default_format = default_format
        self.options = options
        self.record_schema = schema

    def _open_input_source(self, filesystem, path: str, **open_args):
        # Raw and seekable (Parquet, npz need random access); the registry decompresses by file name.
        return filesystem.open_input_file(path)

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        fmt = self.fmt or format_of(path, IMAGE_FORMATS) or self.default_format
        chunk: list[Record] = []
        size = _size(f)  # now: a reader may close the file when it is done
        counted = 0  # file bytes already put on a block (the reader reads ahead: a block's share is close)
        for record in read_stream(f, path, fmt, self.options):
            chunk.append(record)
            if len(chunk) >= ROWS_PER_BLOCK:
                position = min(size, max(counted, _position(f)))
                yield records_block(chunk, self.record_schema, position - counted)
                chunk, counted = [], position
        if chunk:  # the last block carries the rest of the file, so a file's blocks add up to its size
            yield records_block(chunk, self.record_schema, max(counted, size) - counted)


def _position(f) -> int:
    try:
        return int(f.tell())
    except (OSError, ValueError):  # a closed or unseekable stream: count it with the last block
        return 0


def _size(f) -> int:
    try:
        return int(f.size())
    except (OSError, ValueError, AttributeError):
        return 0


def read_notes(fmt: str, files: Sequence[str], columns: Sequence[str], num_blocks: int | None = None,
               options: ReadOptions = ReadOptions()):
    """A Ray dataset of note records in ``fmt``, one row per record (module docstring)."""
    import ray.data

    options = replace(options, columns=list(columns))
    schema = None
    if fmt in TYPED_FORMATS:
        first = _parquet_schema(files[0])
        schema = pa.schema([first.field(c) for c in columns if c in first.names])
    source = RecordsDatasource(filesystem.ray_paths(list(files)), fmt, options, schema,
                               filesystem=filesystem.filesystem_of(list(files)))
    return ray.data.read_datasource(source, override_num_blocks=num_blocks)


# ----- images --------------------------------------------------------------------------
IMAGE_SCHEMA = pa.schema([("bytes", pa.binary()), ("path", pa.string())])


def read_image_files(files: Sequence[str], num_blocks: int | None = None):
    """Ray dataset of (bytes, path) rows, one per file (``path`` without the scheme, as Ray gives it)."""
    import ray.data

    source = RecordsDatasource(filesystem.ray_paths(list(files)), None, ReadOptions(), IMAGE_SCHEMA,
                               default_format="dicom", filesystem=filesystem.filesystem_of(list(files)))
    return ray.data.read_datasource(source, override_num_blocks=num_blocks)


def npz_table(path: str, split: str) -> pa.Table:
    """MedMNIST-style archive as rows: doc_id, reference label, raw uint8 pixels, shape, archive path."""
    from ..formats import read_file

    records = list(read_file(path, "npz", split=split))
    multi = any(isinstance(r.data["label"], list) for r in records)
    shape = list(records[0].data["image"].shape) if records else []
    return pa.table({
        "doc_id": pa.array([r.data["id"] for r in records], pa.string()),
        "reference_label": pa.array([r.data["label"] for r in records],
                                    pa.list_(pa.int64()) if multi else pa.int64()),
        "pixels": pa.array([r.data["image"].tobytes() for r in records], pa.binary()),
        "shape": pa.array([shape] * len(records), pa.list_(pa.int32())),
        "path": pa.array([filesystem.absolute(path)] * len(records), pa.string()),
    })


def read_npz(path: str, split: str, rows_per_block: int = 256):
    """Ray dataset of an npz split (the archive is read once by the driver)."""
    import ray.data

    table = npz_table(path, split)
    chunks = [table.slice(i, rows_per_block) for i in range(0, max(table.num_rows, 1), rows_per_block)]
    return ray.data.from_arrow(chunks), table.schema.field("reference_label")
