"""The notes job's worker: a spaCy/medspaCy pipeline with EPEE components, run per Ray actor.

Per-document outcomes (documented in docs/batch_jobs.md):

* annotations found: one row per annotation, ``status="ok"`` (an annotation whose model input
  could not be classified gets ``status="error"``);
* the pipeline ran and found nothing: one row ``kind="doc"``, ``label`` null, ``status="ok"``;
* rows about the whole input (this one and the two below) have ``task="input"`` (``INPUT_TASK``),
  so partitioned outputs have no null partition;
* the note text is missing, empty or whitespace: one row ``kind="doc"``, ``status="empty"``;
* anything else (missing id, text not a string, an error record of the reader: invalid UTF-8,
  malformed or too deeply nested JSON line, a CSV row with the wrong number of fields, an
  unreadable file; the pipeline failing on this note): one row ``status="error"`` with a one-line
  reason naming file and line/row and the kind of fault, never quoting the note;
* an annotation whose model input could not be classified: ``status="error"`` with the model's
  reason (``Prediction.error``);
* a note longer than the pipeline's limit (spaCy's ``nlp.max_length``, 1,000,000 characters by
  default): one error row giving its length and the limit (never sent to the pipeline).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from .. import storage
from ..extras import require
from ..formats import Record
from ..policies import setting_keys
from .errors import SettingError
from .progress import report
from .schema import INPUT_TASK, STATUS_EMPTY, STATUS_ERROR, STATUS_OK, input_row, safe_rows_to_table, weights_record
from .sources import TYPED_FORMATS, block_records

logger = logging.getLogger(__name__)

SCOPES = ("sents", "doc")


# ----- where the pipeline comes from ------------------------------------------------------
def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c.d=runs/x"]`` -> {"a.b": 1, "c.d": "runs/x"}; values are JSON when they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"a config override must be key=value, got {pair!r}", "overrides")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _absolute_if_path(key: str, value: Any) -> Any:
    """Make override values that name existing files absolute (checkpoint/paths.* settings only)."""
    looks_like_path = key.startswith("paths.") or key.endswith("checkpoint") or key.endswith("rules")
    if looks_like_path and isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).expanduser().resolve())
    return value


@dataclass
class PipelineSource:
    """Exactly one of: a saved pipeline directory, a config file, or a checkpoint (shortcut)."""

    pipeline: str | None = None
    config: str | None = None
    checkpoint: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    scope: str = "sents"
    task_name: str = "textcat"

    def __post_init__(self) -> None:
        given = [x for x in (self.pipeline, self.config, self.checkpoint) if x]
        if len(given) != 1:
            raise SettingError("give exactly one of a pipeline directory, a config file or a checkpoint",
                               "pipeline", "config", "checkpoint")
        if self.scope not in SCOPES:
            raise SettingError(f"scope must be one of {SCOPES}, got {self.scope!r}", "scope")
        if self.overrides and self.checkpoint:
            raise SettingError("config overrides apply to a pipeline or config; with a checkpoint use the job "
                               "options", "overrides")
        for name in ("pipeline", "config", "checkpoint"):
            path = getattr(self, name)
            if path and storage.is_uri(path):  # each actor fetches it itself (storage.fetch)
                if not storage.exists(path):
                    raise FileNotFoundError(f"{path!r} does not exist")
                continue
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path!r} does not exist")
            if path:  # Ray workers may run in another directory
                setattr(self, name, str(Path(path).expanduser().resolve()))
        self.overrides = {key: _absolute_if_path(key, value) for key, value in self.overrides.items()}

    def describe(self) -> dict[str, Any]:
        """Provenance for the output metadata."""
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}

    def load(self, settings: dict[str, Any]) -> "Language":  # noqa: F821
        """Build the pipeline; ``settings`` (policy, batch_size, device, autocast) go to every EPEE classifier."""
        import spacy
        from spacy.util import get_model_meta, load_config, load_model_from_config

        from ..components.factories import CLASSIFIER_FACTORIES  # (importing registers the epee_* factories)

        # None means "keep the pipeline's value", except for policy keys: a job's policy replaces the whole
        # saved one (policies.policy_overrides), so its unset keys must reach the config as null.
        policy_keys = {"policy", *setting_keys()}
        settings = {k: v for k, v in settings.items() if v is not None or k in policy_keys}
        if self.checkpoint:
            nlp = spacy.blank("en")
            nlp.add_pipe("sentencizer")
            nlp.add_pipe("epee_textcat", name=self.task_name,
                         config={"checkpoint": str(self.checkpoint), "scope": self.scope, **settings})
            return nlp
        pipeline = storage.fetch(self.pipeline) if self.pipeline else None
        cfg_path = Path(pipeline) / "config.cfg" if pipeline else Path(storage.fetch(self.config))
        # Dict values are assigned after loading: as spaCy overrides they would be merged into
        # the saved section (a saved policy {"budget": 2} plus a new {"entropy": 0.3} ...).
        scalars = {k: v for k, v in self.overrides.items() if not isinstance(v, dict)}
        config = load_config(cfg_path, overrides=scalars)
        for key, value in self.overrides.items():
            if isinstance(value, dict):
                *sections, leaf = key.split(".")
                target = config
                for section in sections:
                    if section not in target:
                        raise SettingError(f"override {key}: section {section!r} not in the config", "overrides")
                    target = target[section]
                target[leaf] = value
        if any(str(c.get("factory", "")).startswith("medspacy_") for c in config.get("components", {}).values()):
            require("medspacy", "a config with medSpaCy components")  # its factories have no entry points
        for component in config.get("components", {}).values():
            if component.get("factory") in CLASSIFIER_FACTORIES:  # not epee_sections: it takes none of them
                component.update(settings)  # assigned, for the same reason
        if not self.pipeline:
            return load_model_from_config(config, auto_fill=True)
        # What spacy.load does for a directory, with our edited config.
        nlp = load_model_from_config(config, meta=get_model_meta(Path(pipeline)))
        return nlp.from_disk(pipeline, overrides=scalars)


def epee_components(nlp) -> list:
    """The pipeline's EPEE components, in pipeline order."""
    from ..components.base import EpeeComponent

    return [pipe for _, pipe in nlp.pipeline if isinstance(pipe, EpeeComponent)]


