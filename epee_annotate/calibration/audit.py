"""The production audit: does the calibrated disagreement bound still hold on the data being annotated?

A deterministic sample of documents (``audited``: by a hash of the text, so a rerun or a resume
picks the same ones) also runs to the last layer. Each audited item gives one Bernoulli trial,
"the early answer differs from full depth". With k disagreements in n items:

* ``holds``: the exact (Clopper-Pearson) 95% upper bound on the rate is <= the promised bound;
* ``exceeded``: the exact 95% lower bound is above it (the data show the promise is broken);
* ``not enough audited``: neither yet; ``n_needed`` says how many items would settle it if the
  observed rate persists (None when the observed rate is at or above the promise);
* ``no promise``: the checkpoint has no disagreement bound for the policy in use (no calibration,
  an in-sample one, or another policy than the calibrated one): the counts are reported alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from .bounds import clopper_pearson_lower, clopper_pearson_upper, examples_to_certify

AUDIT_CONFIDENCE = 0.95
DEFAULT_AUDIT_FRACTION = 0.05  # when the checkpoint carries a calibration; else the audit is off
HOLDS, EXCEEDED, NOT_ENOUGH, NO_PROMISE = "holds", "exceeded", "not enough audited", "no promise"


def audited(text: str, fraction: float) -> bool:
    """Whether the document with this text is in the audit sample (deterministic, uniform in the hash)."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def effective_fraction(fraction: float | None, calibration: Mapping[str, Any] | None) -> float:
    """The audit fraction in use: the one given, else ``DEFAULT_AUDIT_FRACTION`` with a calibration, else 0."""
    if fraction is None:
        return DEFAULT_AUDIT_FRACTION if calibration else 0.0
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"audit_fraction must be in [0, 1], got {fraction}")
    return float(fraction)


def promised_bound(calibration: Mapping[str, Any] | None, policy: Mapping[str, Any]) -> tuple[float | None, str]:
    """(the disagreement bound calibration promised for ``policy``, where it comes from or why there is none)."""
    if not calibration:
        return None, "the checkpoint carries no calibration"
    if calibration.get("policy") != dict(policy):
        return None, "the policy in use is not the calibrated one"
    bound = calibration.get("disagreement_bound")
    if bound is None:
        return None, "the calibration record states no disagreement bound"
    return float(bound), f"calibration (confidence {calibration.get('confidence')})"


def n_needed(k: int, n: int, promised: float, confidence: float = AUDIT_CONFIDENCE) -> int | None:
    """Audited items that would show ``holds`` if the observed rate persisted (None: it never would)."""
    if k == 0:
        return examples_to_certify(promised, 1 - confidence)
    rate = k / n
    if rate >= promised:
        return None
    m = n
    while m < 10**9:
        m *= 2
        if clopper_pearson_upper(round(rate * m), m, confidence) <= promised:
            break
    low, high = m // 2, m  # the bound falls with m: bisect to the smallest m
    while high - low > 1:
        middle = (low + high) // 2
        if clopper_pearson_upper(round(rate * middle), middle, confidence) <= promised:
            high = middle
        else:
            low = middle
    return high


def audit_report(n: int, disagreements: int, promised: float | None, source: str,
                 confidence: float = AUDIT_CONFIDENCE) -> dict[str, Any]:
    """Counts, observed rate, its exact upper bound, the promise and the verdict (module docstring)."""
    report: dict[str, Any] = {"audited": n, "disagreements": disagreements, "confidence": confidence,
                              "observed_rate": disagreements / n if n else None,
                              "upper_bound": clopper_pearson_upper(disagreements, n, confidence) if n else None,
                              "promised_bound": promised, "promised_by": source, "n_needed": None}
    if promised is None:
        report["verdict"] = NO_PROMISE
    elif n and report["upper_bound"] <= promised:
        report["verdict"] = HOLDS
    elif n and clopper_pearson_lower(disagreements, n, confidence) > promised:
        report["verdict"] = EXCEEDED
    else:
        report["verdict"] = NOT_ENOUGH
        report["n_needed"] = n_needed(disagreements, n, promised, confidence) if n else n_needed(0, 0, promised)
    return report


@dataclass
class AuditCounter:
    """Running audit counts of one component (``component.audit``), with the current verdict."""

    promised: float | None = None
    source: str = ""
    audited: int = 0
    disagreements: int = 0
    by_exit_layer: dict[int, list[int]] = field(default_factory=dict)  # layer -> [audited, disagreements]

    def add(self, early: str, full: str, exit_layer: int) -> None:
        self.audited += 1
        differ = int(early != full)
        self.disagreements += differ
        counts = self.by_exit_layer.setdefault(int(exit_layer), [0, 0])
        counts[0] += 1
        counts[1] += differ

    def report(self) -> dict[str, Any]:
        return audit_report(self.audited, self.disagreements, self.promised, self.source)

    @property
    def verdict(self) -> str:
        return self.report()["verdict"]
