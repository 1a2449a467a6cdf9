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
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from ..vocab import DDI_LABELS, DDI_NEGATIVE
from .examples import Example, SkipCounter, require_examples

logger = logging.getLogger(__name__)

NEGATIVE = DDI_NEGATIVE
ENTITY_TYPE_ORDER = ("drug", "brand", "group", "drug_n")  # tie-break for the lexicon

Span = tuple[int, int]


class _BadElement(ValueError):
    """An element's attributes do not fit the corpus format."""


def ddi_files(path: str | Path) -> list[Path]:
    """The XML files at ``path`` (a file, or a directory searched recursively), sorted."""
    source = Path(path)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"DDI path {str(source)!r} does not exist")
    files = sorted(p for p in source.rglob("*.xml") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .xml files under {str(source)!r}")
    return files


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


def _parse_file(path: Path, counter: SkipCounter) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        line, column = error.position
        counter.bad(f"{path} line {line}", f"malformed XML at column {column}")
    except OSError as error:
        counter.bad(str(path), f"cannot read ({type(error).__name__})")
    return None


def load_ddi(path: str | Path, on_error: str = "stop") -> list[Example]:
    """Relation examples for every entity pair under ``path``, in file order."""
    dropped: Counter = Counter()
    examples = _load_sentences(path, on_error, lambda sentence, document: _sentence_examples(sentence, document,
                                                                                          dropped))
    if dropped:
        logger.info("DDI %s: dropped pairs %s", path, dict(dropped))
    return examples


def load_ddi_entities(path: str | Path, on_error: str = "stop") -> list[Example]:
    """Span examples: every ``<entity>`` of every sentence, labelled with its type (``ENTITY_TYPE_ORDER``).

    A public stand-in for mention classification (``--task span --format ddi-entities``). A
    discontinuous entity spans from its first fragment's start to its last fragment's end; the
    context is its sentence; the group is the document.
    """
    return _load_sentences(path, on_error, _sentence_entities)


def _load_sentences(path: str | Path, on_error: str,
                    examples_of: Callable[[ET.Element, str], list[Example]]) -> list[Example]:
    """``examples_of(sentence, document)`` over every sentence under ``path``; bad sentences follow ``on_error``."""
    counter = SkipCounter(on_error, str(path))
    examples: list[Example] = []
    for file in ddi_files(path):
        root = _parse_file(file, counter)
        if root is None:
            continue
        document = root.get("id") or file.stem
        for sentence in root.iter("sentence"):
            try:
                examples += examples_of(sentence, document)
            except _BadElement as error:
                counter.bad(f"{file} sentence {sentence.get('id')}", str(error))
    counter.finish()
    require_examples(examples, str(path), len(counter.skipped))
    return examples


def _entities(sentence: ET.Element) -> tuple[str, dict[str | None, tuple[list[Span], str | None]]]:
    """The sentence text and its entities: id -> (fragment spans, type)."""
    text = sentence.get("text")
    if text is None:
        raise _BadElement("sentence has no text attribute")
    entities = {}
    for entity in sentence.iter("entity"):
        spans = parse_offsets(entity.get("charOffset"))
        if spans[-1][1] > len(text):
            raise _BadElement(f"entity {entity.get('id')} offsets run past the sentence end")
        entities[entity.get("id")] = (spans, entity.get("type"))
    return text, entities


def _sentence_entities(sentence: ET.Element, document: str) -> list[Example]:
    from .spans import span_example

    text, entities = _entities(sentence)
    out = []
    for ident, (spans, kind) in entities.items():
        if kind not in ENTITY_TYPE_ORDER:
            raise _BadElement(f"entity {ident} has type {kind!r}, expected one of {list(ENTITY_TYPE_ORDER)}")
        out.append(span_example(text, spans[0][0], spans[-1][1], kind, ident, document))
    return out


def _sentence_examples(sentence: ET.Element, document: str, dropped: Counter) -> list[Example]:
    text, typed = _entities(sentence)
    entities = {ident: spans for ident, (spans, _) in typed.items()}
    out = []
    for pair in sentence.iter("pair"):
        ident = pair.get("id")
        if pair.get("e1") not in entities or pair.get("e2") not in entities:
            raise _BadElement(f"pair {ident} names an entity the sentence does not have")
        positive = (pair.get("ddi") or "").lower() == "true"
        label = (pair.get("type") or "").lower() if positive else NEGATIVE
        if label not in DDI_LABELS:
            if positive and not label:
                dropped["positive without type"] += 1
                continue
            raise _BadElement(f"pair {ident} has type {label!r}, expected one of {DDI_LABELS[1:]}")
        spans = _pair_spans(entities[pair.get("e1")], entities[pair.get("e2")])
        if spans is None:
            dropped["overlapping entities"] += 1
            continue
        head, tail = spans
        others = [(v[0][0], v[-1][1]) for k, v in entities.items() if k not in (pair.get("e1"), pair.get("e2"))]
        rule = filter_rule(text, head, tail, others)
        out.append(Example({"text": text, "head": head, "tail": tail}, label, ident, document,
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
        root = _parse_file(file, counter)
        if root is None:
            continue
        for entity in root.iter("entity"):
            text, kind = (entity.get("text") or "").strip().lower(), entity.get("type")
            if text and kind:
                counts.setdefault(text, Counter())[kind] += 1
    counter.finish()
    rank = {kind: i for i, kind in enumerate(ENTITY_TYPE_ORDER)}
    return {
        text: min(kinds, key=lambda k: (-kinds[k], rank.get(k, len(rank)), k)) for text, kinds in sorted(counts.items())
    }
