"""The outcome of a calibration: the chosen policy, the statements that hold for it, the evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..policies import ExitPolicy
from .goal import CalibrationGoal

METHOD = "fixed-sequence binomial tests (Learn-then-Test)"
KEEP = ("accuracy", "macro_f1", "micro_f1_positive", "mean_exit_layer", "saved_fraction", "speedup",
        "disagreement", "disagreement_count", "exit_histogram")


@dataclass
class Statement:
    """One claim about new data, held with probability >= 1 - alpha over the calibration sample."""

    key: str  # "disagreement", "accuracy_drop", "macro_f1_drop", "speedup", ...
    text: str
    bound: float
    alpha: float
    method: str


@dataclass
class CalibrationResult:
    """The chosen policy and the evidence for it."""

    policy: ExitPolicy
    goal: CalibrationGoal
    metrics: dict[str, Any]  # the chosen setting's row on the calibration split
    reference: dict[str, Any]  # the full-depth row on the calibration split
    n: int
    grid_size: int
    feasible: int  # grid points that met the goal (certified, or in-sample)
    statements: list[Statement] = field(default_factory=list)
    fallback: bool = False  # nothing passed; full depth was kept
    data: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    metric_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user must know about this choice
    forced: bool = False  # the guard refused and ``force`` overrode it
    metric_source: str = ""  # where the main metric came from (``evaluation.metric_source``)

    @property
    def confidence(self) -> float:
        return self.goal.confidence

    @property
    def bounds(self) -> dict[str, float]:
        """Each statement's bound by key (upper for risks and drops, lower for the speed-up)."""
        return {s.key: s.bound for s in self.statements}

    @property
    def bound(self) -> float | None:
        """The disagreement rate with full depth promised on new data (None: no such statement)."""
        return self.bounds.get("disagreement")

    @property
    def drops(self) -> dict[str, float]:
        """In-sample drop below the last exit of every reported metric."""
        return {m: self.reference[m] - self.metrics[m] for m in self.metric_names}

    def guarantee(self) -> str:
        """What the choice promises, in one sentence."""
        if self.goal.in_sample:
            return ("none on new data: an in-sample choice (it met the goal on these "
                    f"{self.n} calibration examples only)")
        if not self.statements:
            return "full depth answers exactly as the last exit: nothing to bound"
        alphas = ", ".join(f"{s.alpha:.4g}" for s in self.statements)
        return (f"with probability >= {self.confidence:g} over the calibration sample (alpha "
                f"{1 - self.confidence:.4g} split over {len(self.statements)} statements: {alphas}), on new data "
                "from the same distribution: " + "; ".join(s.text for s in self.statements))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as stored in the checkpoint's ``calibration`` record."""
        return {
            "policy": self.policy.to_dict(),
            "policy_name": self.policy.describe(),
            "goal": asdict(self.goal),
            "metric_source": self.metric_source,
            "metrics": {k: self.metrics[k] for k in KEEP if k in self.metrics},
            "reference": {k: self.reference[k] for k in KEEP if k in self.reference},
            "drops": self.drops,
            "statements": [asdict(s) for s in self.statements],
            "bounds": self.bounds,
            "guarantee": self.guarantee(),
            "notes": list(self.notes),
            "forced": self.forced,
            "n": self.n,
            "grid_size": self.grid_size,
            "feasible": self.feasible,
            "disagreement_bound": self.bound,
            "confidence": self.confidence,
            "correction": METHOD,
            "fallback": self.fallback,
            "data": self.data,
            "grid": self.grid,
        }

    def summary(self) -> str:
        """One paragraph for the terminal."""
        m, r = self.metrics, self.reference
        lines = [
            f"metric: {self.goal.metric}" + (f" ({self.metric_source})" if self.metric_source else ""),
            f"goal: {self.goal.describe()}",
            f"chosen: {self.policy.describe()}" + ("  (nothing passed: full depth kept)" if self.fallback else "")
            + ("  (FORCED past the guard)" if self.forced else ""),
            f"calibration split: n={self.n}, grid of {self.grid_size} settings, {self.feasible} met the goal",
            "in-sample on the calibration split (main metric first):",
        ]
        for name in self.metric_names:
            lines.append(f"  {name}: {m[name]:.4f} (last exit {r[name]:.4f}, drop {r[name] - m[name]:+.4f})")
        lines += [
            f"  speed-up: {m['speedup']:.3f}x (mean exit layer {m['mean_exit_layer']:.2f}, "
            f"saved_fraction {m['saved_fraction']:.3f})",
            f"  disagreement with full depth: {m['disagreement']:.4f} ({m['disagreement_count']}/{self.n})",
            f"guarantee: {self.guarantee()}",
            f"guard: no reported metric may drop more than {self.goal.guard:g} in-sample"
            + (" (overridden: forced)" if self.forced else ""),
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)
