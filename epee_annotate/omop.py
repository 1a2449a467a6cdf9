"""OMOP CDM v5.4 ``NOTE_NLP`` rows from annotation rows (batch jobs) or from Docs (``note_nlp_table``).

The 14 columns, in the CDM's order and with its types (``NOTE_NLP_SCHEMA``; ids as BIGINT):

* ``note_nlp_id`` = ``note_id * 2**INDEX_BITS + index``, ``index`` being the annotation's position
  among its note's annotations (pipeline order, so a rerun or resume gives the same ids). Unique by
  construction for unique note ids; ``note_id`` must lie in ``[0, MAX_NOTE_ID]`` and a note may have
  at most ``MAX_ANNOTATIONS`` annotations (``NoteNlpError`` otherwise), so it fits a signed BIGINT.
* ``note_nlp_concept_id`` / ``note_nlp_source_concept_id`` / ``section_concept_id`` come from a
  ``ConceptMap`` (CSV ``component,label,concept_id,source_concept_id``; component ``section`` maps
  section categories); unmapped values get 0, the CDM's "no matching concept".
* ``lexical_variant`` is the label; with ``include_text`` the annotated text, and ``snippet`` its window.
* ``offset``: the mention's, the pair's first mention's (the earlier one) or the sentence's start.
* ``term_exists`` / ``term_temporal`` come from medSpaCy ConText (only when it ran): negated,
  hypothetical or family gives ``N``, else ``Y``; historical gives ``past``, else ``present``.
* ``term_modifiers``: ``key=value`` pairs joined by ``;`` (ConText flags, section, component,
  exit_layer, confidence, policy).
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

INDEX_BITS = 20
MAX_ANNOTATIONS = 1 << INDEX_BITS  # per note
MAX_NOTE_ID = (1 << (63 - INDEX_BITS)) - 1  # 8,796,093,022,207: the id stays a positive signed 64-bit value
SECTION_COMPONENT = "section"  # the concept map's component name for section categories
VARCHAR = {"snippet": 250, "offset": 50, "lexical_variant": 250, "nlp_system": 250, "term_temporal": 50,
           "term_modifiers": 2000}
SNIPPET_MARGIN = 60  # characters of context either side of the annotated text

NOTE_NLP_SCHEMA = pa.schema([
    pa.field("note_nlp_id", pa.int64(), nullable=False),
    pa.field("note_id", pa.int64(), nullable=False),
    pa.field("section_concept_id", pa.int32()),
    pa.field("snippet", pa.string()),
    pa.field("offset", pa.string()),
    pa.field("lexical_variant", pa.string(), nullable=False),
    pa.field("note_nlp_concept_id", pa.int32()),
    pa.field("note_nlp_source_concept_id", pa.int32()),
    pa.field("nlp_system", pa.string()),
    pa.field("nlp_date", pa.date32(), nullable=False),
    pa.field("nlp_datetime", pa.timestamp("us")),
    pa.field("term_exists", pa.string()),
    pa.field("term_temporal", pa.string()),
    pa.field("term_modifiers", pa.string()),
])


class NoteNlpError(ValueError):
    """An id or a concept map that NOTE_NLP cannot represent."""


def note_id_value(value: Any) -> int:
    """An OMOP ``note_id`` from an input value (an integer, or text of one); ``NoteNlpError`` otherwise."""
    if isinstance(value, bool) or value is None:
        raise NoteNlpError("note_id must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise NoteNlpError("note_id must be an integer")
        value = int(value)
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()):
            raise NoteNlpError("note_id must be an integer")
        value = int(text)
    if not isinstance(value, int):
        raise NoteNlpError("note_id must be an integer")
    if not 0 <= value <= MAX_NOTE_ID:
        raise NoteNlpError(f"note_id must be in [0, {MAX_NOTE_ID}] (note_nlp_id packs it with a "
                           f"{INDEX_BITS}-bit annotation index into a signed 64-bit id)")
    return value


def note_nlp_id(note_id: int, index: int) -> int:
    """The id of the ``index``-th annotation (0-based) of note ``note_id``; unique by construction."""
    if not 0 <= index < MAX_ANNOTATIONS:
        raise NoteNlpError(f"note {note_id} has more than {MAX_ANNOTATIONS} annotations; note_nlp_id "
                           f"keeps {INDEX_BITS} bits for the annotation index")
    return (note_id_value(note_id) << INDEX_BITS) | index


@dataclass
class ConceptMap:
    """(component, label) -> (concept_id, source_concept_id); sections under component ``section``."""

    concepts: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def read(cls, path: str | Path) -> "ConceptMap":
        """Read the CSV (header ``component,label,concept_id,source_concept_id``; source may be blank)."""
        needed = ["component", "label", "concept_id", "source_concept_id"]
        concepts: dict[tuple[str, str], tuple[int, int]] = {}
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise NoteNlpError(f"concept map {str(path)!r}: column(s) {missing} missing; the header must "
                                   f"be {','.join(needed)}")
            for line, row in enumerate(reader, start=2):
                key = ((row["component"] or "").strip(), (row["label"] or "").strip())
                if not all(key):
                    raise NoteNlpError(f"concept map {str(path)!r} line {line}: component and label are required")
                if key in concepts:
                    raise NoteNlpError(f"concept map {str(path)!r} line {line}: {key} is mapped twice")
                concepts[key] = (_concept(row["concept_id"], path, line, "concept_id"),
                                 _concept(row["source_concept_id"], path, line, "source_concept_id"))
        return cls(concepts, str(path))

    def concept(self, component: str | None, label: str | None) -> tuple[int, int]:
        """(concept_id, source_concept_id); (0, 0) when unmapped."""
        return self.concepts.get((component or "", label or ""), (0, 0))

    def section(self, category: str | None) -> int:
        return self.concept(SECTION_COMPONENT, category)[0] if category else 0


def _concept(value: str | None, path: str | Path, line: int, column: str) -> int:
    text = (value or "").strip()
    if not text:
        if column == "concept_id":
            raise NoteNlpError(f"concept map {str(path)!r} line {line}: concept_id is required (0 = no matching "
                               "concept)")
        return 0
    if not text.isdigit() or int(text) >= 2**31:
        raise NoteNlpError(f"concept map {str(path)!r} line {line}: {column} must be a non-negative 32-bit integer")
    return int(text)


def nlp_system(version: str, component: Mapping[str, Any]) -> str:
    """Tool and version, the component's checkpoint (name@weights-hash) and its exit policy."""
    return _clip(f"epee-annotate {version}; {component['task']}: {component['checkpoint_id']}; "
                 f"policy {component['policy']}", "nlp_system")