def component_info(nlp) -> list[dict[str, Any]]:
    """Checkpoint identity, labels and policy of every EPEE component (loads their models)."""
    info = []
    for pipe in epee_components(nlp):
        model = pipe.multi_exit_model
        info.append({
            "task": pipe.name, "factory": type(pipe).__name__, "checkpoint_id": model.checkpoint_id,
            **weights_record(model), "checkpoint_task": model.task, "labels": list(model.labels),
            "num_layers": model.num_layers, "runtime": model.runtime,
            "policy": pipe.policy.describe(), "policy_config": pipe.policy.to_dict(),
            "audit_fraction": pipe.audit_fraction_in_use, "promised_bound": pipe.audit.promised,
            "promised_by": pipe.audit.source,
        })
    if not info:
        raise ValueError("the pipeline has no EPEE component (factories epee_*); nothing would be annotated")
    if any(entry["task"] == INPUT_TASK for entry in info):
        raise ValueError(f"a component is named {INPUT_TASK!r}, the task value of rows about a whole input; "
                         "rename it")
    return info


# ----- reading one note from a raw input row ---------------------------------------------
@dataclass
class NoteColumns:
    """Which input columns hold the id, the text and the pass-through values, and the format."""

    fmt: str
    id_column: str = "id"
    text_column: str = "text"
    keep_columns: tuple[str, ...] = ()
    note_nlp: bool = False  # read an OMOP note id (``note_id_column``, else the id column) per note
    note_id_column: str | None = None

    @property
    def note_id_source(self) -> str:
        return self.note_id_column or self.id_column

    @property
    def read_columns(self) -> list[str]:
        columns = [self.id_column, self.text_column, *self.keep_columns]
        if self.note_nlp and self.note_id_source not in columns:
            columns.append(self.note_id_source)
        return columns


