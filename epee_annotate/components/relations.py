"""Relation classification of every pair of mentions within a sentence.

Each pair becomes a core relation input ``{"text": sentence, "head": (s, e), "tail": (s, e)}``
(offsets relative to the sentence; head = the earlier mention in the text). Results are pair
records in ``doc._.epee_annotations`` (view with Span objects: ``doc._.epee_relations``).
Two mentions with the same text (case-insensitive) are not paired. Pairs are made sentence by
sentence in text order up to ``max_pairs_per_doc``; a doc that has
more gets ``doc._.epee_truncated_pairs = True`` and the rest are not classified.

With ``negative_rules`` (on in ``epee_ddi``), the DDI 2013 systems' negative-instance rules
(``data.ddi.filter_rule``: the same drug twice, ``X (Y)`` abbreviations, coordinate lists) answer
``none_label`` before the model: such a pair gets a record with ``rule`` set and no exit layer, and
costs no transformer layer. Training's ``--filter-negatives`` and ``evaluate``'s held-out figures use
the same function, so training, evaluation and inference mark sure negatives alike. A same-text
pair is then a ``same_drug`` record rather than left out.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

from spacy.language import Language
from spacy.tokens import Doc, Span

from ..data.ddi import filter_rule
from .base import EpeeComponent, Item, sentences
from .mentions import MentionSource

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
                 rules: Sequence[Any] | str | None = None, negative_rules: bool = False, **settings: Any):
        if max_pairs_per_doc < 1:
            raise ValueError(f"max_pairs_per_doc must be >= 1, got {max_pairs_per_doc}")
        super().__init__(nlp, name, checkpoint, **settings)
        self.max_pairs_per_doc = int(max_pairs_per_doc)
        self.negative_rules = bool(negative_rules)
        self.mentions = MentionSource(nlp, name, spans_key, span_labels, rules)

    def collect(self, doc: Doc) -> list[Item]:
        if self.negative_rules and self.none_label not in (labels := self.multi_exit_model.labels):
            raise ValueError(f"component {self.name!r}: negative_rules answer none_label {self.none_label!r}, "
                             f"which is not a label of its checkpoint {labels}; set none_label or turn "
                             "negative_rules off")
        text = doc.text  # rebuilt from the tokens on every access: once per doc
        items: list[Item] = []
        for base, end, group in sentence_groups(doc, self.mentions(doc)):
            for i, head in enumerate(group):
                for tail in group[i + 1 :]:
                    if head.end > tail.start:  # overlapping mentions (span groups) cannot be marked
                        continue
                    rule = self._rule(text, head, tail, group) if self.negative_rules else None
                    # Without the rules, a drug named twice is not paired with itself (no record).
                    if rule is None and not self.negative_rules and (
                            text[head.start_char:head.end_char].lower() == text[tail.start_char:tail.end_char].lower()):
                        continue
                    if len(items) == self.max_pairs_per_doc:
                        doc._.epee_truncated_pairs = True
                        logger.warning("component %r: a doc has more than %d mention pairs; the rest are skipped",
                                       self.name, self.max_pairs_per_doc)
                        return items
                    if rule is None:
                        items.append(self._item(text, base, end, head, tail))
                    else:
                        items.append(Item(None, "pair", head.start_char, tail.end_char, head=_chars(head),
                                          tail=_chars(tail), rule=rule))
        return items

    @staticmethod
    def _rule(text: str, head: Span, tail: Span, group: Sequence[Span]) -> str | None:
        """The DDI 2013 negative rule the pair matches (``data.ddi.filter_rule``), or None."""
        others = [_chars(m) for m in group if m is not head and m is not tail]
        return filter_rule(text, _chars(head), _chars(tail), others)

    def _item(self, text: str, base: int, end: int, head: Span, tail: Span) -> Item:
        head_chars, tail_chars = _chars(head), _chars(tail)
        pair, clipped = self.multi_exit_model.encoder.relation_input(text, head_chars, tail_chars, base, end)
        return Item(pair, "pair", head.start_char, tail.end_char, head=head_chars, tail=tail_chars, clipped=clipped)



def _chars(span: Span) -> tuple[int, int]:
    return span.start_char, span.end_char
