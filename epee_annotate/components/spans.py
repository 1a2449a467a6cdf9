"""Mention classification: each mention is classified from its sentence, marked ``<e1>...</e1>``.

The checkpoint is a ``task="text"`` one trained on text built with ``windows.mark_mention``.
Long sentences are cut around the mention before encoding (``windows.mention_input``), so the
marked mention always reaches the model; such results are flagged ``truncated``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from spacy.language import Language
from spacy.tokens import Doc, Span

from .base import EpeeComponent, Item
from .mentions import MentionSource
from .windows import mention_input, mention_room


def mention_context(doc: Doc, span: Span) -> tuple[int, int]:
    """Character range of the sentence holding ``span`` (the whole doc without sentence boundaries)."""
    if not doc.has_annotation("SENT_START"):
        return 0, len(doc.text)
    sent = span.sent
    return min(sent.start_char, span.start_char), max(sent.end_char, span.end_char)


class SpanClassifier(EpeeComponent):
    """Labels mentions; results on ``span._.epee_*`` and in ``doc._.epee_annotations`` (kind "mention")."""

    task = "text"

    def __init__(self, nlp: Language, name: str, checkpoint: str | None, spans_key: str | None = None,
                 span_labels: Sequence[str] | None = None, rules: Sequence[Any] | str | None = None, **settings: Any):
        super().__init__(nlp, name, checkpoint, **settings)
        self.mentions = MentionSource(nlp, name, spans_key, span_labels, rules)
        self._room: int | None = None

    def _token_room(self) -> int:
        if self._room is None:
            encoder = self.model.encoder
            self._room = mention_room(self.model.preprocessor, encoder.max_length - encoder.num_special)
        return self._room

    def collect(self, doc: Doc) -> list[Item]:
        items = []
        for span in self.mentions(doc):
            lo, hi = mention_context(doc, span)
            text, cut = mention_input(doc.text[lo:hi], span.start_char - lo, span.end_char - lo,
                                      self.model.preprocessor, self._token_room())
            items.append(Item(text, "mention", span.start_char, span.end_char, span=span, clipped=cut))
        return items

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        super().to_disk(path, exclude=exclude)
        self.mentions.to_disk(Path(path))

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> "SpanClassifier":
        super().from_disk(path, exclude=exclude)
        self.mentions.from_disk(Path(path))
        self._room = None
        return self
