"""Text classification of each sentence or of the whole doc with a multi-exit "text" checkpoint."""

from __future__ import annotations

from typing import Any

from spacy.language import Language
from spacy.tokens import Doc

from .base import EpeeComponent, Item, has_content, sentences
from .windows import CHARS_PER_TOKEN

SCOPES = ("doc", "sents")


class TextClassifier(EpeeComponent):
    """``scope="sents"``: one result per sentence (``sent._.epee_*``); ``"doc"``: ``doc.cats`` + ``doc._.epee_*``.

    Sentences and docs without any letter or digit are skipped (nothing to classify).
    """

    task = "text"

    def __init__(self, nlp: Language, name: str, checkpoint: str | None, scope: str = "sents", **settings: Any):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        super().__init__(nlp, name, checkpoint, **settings)
        self.scope = scope

    def collect(self, doc: Doc) -> list[Item]:
        # Cutting very long text here keeps tokenisation cheap; the core keeps the first tokens anyway.
        max_chars = self.model.encoder.max_length * CHARS_PER_TOKEN
        if self.scope == "doc":
            return [self._item(doc.text, "doc", 0, len(doc.text), None, max_chars)] if has_content(doc.text) else []
        return [
            self._item(sent.text, "sentence", sent.start_char, sent.end_char, sent, max_chars)
            for sent in sentences(doc)
            if has_content(sent.text)
        ]

    @staticmethod
    def _item(text: str, kind: str, start: int, end: int, span, max_chars: int) -> Item:
        return Item(text[:max_chars], kind, start, end, span=span, clipped=len(text) > max_chars)
