"""A job's progress with a known total: input bytes annotated out of the listed files' size.

Ray Data's own bar cannot give these jobs a total (Ray 2.60 stores the read's row estimate under
one attribute name and reads it under another, so it prints "0/?"), and it counts an operator's
rows, not inputs. Instead every block the reader makes carries the file bytes its records came
from (``sources.INPUT_BYTES``); the annotation actors, and resume's filter for the records it
skips, report each finished batch to a small counter actor (no CPU, fire-and-forget calls). The
driver polls it and draws one bar: bytes of the listed total (rows of an npz archive), plus the
records done. On a terminal it is a tqdm bar; elsewhere a log line every ``LOG_INTERVAL`` seconds.
Every poll is bounded: a counter that does not answer leaves the bar where it was, never the job
waiting.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ..progress import LOG_INTERVAL
from .sources import INPUT_BYTES

logger = logging.getLogger("epee_annotate.progress")
POLL_S = 0.5
READ_TIMEOUT_S = 5.0  # one poll of the counter at most; the bar then waits for the next


def _counter_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressCounter:
        """Units (bytes or rows) and records done, added to by the actors."""

        def __init__(self) -> None:
            self.units = 0
            self.records = 0

        def add(self, units: int, records: int) -> None:
            self.units += units
            self.records += records

        def read(self) -> tuple[int, int]:
            return self.units, self.records

    return ProgressCounter


def batch_units(batch: pa.Table) -> int:
    """What ``batch`` counts for: its input bytes when the reader recorded them, else its rows."""
    if INPUT_BYTES in batch.column_names:
        return int(pc.sum(batch.column(INPUT_BYTES)).as_py() or 0)
    return batch.num_rows


def report(counter: Any, batch: pa.Table) -> None:
    """Count ``batch`` as done (no-op without a counter: progress off)."""
    if counter is not None and batch.num_rows:
        counter.add.remote(batch_units(batch), batch.num_rows)


class Display:
    """A tqdm bar on a terminal, else a log line every ``LOG_INTERVAL`` seconds."""

    def __init__(self, desc: str, total: int | None, unit: str):
        self.desc, self.total, self.unit = desc, total, unit
        self.started = self.logged = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                            dynamic_ncols=True)

    def show(self, units: int, records: int) -> None:
        if self.bar is not None:
            self.bar.update(units - self.bar.n)
            self.bar.set_postfix_str(f"{records:,} records", refresh=False)
            return
        now = time.monotonic()
        if now - self.logged >= LOG_INTERVAL:
            self.logged = now
            share = f" ({100 * units / self.total:.0f}%)" if self.total else ""
            of = f"/{self.total:,}" if self.total is not None else ""
            logger.info("%s: %s%s %s%s, %s records, %.0f s", self.desc, f"{units:,}", of, self.unit, share,
                        f"{records:,}", now - self.started)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def job_progress(enabled: bool, total: int | None, unit: str = "B", desc: str = "annotating") -> Iterator[Any]:
    """The counter actor to hand to the actors (None when ``enabled`` is false), with a bar drawn meanwhile."""
    if not enabled:
        yield None
        return
    import ray

    counter = _counter_class().remote()
    display = Display(desc, total, unit)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            _refresh(display, counter)

    thread = threading.Thread(target=poll, name="epee-progress", daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(timeout=READ_TIMEOUT_S + POLL_S)
        _refresh(display, counter)
        display.close()
        ray.kill(counter)


def _refresh(display: Display, counter: Any) -> None:
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    try:
        units, records = ray.get(counter.read.remote(), timeout=READ_TIMEOUT_S)
    except (GetTimeoutError, RayError):
        return
    display.show(units, records)
