"""Wall-clock timing of several ways to run the same batches, paired batch by batch.

Every batch is run by each runner in turn, the order rotating from batch to batch and repeat to
repeat, and a runner's time is the sum over batches of its fastest run of that batch. On a
shared machine, load that comes and goes within seconds then hits every runner alike instead
of whichever whole run it overlapped (``benchmarks/timing_noise.py`` measures the difference).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm


@dataclass
class PairedTimes:
    seconds: float  # sum over batches of the fastest run
    cpu_seconds: float  # the same for this process's CPU time (all threads)
    repeat_seconds: list[float]  # each repeat's total, for the spread


def time_paired(
    runners: dict[str, Callable[[Sequence[int]], Any]],
    batches: Sequence[Sequence[int]],
    repeats: int,
    on_result: Callable[[str, Sequence[int], Any], None] | None = None,
    synchronize: Callable[[], None] = lambda: None,
    progress: bool = False,
) -> dict[str, PairedTimes]:
    """Time ``runner(batch)`` for every runner and batch ``repeats`` times; ``on_result`` sees each output."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = list(runners)
    best = {name: [float("inf")] * len(batches) for name in names}
    best_cpu = {name: [float("inf")] * len(batches) for name in names}
    totals = {name: [0.0] * repeats for name in names}
    with tqdm(total=repeats * len(batches), desc="timing", unit="batch", disable=not progress) as bar:
        for repeat in range(repeats):
            for b, batch in enumerate(batches):
                shift = (repeat + b) % len(names)
                for name in names[shift:] + names[:shift]:
                    synchronize()
                    start, start_cpu = time.perf_counter(), time.process_time()
                    result = runners[name](batch)
                    synchronize()
                    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                    best[name][b] = min(best[name][b], seconds)
                    best_cpu[name][b] = min(best_cpu[name][b], cpu)
                    totals[name][repeat] += seconds
                    if on_result is not None:
                        on_result(name, batch, result)
                bar.update()
    return {name: PairedTimes(sum(best[name]), sum(best_cpu[name]), totals[name]) for name in names}
