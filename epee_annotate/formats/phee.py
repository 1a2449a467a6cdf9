"""PHEE (pharmacovigilance events): JSON Lines of sentences, as ``{"id", "text", "event_types"}`` records.

Each line holds ``id``, ``context`` (the sentence) and ``annotations[0].events[].event_type`` in
{Adverse_event, Potential_therapeutic_event}. A line that does not fit is an error record; how a
sentence's event types become a training label is ``data.phee``'s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, BinaryIO, Iterator

from ..vocab import PV_EVENT_LABELS
from .jsonl import read_jsonl
from .records import ReadOptions, Record, bad, select


def read_phee(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    raw_options = replace(options, columns=None)  # the reader needs every field
    for record in read_jsonl(stream, source, raw_options):
        if record.error is not None:
            yield record
            continue
        try:
            data = _sentence(record.data)
        except ValueError as error:
            yield bad(source, record.where, str(error))
            continue
        yield Record(source, record.where, select(data, options.columns))


def _sentence(record: dict[str, Any]) -> dict[str, Any]:
    text = record.get("context")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'context' must be a non-empty string")
    annotations = record.get("annotations")
    if not isinstance(annotations, list) or not annotations or not isinstance(annotations[0], dict):
        raise ValueError("'annotations' must be a non-empty list")
    events = annotations[0].get("events", [])
    if not isinstance(events, list):
        raise ValueError("'annotations[0].events' must be a list")
    types = []
    for event in events:
        kind = event.get("event_type") if isinstance(event, dict) else None
        if kind not in PV_EVENT_LABELS:
            raise ValueError(f"event_type must be one of {list(PV_EVENT_LABELS)}")  # not echoed: could be anything
        types.append(kind)
    ident = record.get("id")
    return {"id": None if ident is None else str(ident), "text": text, "event_types": types}
