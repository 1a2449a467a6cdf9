"""Input side of the batch jobs: resolve files/globs/directories and open them as Ray datasets.

Text formats are read so that one bad record never fails a whole block:

* CSV: ``CsvNotesDatasource`` streams each file through pyarrow's CSV reader; the id, text and
  pass-through columns are read as raw bytes (quoted fields may span lines) and decoded per
  document, so invalid UTF-8 becomes that document's error row. A row with the wrong number of
  fields is one error row naming its data-row number; a file pyarrow cannot parse further (binary
  content, a bad row that is not UTF-8) gives one error row naming the file, the fault and the
  first data row not read (rows of the failing 4 MiB block are lost with it). pyarrow's own messages quote
  the row, so they are never passed on.
* JSONL/NDJSON: read line by line (``JsonLinesDatasource``); each line is parsed per document,
  so a malformed line (too deeply nested, too large, invalid UTF-8), a non-string text or a
  missing id is one error row. Blank lines are skipped; a UTF-8 byte-order mark is ignored.
* A listed path that cannot be read as a file (dangling symlink, symlink loop, no permission) is
  kept in the file list and becomes one error row (``unreadable_inputs``), never a job failure.
* JSON (``.json`` starting with ``[``: one array per file): ``ray.data.read_json`` (Arrow), which
  needs well-formed files; a ``.json`` file that does not start with ``[`` is read as JSON Lines.
* Parquet: ``ray.data.read_parquet`` of the needed columns only; pass-through columns keep
  their Parquet types. CSV/JSON pass-through columns are written as strings.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterator, Sequence

import pyarrow as pa

from ..file_checks import unreadable_reason
from .. import storage
from .errors import SettingError

NOTE_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".pq": "parquet",
}
IMAGE_EXTENSIONS = {".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# Column names used between the reader and the annotator (never written).
RAW_LINE, LINE_NO, SOURCE_FILE, READ_ERROR = "__raw_line", "__line_no", "__source_file", "__read_error"
UTF8_BOM = b"\xef\xbb\xbf"


def expand_paths(specs: Sequence[str], keep) -> list[str]:
    """Files named by paths, globs or directories (recursively), filtered by ``keep(path)``; sorted.

    Entries of a directory or glob that cannot be read (dangling symlinks, loops) are kept so the
    job can report them (see ``unreadable_inputs``); ``keep`` must not open them.
    """
    found: list[str] = []
    remote: list[str] = []
    for spec in specs:
        if storage.is_uri(spec):  # object storage: same rules, through pyarrow.fs
            remote += storage.list_files(str(spec), keep)
            continue
        spec = os.path.expanduser(str(spec))
        if os.path.isdir(spec):
            for root, dirs, files in os.walk(spec):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
                found += [os.path.join(root, f) for f in sorted(files) if keep(os.path.join(root, f))]
        elif glob.has_magic(spec):
            matches = [m for m in sorted(glob.glob(spec, recursive=True))
                       if (os.path.isfile(m) or os.path.islink(m)) and keep(m)]
            if not matches:
                raise FileNotFoundError(f"no input files match {spec!r}")
            found += matches
        elif os.path.isfile(spec):
            found.append(spec)
        else:
            raise FileNotFoundError(f"input {spec!r} does not exist")
    unique = sorted({os.path.abspath(p) for p in found} | set(remote))
    if not unique:
        raise FileNotFoundError(f"no input files found in {list(specs)}")
    return unique


def _visible(path: str) -> bool:
    return not os.path.basename(path).startswith((".", "_"))


def input_problem(path: str) -> str | None:
    """Why a listed input cannot be read, or None; object-storage listings hold only existing objects."""
    return None if storage.is_uri(path) else unreadable_reason(path)


def unreadable_inputs(files: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(readable files, {unreadable file: reason}); each unreadable one becomes an error row."""
    problems = {path: reason for path in files if (reason := input_problem(path)) is not None}
    return [path for path in files if path not in problems], problems


