"""Finite-sample tests and bounds used by calibration, each valid at its stated level.

- exact binomial tests and Clopper-Pearson limits for rates (disagreement with full depth, the
  share of answers a policy gets wrong that the last exit got right);
- an empirical-Bernstein bound for the mean exit layer, which lies in [1, M];
- worst-case conversions from a disagreement rate to a drop of positive micro-F1 or macro-F1.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _check_binomial(k: int, n: int, confidence: float) -> None:
    if n <= 0:
        raise ValueError("need at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """Exact one-sided upper confidence limit on a binomial rate after k events in n trials."""
    from scipy.stats import beta

    _check_binomial(k, n, confidence)
    if k == n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """Exact one-sided lower confidence limit on a binomial rate after k events in n trials."""
    from scipy.stats import beta

    _check_binomial(k, n, confidence)
    if k == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, k, n - k + 1))


def binomial_pvalue(k: int, n: int, target: float) -> float:
    """Exact p-value of H0 "rate >= target" after k events in n trials: P(Binomial(n, target) <= k)."""
    from scipy.stats import binom

    _check_binomial(k, n, 0.5)
    if not 0.0 < target < 1.0:
        raise ValueError(f"a risk target must be in (0, 1), got {target}")
    return float(binom.cdf(k, n, target))


def examples_to_certify(target: float, alpha: float) -> int:
    """The fewest examples with which 0 observed events can show "rate < target" at level alpha."""
    if not 0.0 < target < 1.0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(math.log(alpha) / math.log1p(-target))


def empirical_bernstein_upper(values: Sequence[float] | np.ndarray, low: float, high: float,
                              confidence: float) -> float:
    """Upper confidence limit on the mean of i.i.d. values in [low, high] (Maurer & Pontil 2009, Thm 4)."""
    x = np.asarray(values, dtype=np.float64)
    n, spread = x.size, high - low
    if n < 2 or spread <= 0:
        return float(high) if n < 2 else float(low)
    log_term = math.log(2.0 / (1.0 - confidence))
    variance = float(x.var(ddof=1))
    upper = x.mean() + math.sqrt(2.0 * variance * log_term / n) + 7.0 * spread * log_term / (3.0 * (n - 1))
    return float(min(high, upper))


# ----- from disagreement to F1 ----------------------------------------------------------------------
# F1 of a class set is 2T / S with T the true-positive rate and S = (gold rate + predicted rate) of
# the set. Changing the answers on a share d of inputs lowers 2T by at most 2d and raises S by at most
# d, and the worst case puts all of d into lost true positives, so F1 falls by at most 2d / S.
def f1_drop_bound(disagreement: float, masses: Sequence[float]) -> float:
    """Worst-case F1 drop (averaged over the class sets of ``masses``) when a share ``disagreement`` of answers change.

    ``masses``: lower limits on S for each class set (one entry for positive micro-F1; one per
    label for macro-F1). A set whose S may be 0 can lose its whole F1.
    """
    if not masses:
        raise ValueError("need at least one class mass")
    return float(np.mean([min(1.0, 2.0 * disagreement / s) if s > 0 else 1.0 for s in masses]))


def disagreement_for_f1_drop(max_drop: float, masses: Sequence[float]) -> float:
    """The largest disagreement rate whose worst-case F1 drop (``f1_drop_bound``) is <= ``max_drop``."""
    if f1_drop_bound(1.0, masses) <= max_drop:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(60):  # bisection on a non-decreasing function
        middle = (low + high) / 2
        if f1_drop_bound(middle, masses) <= max_drop:
            low = middle
        else:
            high = middle
    return low