@dataclass
class NoteInput:
    doc_id: str | None
    text: str | None
    keep: dict[str, Any]
    error: str | None = None
    position: str = ""  # "notes.csv line 3: ", for messages about this note
    note_id: int | None = None  # OMOP note id (``NoteColumns.note_nlp`` only)
    note_id_problem: str | None = None


def _doc_id(value: Any) -> str | None:
    """Normalise an id value to text; None when missing; ValueError when unusable."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("id is not valid UTF-8") from None
    if isinstance(value, bool):
        raise ValueError("id must be a string or an integer, got bool")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = int(value) if value.is_integer() else value
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"id must be a string or an integer, got {type(value).__name__}")
    return value if value.strip() else None


def _note_text(value: Any) -> str | None:
    """Note text as str (None when missing); ValueError when it is not text."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"text is not valid UTF-8 (byte {error.start})") from None
    if isinstance(value, float) and math.isnan(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"text must be a string, got {type(value).__name__}")
    return value


def _keep_value(value: Any, as_string: bool) -> Any:
    if not as_string or value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def extract_notes(batch: pa.Table, columns: NoteColumns) -> list[NoteInput]:
    """One NoteInput per input row (``sources.records_block``); problems are recorded in ``error``, never raised."""
    as_strings = columns.fmt not in TYPED_FORMATS
    notes = []
    for record, error, where, path in block_records(batch, columns.read_columns):
        position = f"{Record(path, where).position}: "
        try:
            notes.append(_note_input(record, error, position, columns, as_strings))
            notes[-1].position = position
        except Exception as problem:  # noqa: BLE001 - one odd record must not sink the batch
            notes.append(NoteInput(None, None, {}, f"{position}record could not be read ({type(problem).__name__})"))
    return notes


def _note_input(record: dict[str, Any], error: str | None, where: str, columns: NoteColumns,
                as_strings: bool) -> NoteInput:
    """The NoteInput of one parsed record; ``error`` is a read error found earlier."""
    keep = {c: _keep_value(record.get(c), as_strings) for c in columns.keep_columns}
    if columns.note_nlp:
        from .note_nlp import note_id_or_problem

        note = _note_input(record, error, where, replace(columns, note_nlp=False), as_strings)
        if note.error is not None:
            return note
        note_id, problem = note_id_or_problem(record.get(columns.note_id_source), where, columns.note_id_source)
        return replace(note, note_id=note_id, note_id_problem=problem, error=problem)
    try:
        doc_id = _doc_id(record.get(columns.id_column))
    except ValueError as problem:
        return NoteInput(None, None, keep, error or f"{where}{problem}")
    if error is not None:  # a read error: the record's id, when it could be read, says which note
        return NoteInput(doc_id, None, keep, error)
    if doc_id is None:
        return NoteInput(None, None, keep, f"{where}missing id (column {columns.id_column!r})")
    if columns.text_column not in record:
        return NoteInput(doc_id, None, keep, f"{where}no {columns.text_column!r} field")
    try:
        text = _note_text(record.get(columns.text_column))
    except ValueError as problem:
        return NoteInput(doc_id, None, keep, f"{where}{problem}")
    return NoteInput(doc_id, text, keep)


