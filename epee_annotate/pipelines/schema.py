"""The explicit Arrow schema of batch-job outputs: one row per annotation, image or frame.

Columns, in order (see docs/batch_jobs.md):

``doc_id`` ``task`` ``kind`` ``start`` ``end`` ``head_start`` ``head_end`` ``tail_start``
``tail_end`` ``frame`` ``label`` ``exit_layer`` ``num_layers`` ``confidence`` ``entropy``
``probs`` ``policy`` ``status`` ``error`` ``truncated`` ``rule`` ``context``; for notes jobs ``section``
(medSpaCy section category, null without a Sectionizer), ``text`` and ``snippet`` (only with
``--include-text``), ``note_id`` and ``note_nlp_id`` (only with ``--note-nlp``), ``early_label`` and
``full_label`` (only when the audit is on; set on audited rows); then the pass-through columns, and
for image jobs the DICOM metadata columns and ``path``. Job provenance (package version, checkpoints, labels, policies, parameters; never
note text) is JSON under the schema metadata key ``b"epee_annotate"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

METADATA_KEY = b"epee_annotate"
SCHEMA_VERSION = 2  # 2: the ``rule`` column

STATUS_OK = "ok"
STATUS_EMPTY = "empty"
STATUS_ERROR = "error"
STATUSES = (STATUS_OK, STATUS_EMPTY, STATUS_ERROR)
# ``task`` of rows about a whole note or file that no model produced (empty, unreadable, nothing
# found): never null, so hive partitions and dictionary-encoded readers have no null key.
INPUT_TASK = "input"

CORE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("doc_id", pa.string()),
    pa.field("task", pa.string()),
    pa.field("kind", pa.string()),  # mention | pair | sentence | doc | image | frame
    pa.field("start", pa.int32()),
    pa.field("end", pa.int32()),
    pa.field("head_start", pa.int32()),
    pa.field("head_end", pa.int32()),
    pa.field("tail_start", pa.int32()),
    pa.field("tail_end", pa.int32()),
    pa.field("frame", pa.int32()),
    pa.field("label", pa.string()),
    pa.field("exit_layer", pa.int16()),
    pa.field("num_layers", pa.int16()),
    pa.field("confidence", pa.float32()),
    pa.field("entropy", pa.float32()),
    pa.field("probs", pa.list_(pa.float32())),
    pa.field("policy", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("truncated", pa.bool_()),
    pa.field("rule", pa.string()),  # the rule that answered without the model (exit_layer is then null)
    pa.field("context", pa.map_(pa.string(), pa.bool_())),  # ConText flags of a mention
)
TEXT_FIELD = pa.field("text", pa.string())
SECTION_FIELD = pa.field("section", pa.string())
SNIPPET_FIELD = pa.field("snippet", pa.string())  # the annotated text's window (NOTE_NLP.snippet)
NOTE_NLP_FIELDS = (pa.field("note_id", pa.int64()), pa.field("note_nlp_id", pa.int64()))
AUDIT_FIELDS = (pa.field("early_label", pa.string()), pa.field("full_label", pa.string()))
IMAGE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sop_instance_uid", pa.string()),
    pa.field("study_instance_uid", pa.string()),
    pa.field("series_instance_uid", pa.string()),
    pa.field("modality", pa.string()),
    pa.field("body_part_examined", pa.string()),
    pa.field("path", pa.string()),
)
RESERVED = {f.name for f in (*CORE_FIELDS, TEXT_FIELD, SECTION_FIELD, SNIPPET_FIELD, *NOTE_NLP_FIELDS,
                              *AUDIT_FIELDS, *IMAGE_FIELDS)}


def output_schema(
    job: str, passthrough: Sequence[pa.Field] = (), include_text: bool = False, note_nlp: bool = False,
    audit: bool = False,
) -> pa.Schema:
    """The schema of a ``notes`` or ``images`` job's output (no metadata yet)."""
    if job not in ("notes", "images"):
        raise ValueError(f"job must be 'notes' or 'images', got {job!r}")
    clashes = sorted(f.name for f in passthrough if f.name in RESERVED)
    if clashes:
        raise ValueError(f"pass-through column(s) {clashes} clash with output columns; rename them first")
    if job == "images" and (note_nlp or audit):
        raise ValueError("NOTE_NLP ids and the audit columns are for the notes job")
    fields = list(CORE_FIELDS)
    if job == "notes":
        fields.append(SECTION_FIELD)
    if include_text:
        fields += [TEXT_FIELD, SNIPPET_FIELD] if job == "notes" else [TEXT_FIELD]
    if note_nlp:
        fields += NOTE_NLP_FIELDS
    if audit:
        fields += AUDIT_FIELDS
    fields += list(passthrough)
    if job == "images":
        fields += list(IMAGE_FIELDS)
    return pa.schema(fields)


def with_job_metadata(schema: pa.Schema, metadata: Mapping[str, Any]) -> pa.Schema:
    """Attach job provenance as JSON under ``METADATA_KEY`` (other metadata is kept)."""
    payload = {"schema_version": SCHEMA_VERSION, **metadata}
    merged = dict(schema.metadata or {})
    merged[METADATA_KEY] = json.dumps(payload, sort_keys=True, default=str).encode()
    return schema.with_metadata(merged)


def job_metadata(schema: pa.Schema) -> dict[str, Any]:
    """Decode the provenance written by ``with_job_metadata`` ({} when absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_job_metadata(dataset_dir: str | Path) -> dict[str, Any]:
    """Provenance of a written output dataset, read from its first Parquet file's footer."""
    import pyarrow.parquet as pq

    files = sorted(Path(dataset_dir).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {str(dataset_dir)!r}")
    return job_metadata(pq.read_schema(files[0]))


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table in exactly ``schema`` (missing keys become nulls, extra keys are an error)."""
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"row has columns not in the output schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=schema.remove_metadata())


def input_row(base: Mapping[str, Any], status: str, error: str | None = None, kind: str = "doc") -> dict[str, Any]:
    """A row about a whole input (``task=INPUT_TASK``): empty, unreadable, or nothing annotated."""
    return {**base, "task": INPUT_TASK, "kind": kind, "status": status, "error": error}


def safe_rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """``rows_to_table``, but a row whose values do not fit the schema becomes an error row.

    The guarantee "one bad document never sinks a batch" must hold at storage time too (e.g. a
    pass-through value of an unexpected type), so only the offending row is replaced.
    """
    try:
        return rows_to_table(rows, schema)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    tables = []
    for row in rows:
        try:
            tables.append(rows_to_table([row], schema))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
            doc_id = row.get("doc_id")
            task = row.get("task")
            tables.append(rows_to_table([{
                "doc_id": doc_id if isinstance(doc_id, str) else None, "kind": row.get("kind"),
                "task": task if isinstance(task, str) else INPUT_TASK,
                "status": STATUS_ERROR, "error": f"result could not be stored ({type(error).__name__})",
            }], schema))
    return pa.concat_tables(tables) if tables else rows_to_table([], schema)


def weights_record(model) -> dict[str, Any]:
    """The output metadata's record of a model's weights: the hash computed at load, and the opt-in if used."""
    return {"weights_sha256": model.weights_sha256, **({"unhashed_weights_trusted": True}
                                                        if model.unhashed_weights else {})}
