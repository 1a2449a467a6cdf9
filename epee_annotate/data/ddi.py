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
from collections import Counter
from pathlib import Path
from typing import Sequence

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
    files = ddi_files(path)
    counter = SkipCounter(on_error, str(path))
    examples: list[Example] = []
    dropped: Counter = Counter()
    for file in files:
        for record in read_records(file, "ddi", counter, encoding):
            try:
                examples += _sentence_examples(record.data, dropped)
            except _BadElement as error:
                counter.bad(record.position, str(error))
    counter.finish()
    if dropped:
        logger.info("DDI %s: dropped pairs %s", path, dict(dropped))
    require_examples(examples, str(path), len(counter.skipped))
    return examples


def _sentence_examples(sentence: dict, dropped: Counter) -> list[Example]:
    text = sentence["text"]
    entities = {}
    for entity in sentence["entities"]:
        spans = parse_offsets(entity["charOffset"])
        if spans[-1][1] > len(text):
            raise _BadElement(f"entity {entity['id']} offsets run past the sentence end")
        entities[entity["id"]] = spans
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
        out.append(Example({"text": text, "head": head, "tail": tail}, label, ident, sentence["document"]))
    return out


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
