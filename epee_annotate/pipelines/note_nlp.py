"""``--note-nlp``: the notes job's OMOP ``NOTE_NLP`` dataset (``omop`` module), written through the job's sink.

The annotator puts ``note_id`` and ``note_nlp_id`` on every annotation row; once the annotations
are written (resumed runs included), they become ``<out>/note_nlp/`` (``derived.write_derived``). Note ids are checked up front: integers only
(``omop.note_id_value``) and unique, since ``note_nlp_id`` packs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from ..omop import ConceptMap, NoteNlpError, NoteNlpWriter, note_id_value
from .errors import SettingError

DATASET = "note_nlp"
_READ = ["task", "kind", "start", "head_start", "tail_start", "label", "exit_layer", "rule", "confidence", "error",
         "context", "section", "note_id", "note_nlp_id", "text", "snippet"]


@dataclass(frozen=True)
class NoteNlpOptions:
    """What ``--note-nlp`` needs: the column with the OMOP note id (default: the id column) and a concept map."""

    note_id_column: str | None = None
    concept_map: str | None = None

    def read_map(self) -> ConceptMap:
        if not self.concept_map:
            return ConceptMap()
        try:
            return ConceptMap.read(self.concept_map)
        except (OSError, NoteNlpError) as error:
            raise SettingError(str(error), "concept_map") from None


def check_note_id_type(fmt: str, files: Sequence[str], column: str, id_column: str, options=None) -> None:
    """A note id column that is not there (Parquet, CSV headers) or not integers (Parquet) is refused up front."""
    if fmt in ("csv", "tsv"):
        from .sources import csv_header

        for path in files:
            if column not in (csv_header(path, fmt, options) if options else csv_header(path, fmt)):
                raise SettingError(f"{path}: the note_id column {column!r} is not in its header row", "note_id_column")
        return
    if fmt != "parquet":
        return
    from .sources import _parquet_schema

    for path in files:
        schema = _parquet_schema(path)
        if column not in schema.names:
            raise SettingError(f"{path}: the note_id column {column!r} is not there; columns are {schema.names}",
                               "note_id_column")
        if not pa.types.is_integer(schema.field(column).type):
            raise SettingError(_not_integer(column, id_column, f"it is {schema.field(column).type} in {path}"),
                               "note_id_column")


def _not_integer(column: str, id_column: str, detail: str) -> str:
    advice = ("name an integer column for note_id" if column == id_column
              else "name an integer column for note_id, or leave it unset to use the id column")
    return (f"NOTE_NLP needs integer OMOP note ids, but column {column!r} is not an integer column ({detail}); "
            f"{advice}")


def check_note_ids(ds, columns, limit: int = 5) -> None:
    """Read every note id once: refuse non-integer or out-of-range values and duplicates (clear errors)."""
    import pyarrow.compute as pc
    import ray

    from .notes import extract_notes

    column, id_column = columns.note_id_source, columns.id_column

    def id_table(block: pa.Table) -> pa.Table:
        notes = extract_notes(block, columns)
        values, problems = [n.note_id for n in notes], [n.note_id_problem for n in notes]  # present but bad
        return pa.table({"note_id": pa.array(values, pa.int64()), "problem": pa.array(problems, pa.string())})

    tables = ray.get(ds.map_batches(id_table, batch_format="pyarrow", batch_size=None).to_arrow_refs())
    table = pa.concat_tables(tables) if tables else pa.table({"note_id": pa.array([], pa.int64()),
                                                              "problem": pa.array([], pa.string())})
    problems = [p for p in table.column("problem").to_pylist() if p]
    if problems:
        raise SettingError(_not_integer(column, id_column, f"{len(problems)} record(s), e.g. "
                                        f"{'; '.join(problems[:limit])}"), "note_id_column")
    ids = table.column("note_id").drop_null()
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        examples = ", ".join(str(v) for v in repeated.field("values").to_pylist()[:limit])
        raise SettingError(f"NOTE_NLP ids pack the note id, so note ids must be unique, but {len(repeated)} occur "
                           f"more than once (e.g. {examples})", "note_id_column")


def note_id_or_problem(value: Any, where: str, column: str) -> tuple[int | None, str | None]:
    """(note id, None) or (None, why not) for one readable record's value."""
    if value is None:
        return None, f"{where}missing note_id (column {column!r})"
    try:
        return note_id_value(value), None
    except NoteNlpError as error:
        return None, f"{where}{error}"


def write_note_nlp(sink, writer: NoteNlpWriter, partitioned: bool, annotations: str) -> None:
    """The NOTE_NLP dataset of the staged ``annotations`` (``derived.write_derived``)."""
    from ..omop import NOTE_NLP_SCHEMA
    from .derived import write_derived

    write_derived(sink, DATASET, annotations, partitioned, _READ, lambda table: writer.table(table.to_pylist()),
                  NOTE_NLP_SCHEMA)
