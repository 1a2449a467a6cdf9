"""Budgeted exit (the EPEE paper's budgeted mode): every input answers at one fixed layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .base import ExitPolicy
from .spec import Family, GridContext, PolicySpec, Setting

BUDGET = Setting("budget", int, "every input exits at layer M (0 = full depth)", "M", 0, None)


@dataclass(frozen=True)
class BudgetedExit(ExitPolicy):
    """Every input exits at ``layer``. ``layer=0`` means full depth."""

    layer: int = 0
    name: ClassVar[str] = "budgeted"

    def __post_init__(self) -> None:
        BUDGET.check(self.layer)

    def step(self, layer, num_layers, probs, state):
        import torch

        target = self.layer if self.layer else num_layers
        return torch.full((probs.size(0),), layer >= target, dtype=torch.bool, device=probs.device), state

    def is_full_depth(self, num_layers: int) -> bool:
        return self.layer == 0 or self.layer >= num_layers


def full_depth() -> BudgetedExit:
    """The policy that always answers from the last exit."""
    return BudgetedExit(0)


def _paths(grid: GridContext) -> list[list[ExitPolicy]]:
    return [[BudgetedExit(m) for m in range(grid.num_layers, 0, -1)]]


def build(settings: Mapping[str, Any]) -> ExitPolicy:
    return BudgetedExit(settings["budget"])


SPEC = PolicySpec(
    name="budget",
    title="budgeted exit",
    settings=(BUDGET,),
    build=build,
    classes=(BudgetedExit,),
    # Evaluation reports every layer in its budgeted-mode table already, so not in the dynamic grid.
    families=(Family("budget", "budgeted exit (fixed layer)", "tab:gray", "D", _paths, in_report=False),),
)
