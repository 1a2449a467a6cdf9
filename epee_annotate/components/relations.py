"""Relation classification of every pair of mentions within a sentence.

Each pair becomes a core relation input ``{"text": sentence, "head": (s, e), "tail": (s, e)}``
(offsets relative to the sentence; head = the earlier mention in the text). Results are pair
records in ``doc._.epee_annotations`` (view with Span objects: ``doc._.epee_relations``).
Two mentions with the same text (case-insensitive) are not paired. Pairs are made sentence by
sentence in text order up to ``max_pairs_per_doc``; a doc that has
more gets ``doc._.epee_truncated_pairs = True`` and the rest are not classified.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from spacy.language import Language
from spacy.tokens import Doc, Span

from .base import EpeeComponent, Item, sentences
from .mentions import MentionSource
from .windows import CHARS_PER_TOKEN, clip_context

logger = logging.getLogger(__name__)


def sentence_groups(doc: Doc, mentions: Sequence[Span]) -> Iterator[tuple[int, int, list[Span]]]:
    """(start char, end char, mentions) per sentence with at least two mentions starting in it.

    The range is the sentence's, stretched to cover a mention that runs past its end.
    """
    index = 0
    for sent in sentences(doc):
        group = []
        while index < len(mentions) and mentions[index].start < sent.end:
            if mentions[index].start >= sent.start:
                group.append(mentions[index])
            index += 1
        if len(group) > 1:
            yield sent.start_char, max(sent.end_char, max(m.end_char for m in group)), group


class RelationClassifier(EpeeComponent):
    """Labels mention pairs with a multi-exit "relation" checkpoint."""

    task = "relation"

    def __init__(self, nlp: Language, name: str, checkpoint: str | None, max_pairs_per_doc: int = 1000,
                 spans_key: str | None = None, span_labels: Sequence[str] | None = None,
                 rules: Sequence[Any] | str | None = None, **settings: Any):
        if max_pairs_per_doc < 1:
            raise ValueError(f"max_pairs_per_doc must be >= 1, got {max_pairs_per_doc}")
        super().__init__(nlp, name, checkpoint, **settings)
        self.max_pairs_per_doc = int(max_pairs_per_doc)
        self.mentions = MentionSource(nlp, name, spans_key, span_labels, rules)

    def collect(self, doc: Doc) -> list[Item]:
        max_chars = self.model.encoder.max_length * CHARS_PER_TOKEN
        items: list[Item] = []
        for base, end, group in sentence_groups(doc, self.mentions(doc)):
            text = doc.text[base:end]
            for i, head in enumerate(group):
                for tail in group[i + 1 :]:
                    if head.end > tail.start:  # overlapping mentions (span groups) cannot be marked
                        continue
                    if head.text.lower() == tail.text.lower():  # a drug named twice does not interact with itself
                        continue
                    if len(items) == self.max_pairs_per_doc:
                        doc._.epee_truncated_pairs = True
                        logger.warning("component %r: a doc has more than %d mention pairs; the rest are skipped",
                                       self.name, self.max_pairs_per_doc)
                        return items
                    items.append(self._item(text, base, head, tail, max_chars))
        return items

    @staticmethod
    def _item(text: str, base: int, head: Span, tail: Span, max_chars: int) -> Item:
        spans = [(head.start_char - base, head.end_char - base), (tail.start_char - base, tail.end_char - base)]
        clipped_text, (h, t), clipped = clip_context(text, spans, max_chars)
        return Item({"text": clipped_text, "head": h, "tail": t}, "pair", head.start_char, tail.end_char,
                    head=(head.start_char, head.end_char), tail=(tail.start_char, tail.end_char), clipped=clipped)

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        super().to_disk(path, exclude=exclude)
        self.mentions.to_disk(Path(path))

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> "RelationClassifier":
        super().from_disk(path, exclude=exclude)
        self.mentions.from_disk(Path(path))
        return self
