"""DDI Extraction 2013 XML corpus as relation classification.

Every ``<pair e1 e2 ddi type>`` of a ``<sentence>`` becomes one relation example: head = the
span of ``e1``, tail = the span of ``e2``, label = ``type`` for ``ddi="true"`` pairs and
"none" otherwise. Labels have the fixed order ``DDI_LABELS``.

Offsets: the corpus' ``charOffset="a-b"`` is inclusive (``text[a:b+1]``). A discontinuous
entity ``"a-b;c-d"`` (38 in the train part, e.g. "beta- and alpha-blockers") is taken from
its first fragment's start to its last fragment's end. If that makes the head and tail
spans overlap (47 pairs), each entity falls back to its first fragment alone; pairs that
still overlap (1) and positive pairs with no type (1) cannot be encoded and are dropped
with a logged count.

A path may be one XML file or a directory searched recursively for ``*.xml``. The example
group is the ``<document id>``, so dev splits keep documents whole.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from .. import filesystem
from ..vocab import DDI_LABELS, DDI_NEGATIVE
from .examples import Example, SkipCounter, read_records, require_examples

logger = logging.getLogger(__name__)

NEGATIVE = DDI_NEGATIVE
ENTITY_TYPE_ORDER = ("drug", "brand", "group", "drug_n")  # tie-break for the lexicon

Span = tuple[int, int]


class _BadElement(ValueError):
    """An element's attributes do not fit the corpus format."""


def ddi_files(path: str | Path) -> list[str]:
    """The XML files at ``path`` (a file, or a directory searched recursively; path or URI), sorted."""
    location = str(path)
    if filesystem.is_file(location):
        return [location]
    if not filesystem.exists(location):
        raise FileNotFoundError(f"DDI path {location!r} does not exist")
    return filesystem.expand([location], lambda p: p.lower().endswith(".xml"))


def parse_offsets(value: str | None) -> list[Span]:
    """``"a-b;c-d"`` -> [(a, b+1), (c, d+1)]: inclusive corpus ends become exclusive ends."""
    if not value:
        raise _BadElement("entity has no charOffset")
    spans = []
    for fragment in value.split(";"):
        try:
            start, end = (int(x) for x in fragment.strip().split("-"))
        except ValueError:
            raise _BadElement(f"charOffset {value!r} is not 'a-b' or 'a-b;c-d'") from None
        if not 0 <= start <= end:
            raise _BadElement(f"charOffset {value!r} has a fragment ending before it starts")
        spans.append((start, end + 1))
    return spans