def note_format(path: str) -> str | None:
    """Input format from a file name; ``.json`` is JSON Lines unless the file starts with '['."""
    fmt = NOTE_FORMATS.get(os.path.splitext(os.path.basename(path).lower())[1])
    if fmt == "json":
        # Many exports (PHEE included) are JSON Lines named .json.
        try:
            with storage.open_input(path) as handle:
                head = handle.read(4096).removeprefix(UTF8_BOM).lstrip(b" \t\r\n")
        except OSError:  # unreadable: reported as an error row, its format does not matter
            return "jsonl"
        fmt = "json" if head.startswith(b"[") else "jsonl"
    return fmt


def resolve_note_inputs(specs: Sequence[str], fmt: str | None = None) -> tuple[str, list[str]]:
    """(format, files): one format per job, taken from ``fmt`` or the file names."""
    if fmt is not None and fmt not in set(NOTE_FORMATS.values()):
        raise SettingError(f"the format must be one of {sorted(set(NOTE_FORMATS.values()))}, got {fmt!r}", "fmt")
    files = expand_paths(specs, lambda p: _visible(p) and (fmt is not None or note_format(p) is not None))
    if fmt is None:
        readable = [f for f in files if input_problem(f) is None] or files
        formats = {note_format(f) for f in readable}
        if None in formats:
            unknown = [f for f in readable if note_format(f) is None][:3]
            raise SettingError(f"cannot tell the format of {unknown} from the file names", "fmt")
        if len(formats) > 1:
            raise SettingError(f"inputs mix formats {sorted(formats)}; run one job per format", "fmt")
        fmt = formats.pop()
    return fmt, files


def resolve_image_inputs(specs: Sequence[str]) -> list[str]:
    """Image files: known extensions, plus extension-less files (common for DICOM) in directories."""
    def keep(path: str) -> bool:
        name = os.path.basename(path)
        if not _visible(path) or name.upper() == "DICOMDIR":
            return False
        ext = os.path.splitext(name)[1].lower()
        return ext in IMAGE_EXTENSIONS or ext == ""

    return expand_paths(specs, keep)


# ----- notes ---------------------------------------------------------------------------
def csv_header(path: str, delimiter: str) -> list[str]:
    """Column names of a CSV file (its first record only); ValueError without file content when unreadable.

    Only the header is read: a bad row further down is that row's error, not the job's.
    """
    import csv
    import io

    try:
        # errors="replace": the reader decodes ahead, and invalid UTF-8 below the header is a row's error.
        with storage.open_input(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace",
                                                                newline="") as text:
            return next(csv.reader(text, delimiter=delimiter), [])
    except csv.Error:  # its message may quote the row
        raise ValueError(f"{path}: not a readable CSV file (malformed header row)") from None


def _csv_fault(error: BaseException) -> str:
    """The kind of a pyarrow CSV failure, without the row text pyarrow puts in its message."""
    message = str(error)
    row = re.search(r"Row #(\d+)", message)
    if "Expected" in message and "columns" in message:
        kind = "wrong number of fields"
    elif "UTF-8" in message or isinstance(error, UnicodeDecodeError):
        kind = "not valid UTF-8"
    elif "Empty CSV" in message:
        kind = "empty file"
    else:
        kind = type(error).__name__
    return f"{kind} at data row {int(row.group(1)) - 1}" if row else kind


def note_passthrough_fields(fmt: str, files: Sequence[str], id_column: str, text_column: str,
                            keep_columns: Sequence[str]) -> list[pa.Field]:
    """Output fields of the pass-through columns; checks that the named columns exist where we can."""
    needed = [id_column, text_column, *keep_columns]
    if len(set(needed)) != len(needed):
        raise SettingError(f"the id, text and pass-through columns must all differ: {needed}",
                           "id_column", "text_column", "keep_columns")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for path in files:
            schema = pq.read_schema(storage.open_input(path))
            missing = [c for c in needed if c not in schema.names]
            if missing:
                raise ValueError(f"{path}: column(s) {missing} not found; columns are {schema.names}")
        first = pq.read_schema(storage.open_input(files[0]))
        for path in files[1:]:
            schema = pq.read_schema(storage.open_input(path))
            differ = [c for c in keep_columns if schema.field(c).type != first.field(c).type]
            if differ:
                raise ValueError(f"{path}: column(s) {differ} have other types than in {files[0]}; "
                                 "cast them to one type first")
        return [pa.field(c, first.field(c).type) for c in keep_columns]
    if fmt in ("csv", "tsv"):
        for path in files:
            names = csv_header(path, "\t" if fmt == "tsv" else ",")
            missing = [c for c in needed if c not in names]
            if missing:
                # The header's names are not listed: in a file without a header they are note text.
                raise ValueError(f"{path}: column(s) {missing} not found in its header row "
                                 f"({len(names)} columns; check the id/text column names)")
    # JSON(L) keys are only known per record: a missing id/text is that record's error row.
    return [pa.field(c, pa.string()) for c in keep_columns]


