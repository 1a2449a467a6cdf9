"""What a policy module declares: its settings, how to build it, its candidate grids and plot style.

Every entry point derives from these declarations (see ``registry``): spaCy factory settings,
CLI flags, the job options that travel to Ray actors, evaluation families, calibration grids
and plot legends. A new policy is one module with a ``SPEC`` and one line in ``registry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .base import ExitPolicy


class PolicySettingError(ValueError):
    """Exit-policy settings that are invalid or that name two policies at once."""


@dataclass(frozen=True)
class Setting:
    """One flat policy setting (a config key, a CLI flag ``--key``, a job option)."""

    key: str
    type: type  # int or float
    help: str
    metavar: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def range_text(self) -> str:
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        return f"[{low}, {high}]"

    def check(self, value: Any) -> Any:
        """The value as ``type``, or a PolicySettingError naming the setting and its valid range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicySettingError(f"{self.key} must be a number, got {value!r}")
        if self.type is int:
            if float(value) != int(value):
                raise PolicySettingError(f"{self.key} must be an integer, got {value!r}")
            value = int(value)
        else:
            # Config round trips (thinc) turn 0.3 into 0.30000000000000004: thresholds are not that fine.
            value = round(float(value), 12)
        if not math.isfinite(value) or (self.minimum is not None and value < self.minimum) or \
                (self.maximum is not None and value > self.maximum):
            raise PolicySettingError(f"{self.key} must be in {self.range_text()}, got {value!r}")
        return value


@dataclass(frozen=True)
class GridContext:
    """What a candidate grid may depend on, all fixed before the calibration data is seen."""

    num_layers: int
    taus: tuple[float, ...]
    patiences: tuple[int, ...]
    # Per-exit accuracies measured on other data (training's dev set), for BEEM's accuracy weights.
    exit_accuracies: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Family:
    """A named set of candidate settings of one policy, as ordered paths.

    Each path runs from the most conservative setting to the most aggressive, in an order fixed
    before any calibration data is seen (exits can only move earlier along it), which is what
    fixed-sequence testing in calibration needs. Evaluation sweeps the union of the paths.
    """

    name: str
    title: str  # legend and report heading
    color: str
    marker: str
    paths: Callable[[GridContext], list[list[ExitPolicy]]]
    in_report: bool = True  # swept by ``evaluate --grid`` (calibration can search every family)

    def candidates(self, context: GridContext) -> list[ExitPolicy]:
        """Every setting of the family, once each, in path order."""
        seen: dict[str, ExitPolicy] = {}
        for path in self.paths(context):
            for policy in path:
                seen.setdefault(policy.describe(), policy)
        return list(seen.values())


@dataclass(frozen=True)
class PolicySpec:
    """The declaration of one exit policy (see the module docstring)."""

    name: str
    title: str
    settings: tuple[Setting, ...]
    build: Callable[[Mapping[str, Any]], ExitPolicy]  # from this policy's settings that are set (checked)
    classes: tuple[type[ExitPolicy], ...]  # the saved forms it reads back (``{"name": cls.name, ...}``)
    families: tuple[Family, ...] = field(default_factory=tuple)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.settings)

    def load(self, data: Mapping[str, Any]) -> ExitPolicy:
        """A saved policy (``to_dict`` output) of one of this spec's classes."""
        data = dict(data)
        name = data.pop("name")
        cls = next(c for c in self.classes if c.name == name)
        try:
            return cls(**data)
        except TypeError as error:
            raise PolicySettingError(f"saved {name} policy has unknown fields: {error}") from None


def ordered(values: Sequence[float]) -> list[float]:
    """Sorted unique values (grid axes)."""
    return sorted(set(values))
