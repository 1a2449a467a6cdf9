"""Checking a selection rule against a population whose true risks are known (tests, benchmarks)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def violation_rate(select: Callable[[np.ndarray], int | None], population: np.ndarray, target: float, n: int, runs: int, seed: int = 0) -> float:
    """Share of ``runs`` calibrations on n-row samples whose chosen setting's true risk exceeds ``target``.

    ``population``: (N, G) 0/1 risk indicators of G settings on a large population (its column
    means are the true risks); ``select(sample) -> index or None`` is the selection under test.
    """
    rng = np.random.default_rng(seed)
    truth = population.mean(0)
    bad = 0
    for _ in range(runs):
        chosen = select(population[rng.integers(0, len(population), size=n)])
        bad += chosen is not None and truth[chosen] > target
    return bad / runs
