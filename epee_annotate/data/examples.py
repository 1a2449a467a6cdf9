"""The ``Example`` record shared by every loader, plus label and split helpers."""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from ..formats import BadRecordError, ReadOptions, Record, read_file

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data cannot be read; the message names the file and line, never the text."""


@dataclass
class Example:
    """One labelled input: text (str), relation dict, or image (uint8 array or file path)."""

    input: Any
    label: str
    id: str | None = None  # record id in the source (sentence or pair id), for tracing without text
    group: str | None = None  # source document, so dev splits never share a document with train
    meta: dict[str, Any] | None = None  # what a loader knows beyond the input (DDI: the filter rule a pair matches)


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    """How many examples carry each label (sorted by label)."""
    counts = Counter(example.label for example in examples)
    return {label: counts[label] for label in sorted_labels(counts)}


def sorted_labels(labels: Iterable[str]) -> list[str]:
    """Distinct labels in natural order, so "2" sorts before "10"."""

    def key(label: str) -> list[tuple[int, Any]]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", label) if part]

    return sorted(set(labels), key=key)


def split_by_group(
    examples: Sequence[Example], fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Deterministic (train, dev) split that keeps each group (document) on one side.

    Examples without a group are their own group. About ``fraction`` of the groups go to dev.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"dev fraction must be between 0 and 1, got {fraction}")
    keys = [example.group if example.group is not None else f"#{i}" for i, example in enumerate(examples)]
    groups = sorted(set(keys))
    if len(groups) < 2:
        raise ValueError("cannot split off a dev part: the data has fewer than two documents")
    random.Random(seed).shuffle(groups)
    size = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    dev_groups = set(groups[:size])
    train = [e for e, k in zip(examples, keys) if k not in dev_groups]
    dev = [e for e, k in zip(examples, keys) if k in dev_groups]
    return train, dev


STOP_HINT = "(use on_error='skip' to skip bad records)"


class SkipCounter:
    """Applies the ``on_error`` rule: raise at the first bad record, or count and skip it."""

    def __init__(self, on_error: str, source: str):
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.source = source
        self.skipped: list[str] = []

    @property
    def read_options(self) -> dict[str, str]:
        """The reader's ``on_bad_record`` mode for this rule (``formats.ReadOptions``)."""
        return {"on_bad_record": "failfast" if self.on_error == "stop" else "permissive"}

    def bad(self, position: str, why: str) -> None:
        """Report one bad record (``position`` is e.g. "notes.csv line 7"; ``why`` must not quote data)."""
        if self.on_error == "stop":
            raise DataError(f"{position}: {why} {STOP_HINT}")
        self.skipped.append(position)

    def finish(self) -> None:
        """Log how many records were skipped and where (positions only: records may hold PHI)."""
        if self.skipped:
            shown = ", ".join(self.skipped[:10]) + (", ..." if len(self.skipped) > 10 else "")
            logger.warning("skipped %d bad record(s) in %s (%s)", len(self.skipped), self.source, shown)


def read_records(path: str | os.PathLike, fmt: str, counter: SkipCounter, encoding: str = "utf-8",
                 **format_options: Any) -> Iterator[Record]:
    """The good records of one file through the format registry; bad ones go to ``counter``."""
    options = ReadOptions(encoding=encoding, **counter.read_options)
    try:
        for record in read_file(str(path), fmt, options, **format_options):
            if record.error is None:
                yield record
            else:  # permissive: count it (failfast raised in the reader)
                counter.bad(record.position, record.error)
    except BadRecordError as error:
        raise DataError(f"{error} {STOP_HINT}") from None


def require_examples(examples: Sequence[Example], source: str, skipped: int = 0) -> None:
    """A clear error for an empty split."""
    if not examples:
        extra = f" ({skipped} bad record(s) were skipped)" if skipped else ""
        raise DataError(f"{source} holds no examples{extra}")
