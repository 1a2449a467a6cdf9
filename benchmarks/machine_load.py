"""Busy-looping processes that stand in for a shared machine, on demand and bounded in time."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

_LOOP = """
import random, time
rng = random.Random({seed})
end = time.monotonic() + {limit_s}
while time.monotonic() < end:
    busy_until = time.monotonic() + ({on_s} if {on_s} > 0 else end)
    while time.monotonic() < min(busy_until, end):
        pass
    if {off_s} > 0:
        time.sleep(rng.uniform(0.5, 1.5) * {off_s})
"""


@contextmanager
def busy_processes(count: int, on_s: float = 0.0, off_s: float = 0.0, limit_s: float = 3600.0, seed: int = 0):
    """``count`` processes spinning on a core; with ``off_s`` they pause for about that long every ``on_s``.

    Each one stops by itself after ``limit_s``, so a crash of the caller never leaves them behind for long.
    """
    procs = [
        subprocess.Popen([sys.executable, "-c", _LOOP.format(seed=seed + k, limit_s=limit_s, on_s=on_s, off_s=off_s)])
        for k in range(count)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=30)
