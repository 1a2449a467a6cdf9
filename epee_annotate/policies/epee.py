"""EPEE (arXiv 2503.02053): exit on low normalized entropy OR on P agreeing exits in a row.

With only an entropy threshold it is DeeBERT (entropy only); with only a patience it is PABEE
(patience only). One declaration covers the three, because their settings are the same two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .base import ExitPolicy, normalized_entropy, patience_state, patience_update
from .spec import Family, GridContext, PolicySpec, Setting

ENTROPY = Setting("entropy", float, "exit when the normalized entropy of an exit's prediction is < TAU "
                  "(with patience: EPEE; alone: entropy only, DeeBERT)", "TAU", 0.0, 1.0)
PATIENCE = Setting("patience", int, "exit when the same class has won P exits in a row "
                   "(with entropy: EPEE; alone: patience only, PABEE)", "P", 1, None)

# Normalized entropy of a confident binary answer is small (p=0.99 -> 0.08), so the low end is dense.
DEFAULT_TAUS: tuple[float, ...] = (
    0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
)


def default_patiences(num_layers: int) -> list[int]:
    """Patience values 1..M (P = M makes EPEE entropy-only; P = 1 answers at exit 1)."""
    return list(range(1, num_layers + 1))


@dataclass(frozen=True)
class EPEE(ExitPolicy):
    """Exit when normalized entropy < ``entropy`` OR the same class won ``patience`` exits in a row."""

    entropy: float = 0.0
    patience: int = 0  # 0 disables the patience rule

    name: ClassVar[str] = "epee"

    def __post_init__(self) -> None:
        ENTROPY.check(self.entropy)
        if self.patience != 0:
            PATIENCE.check(self.patience)

    def init_state(self, batch_size, device="cpu"):
        return patience_state(batch_size, device)

    def step(self, layer, num_layers, probs, state):
        count, state = patience_update(probs, state)
        confident = normalized_entropy(probs) < self.entropy
        if self.patience == 0:
            return confident, state
        return confident | (count >= self.patience), state

    def is_full_depth(self, num_layers: int) -> bool:
        return self.entropy == 0.0 and (self.patience == 0 or self.patience >= num_layers)


@dataclass(frozen=True)
class EntropyExit(ExitPolicy):
    """Entropy only (DeeBERT): exit when normalized entropy < ``entropy``."""

    entropy: float = 0.5
    name: ClassVar[str] = "entropy"

    def __post_init__(self) -> None:
        ENTROPY.check(self.entropy)

    def step(self, layer, num_layers, probs, state):
        return normalized_entropy(probs) < self.entropy, state

    def is_full_depth(self, num_layers: int) -> bool:
        return self.entropy == 0.0


@dataclass(frozen=True)
class PatienceExit(ExitPolicy):
    """Patience only (PABEE): exit when the same class won ``patience`` consecutive exits."""

    patience: int = 2
    name: ClassVar[str] = "patience"

    def __post_init__(self) -> None:
        PATIENCE.check(self.patience)

    def init_state(self, batch_size, device="cpu"):
        return patience_state(batch_size, device)

    def step(self, layer, num_layers, probs, state):
        count, state = patience_update(probs, state)
        return count >= self.patience, state

    def is_full_depth(self, num_layers: int) -> bool:
        return self.patience >= num_layers


def build(settings: Mapping[str, Any]) -> ExitPolicy:
    entropy, patience = settings.get("entropy"), settings.get("patience")
    if entropy is not None and patience is not None:
        return EPEE(entropy=entropy, patience=patience)
    if entropy is not None:
        return EntropyExit(entropy=entropy)
    return PatienceExit(patience=patience)


# Along a path the exit layer can only move earlier: a larger tau (same P) or a smaller P.
def _epee_paths(grid: GridContext) -> list[list[ExitPolicy]]:
    return [[EPEE(entropy=tau, patience=p) for tau in grid.taus] for p in grid.patiences]


def _entropy_paths(grid: GridContext) -> list[list[ExitPolicy]]:
    return [[EntropyExit(entropy=tau) for tau in grid.taus]]


def _patience_paths(grid: GridContext) -> list[list[ExitPolicy]]:
    return [[PatienceExit(patience=p) for p in sorted(grid.patiences, reverse=True)]]


SPEC = PolicySpec(
    name="epee",
    title="EPEE (entropy and/or patience)",
    settings=(ENTROPY, PATIENCE),
    build=build,
    classes=(EPEE, EntropyExit, PatienceExit),
    families=(
        Family("epee", "EPEE (entropy OR patience)", "tab:blue", "o", _epee_paths),
        Family("entropy", "entropy only (DeeBERT)", "tab:orange", "s", _entropy_paths),
        Family("patience", "patience only (PABEE)", "tab:green", "^", _patience_paths),
    ),
)