# ----- the Ray actor ---------------------------------------------------------------------
class NoteAnnotator:
    """Callable class for ``map_batches``: loads the pipeline once per actor, annotates pyarrow batches."""

    def __init__(
        self,
        source: PipelineSource,
        columns: NoteColumns,
        settings: dict[str, Any],
        schema: pa.Schema,
        pipe_batch_size: int = 64,
        include_text: bool = False,
        threads: int | None = None,
        progress: Any = None,
    ):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.progress = progress  # the job's progress counter (``progress.job_progress``) or None
        self.nlp = source.load(settings)
        # Load every model now, once per actor, so a bad checkpoint fails at start-up.
        self.policies = {info["task"]: info["policy"] for info in component_info(self.nlp)}
        self.columns = columns
        self.schema = schema
        self.pipe_batch_size = pipe_batch_size
        self.include_text = include_text
        self.names = set(schema.names)

    def __call__(self, batch: pa.Table) -> pa.Table:
        notes = extract_notes(batch, self.columns)
        for note in notes:
            if note.error is None and note.text is not None and len(note.text) > self.nlp.max_length:
                note.error = (f"{note.position}note is {len(note.text):,} characters, over the pipeline's limit of "
                              f"{self.nlp.max_length:,} (spaCy nlp.max_length); not annotated: split it into "
                              "shorter notes or raise the limit in the pipeline")
        todo = [i for i, n in enumerate(notes) if n.error is None and n.text is not None and n.text.strip()]
        docs, failures = self._run([notes[i].text for i in todo])
        outcome: dict[int, Any] = dict(zip(todo, docs))
        failed = {todo[j]: message for j, message in failures.items()}
        rows: list[dict[str, Any]] = []
        for index, note in enumerate(notes):
            base = {"doc_id": note.doc_id, **note.keep}
            if note.note_id is not None:
                base["note_id"] = note.note_id
            if note.error is not None:
                rows.append(input_row(base, STATUS_ERROR, note.error))
            elif index in failed:
                rows.append(input_row(base, STATUS_ERROR, failed[index]))
            elif index not in outcome:
                rows.append({**input_row(base, STATUS_EMPTY), "start": 0, "end": len(note.text or "")})
            else:
                rows += self._rows(base, outcome[index])
        table = safe_rows_to_table(rows, self.schema)
        report(self.progress, batch)
        return table

    def _run(self, texts: list[str]) -> tuple[list[Any], dict[int, str]]:
        """Batched ``nlp.pipe``; if the batch fails, redo it one doc at a time to isolate the bad ones."""
        if not texts:
            return [], {}
        try:
            return list(self.nlp.pipe(texts, batch_size=self.pipe_batch_size)), {}
        except Exception:  # one bad doc must not sink the batch: find it below
            logger.warning("pipeline failed on a batch of %d notes; retrying one at a time", len(texts))
        docs, failures = [], {}
        for j, text in enumerate(texts):
            try:
                docs.append(self.nlp(text))
            except Exception as error:
                docs.append(None)
                # The exception type only: spaCy messages can quote the text.
                failures[j] = f"pipeline failed on this note ({type(error).__name__})"
        return docs, failures

    def _rows(self, base: dict[str, Any], doc) -> list[dict[str, Any]]:
        from ..components.records import doc_annotations

        annotations = doc_annotations(doc, include_text=self.include_text)
        if "note_nlp_id" in self.names and annotations:  # the schema has the NOTE_NLP ids: --note-nlp
            from ..omop import NoteNlpError, with_note_nlp_ids

            try:
                annotations = with_note_nlp_ids(annotations, base["note_id"])
            except NoteNlpError as error:
                return [input_row(base, STATUS_ERROR, str(error))]
        if not annotations:
            row = {**input_row(base, STATUS_OK), "start": 0, "end": len(doc.text)}
            if self.include_text:
                row["text"] = doc.text
            return [row]
        rows = []
        for annotation in annotations:
            # Only the schema's columns: keys added to the records later must not break the job.
            row = {**base, **{k: v for k, v in annotation.items() if k in self.names}}
            row["policy"] = self.policies.get(annotation["task"])
            if annotation.get("context") is not None:
                row["context"] = list(annotation["context"].items())
            failed = annotation.get("error") is not None
            row["status"] = STATUS_ERROR if failed else STATUS_OK
            rows.append(row)
        return rows
