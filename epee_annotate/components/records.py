"""Annotation records: one plain dict per result, and ``doc_annotations`` to export them as rows.

Row keys (stable; batch jobs build table schemas from them):

``task`` (component name), ``kind`` ("mention" | "pair" | "sentence" | "doc"), ``start``/``end``
(character offsets of the mention, sentence or doc; for a pair the span covering head and tail),
``head_start``/``head_end``/``tail_start``/``tail_end`` (None unless ``kind == "pair"``),
``label`` (None when the input could not be classified), ``exit_layer`` (None when a rule answered,
see ``rule``), ``num_layers``,
``confidence``, ``entropy``, ``probs`` (list of float, in the checkpoint's label order),
``early_label``/``full_label`` (audited inputs only: the exit policy's answer and the last exit's),
``truncated`` (the model saw a cut version of the input), ``rule`` (the rule that answered
without running the model, e.g. a DDI 2013 negative rule; None when the model answered), ``error``
(why the input could not be
classified, from ``Prediction.error``; None when it was), ``context`` (mentions: ConText flags
``negated``/``historical``/``hypothetical``/``family`` as booleans; None otherwise), ``section``
(the medSpaCy Sectionizer's category at the annotation's start; None without one), and ``text``
and ``snippet`` (the text with up to 60 characters either side) only when ``include_text=True``
(clinical text is PHI).
"""

from __future__ import annotations

from typing import Any

from spacy.tokens import Doc, Span, Token

from ..omop import snippet
from ..prediction import Prediction

KINDS = ("mention", "pair", "sentence", "doc")
RECORD_KEYS = (
    "task", "kind", "start", "end", "head_start", "head_end", "tail_start", "tail_end", "label", "exit_layer",
    "num_layers", "confidence", "entropy", "probs", "truncated", "rule", "error", "early_label", "full_label",
)
ANNOTATION_KEYS = RECORD_KEYS + ("context", "section")
CONTEXT_FLAGS = {"negated": "is_negated", "historical": "is_historical", "hypothetical": "is_hypothetical",
                 "family": "is_family"}


def make_record(
    task: str,
    kind: str,
    start: int,
    end: int,
    prediction: Prediction,
    truncated: bool = False,
    head: tuple[int, int] | None = None,
    tail: tuple[int, int] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """The stored form of one result (plain values only, so DocBin can serialise it)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "task": task,
        "kind": kind,
        "start": int(start),
        "end": int(end),
        "head_start": None if head is None else int(head[0]),
        "head_end": None if head is None else int(head[1]),
        "tail_start": None if tail is None else int(tail[0]),
        "tail_end": None if tail is None else int(tail[1]),
        "label": label if label is not None else prediction.label,
        "exit_layer": prediction.exit_layer,
        "num_layers": prediction.num_layers,
        "confidence": prediction.confidence,
        "entropy": prediction.entropy,
        "probs": [float(p) for p in prediction.probs],
        "truncated": bool(truncated or prediction.truncated),
        "rule": prediction.rule,
        "error": prediction.error,
        # Audited inputs only: the policy's own answer (before any confidence floor) and full depth's.
        "early_label": prediction.label if prediction.full_label is not None else None,
        "full_label": prediction.full_label,
    }


def _context_flags(doc: Doc, start: int, end: int) -> dict[str, bool]:
    """ConText flags of the mention at [start, end); False where ConText did not run."""
    span = doc.char_span(start, end)
    flags = {}
    for key, attr in CONTEXT_FLAGS.items():
        value = span._.get(attr) if span is not None and Span.has_extension(attr) else None
        flags[key] = bool(value)
    return flags


def _section(doc: Doc, start: int) -> str | None:
    """The Sectionizer's category of the token at character ``start`` (None without a Sectionizer)."""
    if not Token.has_extension("section_category") or not len(doc):
        return None
    token = doc.char_span(start, start + 1, alignment_mode="expand")
    return token[0]._.section_category if token is not None and len(token) else None


def doc_annotations(doc: Doc, include_text: bool = False) -> list[dict[str, Any]]:
    """One dict per EPEE annotation on ``doc`` (keys: ``ANNOTATION_KEYS`` [+ ``text``]); [] when none."""
    if not Doc.has_extension("epee_annotations"):
        return []
    rows = []
    text = doc.text if include_text else ""  # rebuilt from the tokens on every access: once per doc
    for record in doc._.epee_annotations or []:
        row = {key: record.get(key) for key in RECORD_KEYS}
        row["probs"] = list(record.get("probs") or [])
        row["truncated"] = bool(record.get("truncated"))
        row["context"] = _context_flags(doc, row["start"], row["end"]) if row["kind"] == "mention" else None
        row["section"] = _section(doc, row["start"])
        if include_text:
            row["text"] = text[row["start"] : row["end"]]
            row["snippet"] = snippet(text, row["start"], row["end"])
        rows.append(row)
    return rows
