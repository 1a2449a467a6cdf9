"""Mention (span) classification data: one example per labelled span, in its text.

Every loader gives ``Example({"text", "span": (start, end), "context": (lo, hi)}, label, id, group)``,
the input a ``task="span"`` checkpoint takes (``TextEncoder._mention_text`` marks it). The
context is the part of the text the model sees around the mention: the whole record for JSONL,
the mention's sentence for a DocBin whose docs have sentence boundaries (as the spaCy component
does at inference, ``components.base.sentence_bounds``).

- ``spans`` (JSONL): ``{"id", "text", "spans": [{"start", "end", "label"}, ...]}``, character
  offsets, end exclusive; an optional ``group`` names the document (default: the record id).
- ``docbin`` (spaCy ``.spacy``): ``doc.spans[spans_key]``, or ``doc.ents`` when ``spans_key`` is
  None (the component's ``spans_key`` setting); the label is ``span.label_``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import filesystem
from .examples import Example, SkipCounter, read_records, require_examples
from .generic import RecordError, _text


def span_example(text: str, start: int, end: int, label: str, ident: str | None, group: str | None,
                 context: tuple[int, int] | None = None) -> Example:
    """One span example; ``context`` defaults to the whole text."""
    lo, hi = context if context is not None else (0, len(text))
    return Example({"text": text, "span": (start, end), "context": (lo, hi)}, label, ident, group)


def load_span_records(path: str | Path, on_error: str = "stop", encoding: str = "utf-8") -> list[Example]:
    """Span examples from a JSONL file of ``{"id", "text", "spans": [...]}`` records, in file order."""
    source = str(path)
    if not filesystem.is_file(source):
        raise FileNotFoundError(f"data file {source!r} does not exist")
    counter = SkipCounter(on_error, source)
    examples: list[Example] = []
    for number, record in enumerate(read_records(source, "jsonl", counter, encoding), start=1):
        try:
            examples += _record_spans(record.data, number)
        except RecordError as error:
            counter.bad(record.position, str(error))
    counter.finish()
    require_examples(examples, source, len(counter.skipped))
    return examples


def _record_spans(row: dict[str, Any], number: int) -> list[Example]:
    text = _text(row.get("text"))
    spans = row.get("spans")
    if not isinstance(spans, list):
        raise RecordError("'spans' must be a list of {start, end, label} objects")
    ident = str(row["id"]) if row.get("id") is not None else f"record{number}"
    group = str(row["group"]) if row.get("group") not in (None, "") else ident
    out = []
    for k, span in enumerate(spans):
        if not isinstance(span, dict):
            raise RecordError(f"span {k} is not a {{start, end, label}} object")
        try:
            start, end = int(span["start"]), int(span["end"])
        except (KeyError, TypeError, ValueError):
            raise RecordError(f"span {k} needs integer 'start' and 'end'") from None
        if not 0 <= start < end <= len(text):
            raise RecordError(f"span {k} ({start}, {end}) is outside the text of length {len(text)}")
        label = span.get("label")
        if isinstance(label, (dict, list, bool)) or label is None or str(label).strip() == "":
            raise RecordError(f"span {k} needs a non-empty 'label'")
        out.append(span_example(text, start, end, str(label).strip(), f"{ident}:{start}-{end}", group))
    return out


def load_docbin(path: str | Path, spans_key: str | None = None, on_error: str = "stop") -> list[Example]:
    """Span examples from a spaCy DocBin: ``doc.spans[spans_key]`` (``doc.ents`` when None)."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    from ..components.base import sentence_bounds

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"DocBin file {str(source)!r} does not exist")
    counter = SkipCounter(on_error, str(source))
    try:
        docs = list(DocBin().from_disk(source).get_docs(Vocab()))
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{str(source)!r} is not a readable spaCy DocBin ({type(error).__name__})") from None
    examples: list[Example] = []
    for number, doc in enumerate(docs):
        ident = doc.user_data.get("id") if isinstance(doc.user_data.get("id"), str) else f"doc{number}"
        if spans_key is None:
            spans = list(doc.ents)
        elif spans_key in doc.spans:
            spans = list(doc.spans[spans_key])
        else:
            counter.bad(f"doc {number}", f"has no span group {spans_key!r} (its groups: {sorted(doc.spans)})")
            continue
        spans = sorted((s for s in spans if s.text.strip()), key=lambda s: (s.start_char, s.end_char))
        unlabelled = sum(not s.label_ for s in spans)
        if unlabelled:
            counter.bad(f"doc {number}", f"{unlabelled} span(s) without a label")
            continue
        text = doc.text
        for span, bounds in zip(spans, sentence_bounds(doc, spans, len(text))):
            examples.append(span_example(text, span.start_char, span.end_char, span.label_,
                                         f"{ident}:{span.start_char}-{span.end_char}", ident, bounds))
    counter.finish()
    require_examples(examples, str(source), len(counter.skipped))
    return examples
