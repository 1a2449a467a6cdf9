"""Mention classification: each mention is classified from its sentence, marked ``<e1>...</e1>``.

The checkpoint is a ``task="span"`` one (``epee-annotate train --task span``): the component hands
it ``{"text", "span", "context"}`` (context: the mention's sentence, ``sentence_bounds``) and the
model's encoder marks the mention, the same code that marked it in training and evaluation. An
older ``task="text"`` checkpoint trained on ``inputs.mark_mention`` text is still read: the
component marks the text with that same encoder method. Long sentences are cut around the
mention before encoding (``TextEncoder.mention_input``), so the marked mention always reaches
the model; such results are flagged ``truncated``.
"""

from __future__ import annotations

from typing import Any, Sequence

from spacy.language import Language
from spacy.tokens import Doc

from .base import EpeeComponent, Item, sentence_bounds
from .mentions import MentionSource


class SpanClassifier(EpeeComponent):
    """Labels mentions; results on ``span._.epee_*`` and in ``doc._.epee_annotations`` (kind "mention")."""

    task = "span"
    older_tasks = ("text",)
    reports_context = True

    def __init__(self, nlp: Language, name: str, checkpoint: str | None, spans_key: str | None = None,
                 span_labels: Sequence[str] | None = None, rules: Sequence[Any] | str | None = None, **settings: Any):
        super().__init__(nlp, name, checkpoint, **settings)
        self.mentions = MentionSource(nlp, name, spans_key, span_labels, rules)

    def collect(self, doc: Doc) -> list[Item]:
        # doc.text is rebuilt from the tokens on every access: read it once per doc.
        text = doc.text
        model = self.multi_exit_model
        mentions = self.mentions(doc)
        items = []
        for span, (lo, hi) in zip(mentions, sentence_bounds(doc, mentions, len(text))):
            start, end = span.start_char, span.end_char
            if model.task == "span":  # the encoder marks it (and flags a cut as truncated)
                items.append(Item({"text": text, "span": (start, end), "context": (lo, hi)}, "mention", start, end,
                                  span=span))
            else:
                marked, cut = model.encoder.mention_input(text, start, end, lo, hi)
                items.append(Item(marked, "mention", start, end, span=span, clipped=cut))
        return items