def read_notes(fmt: str, files: Sequence[str], columns: Sequence[str], num_blocks: int | None = None):
    """A Ray dataset of raw note records in ``fmt`` (see module docstring for per-format rules)."""
    import ray.data

    columns = list(columns)
    filesystem = storage.filesystem_of(list(files))
    files = storage.ray_paths(list(files))
    if fmt in ("csv", "tsv"):
        source = CsvNotesDatasource(list(files), columns=columns, delimiter="\t" if fmt == "tsv" else ",",
                                    filesystem=filesystem)
        return ray.data.read_datasource(source, override_num_blocks=num_blocks)
    if fmt == "jsonl":
        return ray.data.read_datasource(JsonLinesDatasource(list(files), filesystem=filesystem),
                                        override_num_blocks=num_blocks)
    if fmt == "json":
        return ray.data.read_json(list(files), override_num_blocks=num_blocks,
                                  filesystem=filesystem).select_columns(columns)
    if fmt == "parquet":
        return ray.data.read_parquet(list(files), columns=columns, override_num_blocks=num_blocks,
                                     filesystem=filesystem)
    raise ValueError(f"unknown notes format {fmt!r}")


def _file_based_datasource():
    from ray.data.datasource import FileBasedDatasource

    return FileBasedDatasource


class JsonLinesDatasource(_file_based_datasource()):
    """JSON Lines as raw lines (bytes, line number, file), parsed later one record at a time."""

    _FILE_EXTENSIONS = ["jsonl", "ndjson", "json"]
    LINES_PER_BLOCK = 2048

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        raws: list[bytes] = []
        numbers: list[int] = []
        for number, line in enumerate(_split_lines(f), start=1):
            if number == 1:
                line = line.removeprefix(UTF8_BOM)
            if not line.strip():
                continue
            raws.append(line)
            numbers.append(number)
            if len(raws) >= self.LINES_PER_BLOCK:
                yield _line_block(raws, numbers, path)
                raws, numbers = [], []
        if raws:
            yield _line_block(raws, numbers, path)


