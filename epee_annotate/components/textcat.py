"""Text classification of each sentence or of the whole doc with a multi-exit "text" checkpoint."""

from __future__ import annotations

from typing import Any

from spacy.language import Language
from spacy.tokens import Doc

from .base import EpeeComponent, Item, has_content, sentences

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
        text, encoder = doc.text, self.multi_exit_model.encoder
        if self.scope == "doc":
            if not has_content(text):
                return []
            clipped, cut = encoder.text_input(text)
            return [Item(clipped, "doc", 0, len(text), clipped=cut)]
        items = []
        for sent in sentences(doc):
            if not has_content(sent.text):
                continue
            clipped, cut = encoder.text_input(text, sent.start_char, sent.end_char)
            items.append(Item(clipped, "sentence", sent.start_char, sent.end_char, span=sent, clipped=cut))
        return items
