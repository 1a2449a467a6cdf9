"""PHEE (pharmacovigilance events) as sentence-level classification.

Each line of a PHEE ``*.json`` file is one sentence: ``context`` (the text) and
``annotations[0].events[].event_type`` in {Adverse_event, Potential_therapeutic_event}.
The sentence label is an event type, so the task has two classes, in the fixed order
``PHEE_LABELS``.

Sentences carrying both types (64 of 2,898 in train, 22 of 961 in dev) follow ``both``:

- ``"majority"`` (default): the type of most of the sentence's events; a tie goes to
  Adverse_event, the safety-relevant class (a missed adverse event costs more than a
  missed therapeutic one). In the shipped data nearly all such sentences are ties, so this
  labels them Adverse_event;
- ``"adverse"``: always Adverse_event;
- ``"skip"``: drop the sentence.

Sentences with no event do not occur in the shipped data (0 of 3,859). ``no_event="skip"``
(default) drops them with a logged count; ``no_event="none"`` labels them "none", which makes
a third class (``phee_labels`` then returns three labels). The group of an example is the
PubMed id (the part of ``id`` before the last underscore), so dev splits keep abstracts whole.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from .. import filesystem
from ..vocab import PV_EVENT_LABELS
from .examples import Example, SkipCounter, read_records, require_examples

logger = logging.getLogger(__name__)

PHEE_LABELS = list(PV_EVENT_LABELS)
ADVERSE, THERAPEUTIC = PHEE_LABELS
NO_EVENT = "none"


def phee_labels(examples: Sequence[Example] = ()) -> list[str]:
    """The fixed label order; "none" is appended only when the examples use it."""
    return PHEE_LABELS + ([NO_EVENT] if any(e.label == NO_EVENT for e in examples) else [])


def sentence_label(event_types: Sequence[str], both: str = "majority") -> str | None:
    """The sentence label for its events' types (None: skip the sentence)."""
    counts = Counter(event_types)
    if not counts:
        return None
    if len(counts) == 1:
        return next(iter(counts))
    if both == "skip":
        return None
    if both == "adverse":
        return ADVERSE
    return THERAPEUTIC if counts[THERAPEUTIC] > counts[ADVERSE] else ADVERSE


def load_phee(
    path: str | Path, both: str = "majority", no_event: str = "skip", on_error: str = "stop", encoding: str = "utf-8"
) -> list[Example]:
    """Sentence-classification examples from a PHEE JSON-lines file (reader: ``formats.phee``)."""
    if both not in ("majority", "adverse", "skip"):
        raise ValueError(f"both must be 'majority', 'adverse' or 'skip', got {both!r}")
    if no_event not in ("skip", "none"):
        raise ValueError(f"no_event must be 'skip' or 'none', got {no_event!r}")
    source = str(path)
    if not filesystem.is_file(source):
        raise FileNotFoundError(f"PHEE file {source!r} does not exist")
    counter = SkipCounter(on_error, source)
    examples, dropped = [], Counter()
    for record in read_records(source, "phee", counter, encoding):
        text, types, ident = record.data["text"], record.data["event_types"], record.data["id"]
        label = sentence_label(types, both)
        if not types and no_event == "none":
            label = NO_EVENT
        if label is None:
            dropped["no event" if not types else "both types"] += 1
            continue
        group = ident.rsplit("_", 1)[0] if ident else None
        examples.append(Example(text, label, ident, group))
    counter.finish()
    if dropped:
        logger.info("PHEE %s: dropped %s", os.path.basename(source), dict(dropped))
    require_examples(examples, source, len(counter.skipped))
    return examples