def _split_lines(f, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Split a binary stream on b"\\n" only (JSON strings may hold U+2028 etc.)."""
    pending = b""
    while True:
        chunk = f.read(chunk_size)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line.rstrip(b"\r") for line in lines)
    if pending:
        yield pending.rstrip(b"\r")


def _line_block(raws: list[bytes], numbers: list[int], path: str) -> pa.Table:
    return pa.table({
        RAW_LINE: pa.array(raws, pa.binary()),
        LINE_NO: pa.array(numbers, pa.int64()),
        SOURCE_FILE: pa.array([path] * len(raws), pa.string()),
    })


def parse_json_line(raw: bytes) -> dict[str, Any]:
    """One JSONL record; raises ValueError with a one-line reason (never quoting the content)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"line is not valid UTF-8 (byte {error.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"line is not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise ValueError("line is nested too deeply to parse (RecursionError)") from None
    except MemoryError:
        raise ValueError(f"line is too large to parse ({len(raw)} bytes, MemoryError)") from None
    if not isinstance(record, dict):
        raise ValueError(f"line is a JSON {type(record).__name__}, not an object")
    return record


class CsvNotesDatasource(_file_based_datasource()):
    """CSV/TSV notes as raw-bytes columns plus data-row number, file and a per-row read error."""

    _FILE_EXTENSIONS = ["csv", "tsv", "txt"]

    def __init__(self, paths: Sequence[str], columns: Sequence[str], delimiter: str = ",", **kwargs: Any):
        super().__init__(list(paths), **kwargs)
        self.columns = list(columns)
        self.delimiter = delimiter

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        from pyarrow import csv

        bad_rows: list[int | None] = []

        def skip_bad_row(row) -> str:  # pyarrow counts the header as row 1
            bad_rows.append(row.number - 1 if row.number is not None else None)
            return "skip"

        next_row = 1
        try:
            reader = csv.open_csv(
                f, read_options=csv.ReadOptions(use_threads=False, block_size=4 << 20),
                parse_options=csv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True,
                                               invalid_row_handler=skip_bad_row),
                convert_options=csv.ConvertOptions(include_columns=self.columns,
                                                   column_types={c: pa.binary() for c in self.columns},
                                                   strings_can_be_null=False),
            )
            for batch in reader:
                table = pa.Table.from_batches([batch]).select(self.columns)
                yield self._block(table, next_row, bad_rows, path)
                next_row += table.num_rows + len(bad_rows)
                bad_rows = []
        except (pa.ArrowException, UnicodeDecodeError) as error:
            fault = _csv_fault(error)
            # pyarrow parses a block (4 MiB) at a time: the rows of the failing block are lost too.
            yield self._errors([f"{os.path.basename(path)}: CSV parse error ({fault}); data rows {next_row} "
                                "onward were not read"], path)

    def _block(self, table: pa.Table, first_row: int, bad_rows: list[int | None], path: str) -> pa.Table:
        """The good rows numbered around the skipped bad ones, then one error row per bad row."""
        skipped = {n for n in bad_rows if n is not None}
        numbers, n = [], first_row
        while len(numbers) < table.num_rows:
            if n not in skipped:
                numbers.append(n)
            n += 1
        block = table.append_column(LINE_NO, pa.array(numbers, pa.int64()))
        block = block.append_column(SOURCE_FILE, pa.array([path] * table.num_rows, pa.string()))
        block = block.append_column(READ_ERROR, pa.nulls(table.num_rows, pa.string()))
        if not bad_rows:
            return block
        name = os.path.basename(path)
        messages = [f"{name} data row {n}: wrong number of fields" if n is not None
                    else f"{name}: a data row has the wrong number of fields" for n in bad_rows]
        return pa.concat_tables([block, self._errors(messages, path, bad_rows)])

    def _errors(self, messages: list[str], path: str, rows: Sequence[int | None] | None = None) -> pa.Table:
        count = len(messages)
        columns = {c: pa.nulls(count, pa.binary()) for c in self.columns}
        return pa.table({**columns, LINE_NO: pa.array(rows or [None] * count, pa.int64()),
                         SOURCE_FILE: pa.array([path] * count, pa.string()),
                         READ_ERROR: pa.array(messages, pa.string())})


# ----- images --------------------------------------------------------------------------
def read_image_files(files: Sequence[str], num_blocks: int | None = None):
    """Ray dataset of (bytes, path) rows, one per file."""
    import ray.data

    return ray.data.read_binary_files(storage.ray_paths(list(files)), include_paths=True,
                                      override_num_blocks=num_blocks, filesystem=storage.filesystem_of(list(files)))


def npz_table(path: str, split: str) -> pa.Table:
    """MedMNIST-style archive as rows: doc_id, reference label, raw uint8 pixels, shape, archive path."""
    from ..imaging import load_npz_split

    images, labels = load_npz_split(path, split)
    shape = images.shape[1:]
    flat = images.reshape(len(images), -1)
    if labels.ndim == 1:
        reference = pa.array(labels, pa.int64())
    else:
        reference = pa.array([list(map(int, row)) for row in labels], pa.list_(pa.int64()))
    width = len(str(max(len(images) - 1, 0)))
    return pa.table({
        "doc_id": pa.array([f"{split}-{i:0{width}d}" for i in range(len(images))], pa.string()),
        "reference_label": reference,
        "pixels": pa.array([row.tobytes() for row in flat], pa.binary()),
        "shape": pa.array([list(shape)] * len(images), pa.list_(pa.int32())),
        "path": pa.array([os.path.abspath(path)] * len(images), pa.string()),
    })


def read_npz(path: str, split: str, rows_per_block: int = 256):
    """Ray dataset of an npz split (the archive is read once by the driver)."""
    import ray.data

    table = npz_table(path, split)
    chunks = [table.slice(i, rows_per_block) for i in range(0, max(table.num_rows, 1), rows_per_block)]
    return ray.data.from_arrow(chunks), table.schema.field("reference_label")
