"""BEEM (Bajpai & Hanawal, 2025): exits are experts whose weighted confidences add up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from .base import ExitPolicy
from .spec import Family, GridContext, PolicySettingError, PolicySpec, Setting

THRESHOLD = Setting("beem", float, "BEEM: exit when the running sum of (m/M) x confidence of agreeing exits "
                    "reaches S", "S", 0.0, None)

# BEEM thresholds as shares of the most a row can score (every exit agreeing with confidence 1).
DEFAULT_BEEM_FRACTIONS: tuple[float, ...] = (
    0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
)


def cost_weights(num_layers: int) -> tuple[float, ...]:
    """BEEM's cost-based expert weights w_m = m / M (deeper exits cost more, so count more)."""
    return tuple(m / num_layers for m in range(1, num_layers + 1))


def _as_floats(values: Any, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in (values or ()))
    except (TypeError, ValueError):
        raise PolicySettingError(f"{what} must be a list of numbers, got {values!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise PolicySettingError(f"{what} must be finite and >= 0, got {list(out)}")
    return out


@dataclass(frozen=True)
class BEEM(ExitPolicy):
    """Weighted expert confidences.

    At layer m the score of a row grows by ``w_m * max_prob_m`` while exit m predicts the same
    class as exit m-1, and restarts at ``w_m * max_prob_m`` when the class changes; the row exits
    once the score reaches the threshold of layer m. ``weights`` empty means cost-based
    w_m = m / M; pass per-exit accuracies for the accuracy-based variant. ``layer_thresholds``
    (one per layer) replaces the global ``threshold`` when given.
    """

    threshold: float = 1.0
    weights: tuple[float, ...] = ()
    layer_thresholds: tuple[float, ...] = ()

    name: ClassVar[str] = "beem"

    def __post_init__(self) -> None:
        THRESHOLD.check(self.threshold)
        # Lists (from JSON / configs) become tuples so the policy stays hashable and comparable.
        object.__setattr__(self, "weights", _as_floats(self.weights, "BEEM weights"))
        object.__setattr__(self, "layer_thresholds", _as_floats(self.layer_thresholds, "BEEM layer thresholds"))

    def _per_layer(self, values: tuple[float, ...], num_layers: int, what: str) -> tuple[float, ...]:
        if len(values) != num_layers:
            raise ValueError(f"BEEM has {len(values)} {what} but the model has {num_layers} exits")
        return values

    def _weights(self, num_layers: int) -> tuple[float, ...]:
        return self._per_layer(self.weights, num_layers, "weights") if self.weights else cost_weights(num_layers)

    def init_state(self, batch_size, device="cpu"):
        """(previous argmax, score); -1 means no previous exit."""
        import torch

        state = torch.zeros(batch_size, 2, dtype=torch.float32, device=device)
        state[:, 0] = -1
        return state

    def step(self, layer, num_layers, probs, state):
        import torch

        weights = self._weights(num_layers)
        thresholds = self._per_layer(self.layer_thresholds, num_layers, "layer thresholds") \
            if self.layer_thresholds else None
        confidence, prediction = probs.float().max(-1)
        gain = weights[layer - 1] * confidence
        same = state[:, 0] == prediction.to(state.dtype)
        score = torch.where(same, state[:, 1] + gain, gain)
        limit = thresholds[layer - 1] if thresholds is not None else self.threshold
        return score >= limit, torch.stack([prediction.to(state.dtype), score], dim=1)

    def is_full_depth(self, num_layers: int) -> bool:
        # No row can score more than every weight at confidence 1 before the last exit.
        if self.layer_thresholds:
            return False
        return self.threshold > sum(self._weights(num_layers)[:-1]) + 1e-9


def beem_grid(num_layers: int, fractions: Iterable[float] = DEFAULT_BEEM_FRACTIONS,
              weights: Sequence[float] = ()) -> list[BEEM]:
    """BEEM at global thresholds = fraction x sum of the weights (cost-based m/M when ``weights`` is empty)."""
    total = sum(weights) if weights else sum(cost_weights(num_layers))
    return [BEEM(threshold=round(float(f) * total, 6), weights=tuple(weights)) for f in fractions]


# Along a path the exit layer can only move earlier: a lower threshold is reached sooner.
def _cost_paths(grid: GridContext) -> list[list[ExitPolicy]]:
    return [beem_grid(grid.num_layers)[::-1]]


def _accuracy_paths(grid: GridContext) -> list[list[ExitPolicy]]:
    if not grid.exit_accuracies:
        raise PolicySettingError(
            "the beem-accuracy family weights each exit by its accuracy on data other than the calibration split "
            "(training's dev set, recorded in the checkpoint by `train`); this checkpoint has no such record")
    if len(grid.exit_accuracies) != grid.num_layers:
        raise PolicySettingError(f"{len(grid.exit_accuracies)} exit accuracies for {grid.num_layers} exits")
    return [beem_grid(grid.num_layers, weights=grid.exit_accuracies)[::-1]]


def build(settings: Mapping[str, Any]) -> ExitPolicy:
    return BEEM(threshold=settings["beem"])


SPEC = PolicySpec(
    name="beem",
    title="BEEM",
    settings=(THRESHOLD,),
    build=build,
    classes=(BEEM,),
    families=(
        Family("beem", "BEEM (weighted expert confidences)", "tab:purple", "v", _cost_paths),
        Family("beem-accuracy", "BEEM (exit accuracies as weights)", "tab:pink", "<", _accuracy_paths,
               in_report=False),
    ),
)
