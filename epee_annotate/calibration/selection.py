"""Learn-then-Test selection: which candidate settings are certified to meet a risk target.

Each candidate's null hypothesis is "its risk exceeds the target", tested with an exact p-value.
Candidates come as paths ordered before the data is seen, from the most conservative setting to
the most aggressive (``policies.spec.Family``); along a path the tests run in order at level
alpha / (number of paths) and stop at the first that fails (fixed-sequence testing). With
probability >= 1 - alpha no certified setting has a risk above the target, so choosing any of them,
the fastest for instance, keeps the guarantee.
"""

from __future__ import annotations

from typing import Sequence


def fixed_sequence(paths: Sequence[Sequence[int]], pvalues: Sequence[float], alpha: float) -> set[int]:
    """Indices certified (null rejected) by fixed-sequence testing along each path at alpha / len(paths)."""
    if not paths:
        return set()
    level = alpha / len(paths)
    certified: set[int] = set()
    for path in paths:
        for index in path:
            if pvalues[index] > level:
                break
            certified.add(index)
    return certified
