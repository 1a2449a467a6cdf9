"""Maximum-probability exit: stop once the top class is probable enough."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .base import ExitPolicy
from .spec import Family, GridContext, PolicySpec, Setting

MAX_PROB = Setting("max_prob", float, "exit when an exit's top class probability reaches Q", "Q", 0.0, 1.0)
DEFAULT_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class MaxProbExit(ExitPolicy):
    """Exit when the top class probability reaches ``threshold``."""

    threshold: float = 0.9
    name: ClassVar[str] = "maxprob"

    def __post_init__(self) -> None:
        MAX_PROB.check(self.threshold)

    def step(self, layer, num_layers, probs, state):
        return probs.max(-1).values >= self.threshold, state


def _paths(grid: GridContext) -> list[list[ExitPolicy]]:
    return [[MaxProbExit(q) for q in sorted(DEFAULT_LEVELS, reverse=True)]]


def build(settings: Mapping[str, Any]) -> ExitPolicy:
    return MaxProbExit(settings["max_prob"])


SPEC = PolicySpec(
    name="maxprob",
    title="maximum probability",
    settings=(MAX_PROB,),
    build=build,
    classes=(MaxProbExit,),
    families=(Family("maxprob", "maximum probability", "tab:brown", "P", _paths, in_report=False),),
)
