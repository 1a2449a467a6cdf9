"""What calibration is asked for, and the errors that refuse a request."""

from __future__ import annotations

from dataclasses import dataclass

GOALS = ("max_drop", "min_speedup", "max_disagreement")
DEFAULT_GUARD_DROP = 0.02  # two points on any reported metric
F1_METRICS = ("macro_f1", "micro_f1_positive")


class GuardError(ValueError):
    """Every setting that meets the goal loses more than the guard allows on some metric."""


class UncertifiableGoalError(ValueError):
    """The goal cannot be certified from this many calibration examples, whatever they show."""


class DevOverlapError(ValueError):
    """Calibration data overlaps the dev set that chose the checkpoint's epoch."""


@dataclass(frozen=True)
class CalibrationGoal:
    """What calibration optimises: one of ``GOALS`` with its ``value``, and how it is checked."""

    kind: str
    value: float
    metric: str = "auto"
    confidence: float = 0.95  # joint, over every statement printed about new data
    in_sample: bool = False  # choose on in-sample values (no statement about new data)
    guard_drop: float = DEFAULT_GUARD_DROP  # largest in-sample drop allowed on any reported metric
    force: bool = False  # choose even when the guard refuses every setting that meets the goal

    def __post_init__(self) -> None:
        if self.kind not in GOALS:
            raise ValueError(f"goal must be one of {GOALS}, got {self.kind!r}")
        if self.kind == "max_drop" and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"max_drop is an absolute fraction in [0, 1] (0.005 = 0.5 points), got {self.value}")
        if self.kind == "min_speedup" and self.value < 1.0:
            raise ValueError(f"min_speedup must be >= 1, got {self.value}")
        if self.kind == "max_disagreement" and not 0.0 < self.value < 1.0:
            raise ValueError(f"max_disagreement must be in (0, 1), got {self.value}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 <= self.guard_drop <= 1.0:
            raise ValueError(f"guard_drop is an absolute fraction in [0, 1], got {self.guard_drop}")

    @property
    def guard(self) -> float:
        """The guard bound; an explicit max_drop goal larger than the guard widens it."""
        return max(self.guard_drop, self.value) if self.kind == "max_drop" else self.guard_drop

    def describe(self) -> str:
        where = "on the calibration split only (in-sample)" if self.in_sample else \
            f"on new data, joint confidence {self.confidence:g}"
        if self.kind == "max_disagreement":
            return f"max_disagreement={self.value:g} {where}"
        return f"{self.kind}={self.value:g} on {self.metric} {where}"
