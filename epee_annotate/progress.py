"""Progress for long loops: a tqdm bar on a terminal, else a log line every ``interval`` seconds."""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, Sized, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("epee_annotate.progress")
LOG_INTERVAL = 30.0


def progress(items: Iterable[T], desc: str, unit: str = "batch", bar: bool = False,
             interval: float | None = None, logger: logging.Logger | None = None) -> Iterator[T]:
    """Yield ``items``; ``bar``: a tqdm bar, else an INFO line ("desc: 40/120 batch, 31 s") every ``interval`` s."""
    if bar:
        yield from tqdm(items, desc=desc, unit=unit)
        return
    logger = logger or log
    interval = LOG_INTERVAL if interval is None else interval
    total = len(items) if isinstance(items, Sized) else None
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= interval:
            last = now
            of = f"/{total}" if total is not None else ""
            logger.info("%s: %d%s %s, %.0f s", desc, done, of, unit, now - start)
