"""spaCy extension attributes written by the EPEE components.

Where results live:

- ``doc._.epee_annotations``: every result of every EPEE component on the doc, as plain dicts
  (see ``records.RECORD_KEYS``). This is the source of truth: it survives ``DocBin``
  (``store_user_data=True``) because it holds only str/int/float/bool/None/list values.
- ``span._.epee_label`` / ``epee_exit_layer`` / ``epee_num_layers`` / ``epee_confidence`` /
  ``epee_entropy`` / ``epee_probs`` / ``epee_truncated`` on classified mentions and sentences,
  and the same names on ``doc._`` for doc-level text classification (plus ``doc.cats``).
  spaCy keys span values by character offsets, so a mention and a sentence with identical
  offsets share them (the component that ran last wins); the doc records keep both.
- ``doc._.epee_relations``: read-only view of the pair records with ``head``/``tail`` Span objects.
- ``doc._.epee_truncated_pairs``: True when a relation component hit ``max_pairs_per_doc``.
"""

from __future__ import annotations

from typing import Any

from spacy.tokens import Doc, Span

RESULT_ATTRS = (
    "epee_label", "epee_exit_layer", "epee_num_layers", "epee_confidence", "epee_entropy", "epee_probs",
    "epee_truncated",
)
_RECORD_FIELD = {
    "epee_label": "label", "epee_exit_layer": "exit_layer", "epee_num_layers": "num_layers",
    "epee_confidence": "confidence", "epee_entropy": "entropy", "epee_probs": "probs", "epee_truncated": "truncated",
}


def _relations(doc: Doc) -> list[dict[str, Any]]:
    """Pair records with ``head`` and ``tail`` Span objects added (built on access, never stored)."""
    out = []
    for record in doc._.epee_annotations or []:
        if record["kind"] == "pair":
            head = doc.char_span(record["head_start"], record["head_end"])
            tail = doc.char_span(record["tail_start"], record["tail_end"])
            out.append({**record, "head": head, "tail": tail})
    return out


def register_extensions() -> None:
    """Register the EPEE attributes once (safe to call repeatedly)."""
    for attr in RESULT_ATTRS:
        default = False if attr == "epee_truncated" else None
        for cls in (Span, Doc):
            if not cls.has_extension(attr):
                cls.set_extension(attr, default=default)
    if not Doc.has_extension("epee_annotations"):
        Doc.set_extension("epee_annotations", default=None)  # None, not []: mutable defaults would be shared
    if not Doc.has_extension("epee_truncated_pairs"):
        Doc.set_extension("epee_truncated_pairs", default=False)
    if not Doc.has_extension("epee_relations"):
        Doc.set_extension("epee_relations", getter=_relations)


def set_result(target: Span | Doc, record: dict[str, Any]) -> None:
    """Copy a record's result fields onto ``target._``; lists are copied so targets never share them."""
    for attr, key in _RECORD_FIELD.items():
        value = record[key]
        target._.set(attr, list(value) if isinstance(value, list) else value)


def replace_task_records(doc: Doc, task: str, records: list[dict[str, Any]]) -> None:
    """Store ``records`` as the doc's results for ``task``, replacing that task's earlier ones."""
    kept = [r for r in doc._.epee_annotations or [] if r["task"] != task]
    doc._.epee_annotations = kept + records