def _overlap(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _pair_spans(head: list[Span], tail: list[Span]) -> tuple[Span, Span] | None:
    """Head and tail spans by the module's rule, or None if they cannot be separated."""
    wide_head, wide_tail = (head[0][0], head[-1][1]), (tail[0][0], tail[-1][1])
    if not _overlap(wide_head, wide_tail):
        return wide_head, wide_tail
    if not _overlap(head[0], tail[0]):
        return head[0], tail[0]
    return None


def load_ddi(path: str | Path, on_error: str = "stop", encoding: str = "utf-8") -> list[Example]:
    """Relation examples for every entity pair under ``path``, in file order (reader: ``formats.ddi``)."""
    dropped: Counter = Counter()
    examples = _load_sentences(path, on_error, encoding, lambda sentence: _sentence_examples(sentence, dropped))
    if dropped:
        logger.info("DDI %s: dropped pairs %s", path, dict(dropped))
    return examples


def load_ddi_entities(path: str | Path, on_error: str = "stop", encoding: str = "utf-8") -> list[Example]:
    """Span examples: every ``<entity>`` of every sentence, labelled with its type (``ENTITY_TYPE_ORDER``).

    A public stand-in for mention classification (``--task span --format ddi-entities``). A
    discontinuous entity spans from its first fragment's start to its last fragment's end; the
    context is its sentence; the group is the document.
    """
    return _load_sentences(path, on_error, encoding, _sentence_entities)


def _load_sentences(path: str | Path, on_error: str, encoding: str,
                    examples_of: Callable[[dict], list[Example]]) -> list[Example]:
    """``examples_of(sentence record)`` over every sentence under ``path``; bad sentences follow ``on_error``."""
    counter = SkipCounter(on_error, str(path))
    examples: list[Example] = []
    for file in ddi_files(path):
        for record in read_records(file, "ddi", counter, encoding):
            try:
                examples += examples_of(record.data)
            except _BadElement as error:
                counter.bad(record.position, str(error))
    counter.finish()
    require_examples(examples, str(path), len(counter.skipped))
    return examples


def _entities(sentence: dict) -> dict[str, tuple[list[Span], str | None]]:
    """The sentence's entities: id -> (fragment spans, type)."""
    entities = {}
    for entity in sentence["entities"]:
        spans = parse_offsets(entity["charOffset"])
        if spans[-1][1] > len(sentence["text"]):
            raise _BadElement(f"entity {entity['id']} offsets run past the sentence end")
        entities[entity["id"]] = (spans, entity["type"])
    return entities


def _sentence_entities(sentence: dict) -> list[Example]:
    from .spans import span_example

    out = []
    for ident, (spans, kind) in _entities(sentence).items():
        if kind not in ENTITY_TYPE_ORDER:
            raise _BadElement(f"entity {ident} has type {kind!r}, expected one of {list(ENTITY_TYPE_ORDER)}")
        out.append(span_example(sentence["text"], spans[0][0], spans[-1][1], kind, ident, sentence["document"]))
    return out


def _sentence_examples(sentence: dict, dropped: Counter) -> list[Example]:
    text = sentence["text"]
    entities = {ident: spans for ident, (spans, _) in _entities(sentence).items()}
    out = []
    for pair in sentence["pairs"]:
        ident = pair["id"]
        if pair["e1"] not in entities or pair["e2"] not in entities:
            raise _BadElement(f"pair {ident} names an entity the sentence does not have")
        positive = (pair["ddi"] or "").lower() == "true"
        label = (pair["type"] or "").lower() if positive else NEGATIVE
        if label not in DDI_LABELS:
            if positive and not label:
                dropped["positive without type"] += 1
                continue
            raise _BadElement(f"pair {ident} has type {label!r}, expected one of {DDI_LABELS[1:]}")
        spans = _pair_spans(entities[pair["e1"]], entities[pair["e2"]])
        if spans is None:
            dropped["overlapping entities"] += 1
            continue
        head, tail = spans
        others = [(v[0][0], v[-1][1]) for k, v in entities.items() if k not in (pair["e1"], pair["e2"])]
        rule = filter_rule(text, head, tail, others)
        out.append(Example({"text": text, "head": head, "tail": tail}, label, ident, sentence["document"],
                           {"filter_rule": rule} if rule else None))
    return out


# ----- negative-instance filtering (DDI 2013 systems: Chowdhury & Lavelli 2013, Liu et al. 2016) --------
FILTER_RULES = ("same_drug", "abbreviation", "coordination")
_COORDINATION = re.compile(r"(?:[\s,;/()]|\band\b|\bor\b|\bnor\b)*", re.IGNORECASE)


def filter_rule(text: str, head: Span, tail: Span, others: Sequence[Span] = ()) -> str | None:
    """The rule by which DDI 2013 systems drop the pair as a sure negative, or None.

    - ``same_drug``: both entities are the same name (case-insensitive);
    - ``abbreviation``: ``X (Y)``, the second entity in parentheses right after the first;
    - ``coordination``: both in one list, as in "X, Y and Z": only separators (``,`` ``;`` ``/``
      ``and`` ``or`` ``nor``, brackets) and other entities stand between them, with a comma, a
      semicolon or a third entity among them.
    """
    first, second = sorted([head, tail])
    if text[head[0] : head[1]].strip().lower() == text[tail[0] : tail[1]].strip().lower():
        return "same_drug"
    between = text[first[1] : second[0]]
    if between.strip() == "(" and text[second[1] :].lstrip().startswith(")"):
        return "abbreviation"
    inside = sorted(s for s in others if first[1] <= s[0] and s[1] <= second[0])
    pieces, last = [], first[1]
    for start, end in inside:
        if start >= last:
            pieces.append(text[last:start])
            last = end
    pieces.append(text[last : second[0]])
    # A list: a comma/semicolon or a third entity between them ("X and Y" alone is often a real interaction).
    listed = bool(inside) or any(c in "".join(pieces) for c in ",;")
    if listed and all(_COORDINATION.fullmatch(piece) for piece in pieces):
        return "coordination"
    return None


def filter_negatives(examples: Sequence[Example]) -> list[Example]:
    """Drop the negatives that a DDI 2013 filter rule marks as sure negatives (``filter_rule``); positives stay.

    Logs how many pairs each rule dropped and how many positives the rules would have dropped
    (the rules' cost in recall).
    """
    dropped: Counter = Counter()
    spared: Counter = Counter()
    kept = []
    for example in examples:
        rule = (example.meta or {}).get("filter_rule")
        if rule and example.label == NEGATIVE:
            dropped[rule] += 1
            continue
        if rule:
            spared[rule] += 1
        kept.append(example)
    logger.info("DDI negative filtering dropped %s negatives; positives matching a rule (kept): %s",
                dict(dropped), dict(spared))
    return kept




def subsample_negatives(examples: Sequence[Example], ratio: float | None, seed: int = 0) -> list[Example]:
    """Keep every positive and at most ``ratio`` negatives per positive (None: keep all), in order."""
    if ratio is None:
        return list(examples)
    if ratio < 0:
        raise ValueError(f"negative ratio must be >= 0, got {ratio}")
    negatives = [i for i, e in enumerate(examples) if e.label == NEGATIVE]
    positives = len(examples) - len(negatives)
    keep_count = min(len(negatives), int(round(ratio * positives)))
    keep = set(random.Random(seed).sample(negatives, keep_count))
    return [e for i, e in enumerate(examples) if e.label != NEGATIVE or i in keep]


def ddi_drug_lexicon(directory: str | Path) -> dict[str, str]:
    """Entity text (lower-cased) -> entity type (drug, brand, group, drug_n) over the corpus.

    A text annotated with several types gets its most frequent one; ties follow
    ``ENTITY_TYPE_ORDER``. Unparseable files are skipped with a logged count.
    """
    counts: dict[str, Counter] = {}
    counter = SkipCounter("skip", str(directory))
    for file in ddi_files(directory):
        for record in read_records(file, "ddi", counter):
            for entity in record.data["entities"]:
                text, kind = (entity["text"] or "").strip().lower(), entity["type"]
                if text and kind:
                    counts.setdefault(text, Counter())[kind] += 1
    counter.finish()
    rank = {kind: i for i, kind in enumerate(ENTITY_TYPE_ORDER)}
    return {
        text: min(kinds, key=lambda k: (-kinds[k], rank.get(k, len(rank)), k)) for text, kinds in sorted(counts.items())
    }