def _clip(text: str | None, column: str) -> str | None:
    limit = VARCHAR[column]
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def _modifiers(row: Mapping[str, Any], policy: str | None) -> str:
    pairs = [(k, str(v).lower()) for k, v in _context(row).items()]
    if row.get("section"):
        pairs.append(("section", row["section"]))
    pairs += [("component", row.get("task")), ("exit_layer", row.get("exit_layer")), ("rule", row.get("rule")),
              ("confidence", None if row.get("confidence") is None else f"{row['confidence']:.4f}"),
              ("policy", policy)]
    return _clip(";".join(f"{k}={v}" for k, v in pairs if v is not None), "term_modifiers")


def _context(row: Mapping[str, Any]) -> dict[str, bool]:
    value = row.get("context")
    if value is None:
        return {}
    return dict(value) if not isinstance(value, dict) else value


def offset(row: Mapping[str, Any]) -> int:
    """Character offset of a mention or sentence, or of a pair's first (earlier) mention."""
    if row.get("kind") == "pair" and row.get("head_start") is not None:
        return int(min(row["head_start"], row["tail_start"]))
    return int(row["start"])


@dataclass
class NoteNlpWriter:
    """Turns annotation rows (``records.doc_annotations`` keys plus ``note_nlp_id``, ``note_id``) into NOTE_NLP rows.

    ``components``: task -> {"checkpoint_id", "policy", "task"} (``pipelines.notes.component_info``);
    ``context``: whether medSpaCy ConText ran (else term_exists/term_temporal stay null).
    """

    components: Mapping[str, Mapping[str, Any]]
    version: str
    concept_map: ConceptMap = field(default_factory=ConceptMap)
    context: bool = False
    include_text: bool = False
    when: dt.datetime = field(default_factory=lambda: dt.datetime.now().replace(microsecond=0))

    def __post_init__(self) -> None:
        self.systems = {task: nlp_system(self.version, info) for task, info in self.components.items()}

    def row(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The NOTE_NLP row of one annotation row; None for rows that are no annotation (errors, empty notes)."""
        task = row.get("task")
        if row.get("label") is None or task not in self.components or row.get("error") is not None:
            return None
        concept, source = self.concept_map.concept(task, row["label"])
        flags = _context(row)
        lexical = row.get("text") if self.include_text and row.get("text") else row["label"]
        exists = temporal = None
        if self.context and row.get("kind") == "mention" and flags:
            exists = "N" if flags.get("negated") or flags.get("hypothetical") or flags.get("family") else "Y"
            temporal = "past" if flags.get("historical") else "present"
        return {
            "note_nlp_id": int(row["note_nlp_id"]), "note_id": int(row["note_id"]),
            "section_concept_id": self.concept_map.section(row.get("section")),
            "snippet": _clip(row.get("snippet"), "snippet") if self.include_text else None,
            "offset": str(offset(row)), "lexical_variant": _clip(lexical, "lexical_variant"),
            "note_nlp_concept_id": concept, "note_nlp_source_concept_id": source,
            "nlp_system": self.systems[task], "nlp_date": self.when.date(), "nlp_datetime": self.when,
            "term_exists": exists, "term_temporal": temporal,
            "term_modifiers": _modifiers(row, self.components[task].get("policy")),
        }

    def table(self, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        out = [r for r in (self.row(row) for row in rows) if r is not None]
        return pa.Table.from_pylist(out, schema=NOTE_NLP_SCHEMA)


def snippet(text: str, start: int, end: int) -> str:
    """The annotated text with up to ``SNIPPET_MARGIN`` characters either side, at most 250 characters."""
    window = text[max(0, start - SNIPPET_MARGIN): end + SNIPPET_MARGIN]
    return window[: VARCHAR["snippet"]]


def with_note_nlp_ids(rows: Sequence[dict[str, Any]], note_id: int) -> list[dict[str, Any]]:
    """``rows`` (one note's annotations, in pipeline order) with ``note_id`` and ``note_nlp_id`` set."""
    note = note_id_value(note_id)
    return [{**row, "note_id": note, "note_nlp_id": note_nlp_id(note, index)} for index, row in enumerate(rows)]


def pipeline_components(nlp) -> dict[str, dict[str, Any]]:
    """task -> {"task", "checkpoint_id", "policy"} of the pipeline's EPEE components (loads their models)."""
    from .components.base import EpeeComponent

    return {name: {"task": name, "checkpoint_id": pipe.multi_exit_model.checkpoint_id,
                   "policy": pipe.policy.describe()}
            for name, pipe in nlp.pipeline if isinstance(pipe, EpeeComponent)}


def has_context(nlp) -> bool:
    """Whether medSpaCy ConText runs in ``nlp`` (its flags are meaningful only then)."""
    return any(nlp.get_pipe_meta(name).factory == "medspacy_context" for name in nlp.pipe_names)


def note_nlp_table(nlp, docs: Sequence[Any], note_ids: Sequence[Any], concept_map: ConceptMap | None = None,
                   include_text: bool = False, when: dt.datetime | None = None) -> pa.Table:
    """NOTE_NLP rows (``NOTE_NLP_SCHEMA``) of Docs processed by ``nlp``; ``note_ids[i]`` is the OMOP id of ``docs[i]``.

    Note ids must be integers and unique (the ids of the rows pack them); the label is written as
    ``lexical_variant`` unless ``include_text`` (then the text and its snippet: PHI).
    """
    from . import __version__
    from .components.records import doc_annotations

    if len(docs) != len(note_ids):
        raise ValueError(f"got {len(docs)} docs and {len(note_ids)} note ids")
    ids = [note_id_value(value) for value in note_ids]
    if len(set(ids)) != len(ids):
        raise NoteNlpError("note ids must be unique: note_nlp_id packs the note id")
    writer = NoteNlpWriter(pipeline_components(nlp), __version__, concept_map or ConceptMap(), has_context(nlp),
                           include_text, **({"when": when} if when else {}))
    rows = [row for doc, note in zip(docs, ids)
            for row in with_note_nlp_ids(doc_annotations(doc, include_text=include_text), note)]
    return writer.table(rows)
