"""Exit policies: when may an input stop at layer m?

Every policy has one decision function, ``step``, that sees the exit probabilities of the rows
still running at layer ``m`` and a small per-row state tensor, and returns which rows exit.
The engine owns compaction: it indexes the state with the rows that stay, so policies never
see exited rows. ``simulate`` replays a policy over precomputed per-exit probabilities, which
is how evaluation and calibration sweep thresholds without re-running the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H = -sum p log p / log K, in [0, 1], over the last dimension."""
    num_classes = probs.size(-1)
    if num_classes < 2:
        return torch.zeros(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-45).log(), torch.zeros_like(probs))
    return (-plogp.sum(-1) / math.log(num_classes)).clamp(0.0, 1.0)


class ExitPolicy:
    """Base class. Subclasses are dataclasses with a ``name`` and implement ``step``."""

    name: ClassVar[str] = "policy"

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Per-row state, shape (B, S). Stateless policies use S = 0."""
        return torch.zeros(batch_size, 0, device=device)

    def step(
        self, layer: int, num_layers: int, probs: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (exit mask (B,), new state) for the rows at ``layer`` (1-based)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]

    def describe(self) -> str:
        """Compact, stable text form used in outputs (e.g. ``epee(entropy=0.2,patience=3)``)."""
        # Round floats: config round trips (thinc) turn 0.3 into 0.30000000000000004.
        args = ",".join(f"{k}={round(v, 6) if isinstance(v, float) else v}"
                        for k, v in asdict(self).items())  # type: ignore[call-overload]
        return f"{self.name}({args})"


def _patience_update(probs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance (previous argmax, run length); the run resets to 1 when the argmax changes."""
    prediction = probs.argmax(-1).to(state.dtype)
    same = state[:, 0] == prediction
    count = torch.where(same, state[:, 1] + 1, torch.ones_like(state[:, 1]))
    return count, torch.stack([prediction, count], dim=1)


def _patience_state(batch_size: int, device: torch.device | str) -> torch.Tensor:
    state = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
    state[:, 0] = -1
    return state


@dataclass(frozen=True)
class EPEE(ExitPolicy):
    """Exit when normalized entropy < ``entropy`` OR the same class won ``patience`` exits in a row."""

    entropy: float = 0.0
    patience: int = 0  # 0 disables the patience rule

    name: ClassVar[str] = "epee"

    def __post_init__(self) -> None:
        if not 0.0 <= self.entropy <= 1.0:
            raise ValueError(f"entropy threshold must be in [0, 1], got {self.entropy}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return _patience_state(batch_size, device)

    def step(self, layer, num_layers, probs, state):
        count, state = _patience_update(probs, state)
        confident = normalized_entropy(probs) < self.entropy
        if self.patience == 0:
            return confident, state
        return confident | (count >= self.patience), state


@dataclass(frozen=True)
class EntropyExit(ExitPolicy):
    """Entropy only (DeeBERT): exit when normalized entropy < ``entropy``."""

    entropy: float = 0.5
    name: ClassVar[str] = "entropy"

    def __post_init__(self) -> None:
        if not 0.0 <= self.entropy <= 1.0:
            raise ValueError(f"entropy threshold must be in [0, 1], got {self.entropy}")

    def step(self, layer, num_layers, probs, state):
        return normalized_entropy(probs) < self.entropy, state


@dataclass(frozen=True)
class PatienceExit(ExitPolicy):
    """Patience only (PABEE): exit when the same class won ``patience`` consecutive exits."""

    patience: int = 2
    name: ClassVar[str] = "patience"

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return _patience_state(batch_size, device)

    def step(self, layer, num_layers, probs, state):
        count, state = _patience_update(probs, state)
        return count >= self.patience, state


@dataclass(frozen=True)
class MaxProbExit(ExitPolicy):
    """Exit when the top class probability reaches ``threshold``."""

    threshold: float = 0.9
    name: ClassVar[str] = "maxprob"

    def step(self, layer, num_layers, probs, state):
        return probs.max(-1).values >= self.threshold, state


@dataclass(frozen=True)
class BudgetedExit(ExitPolicy):
    """Every input exits at ``layer`` (the paper's budgeted mode). ``layer=0`` means full depth."""

    layer: int = 0
    name: ClassVar[str] = "budgeted"

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"budgeted exit layer must be >= 0, got {self.layer}")

    def step(self, layer, num_layers, probs, state):
        target = self.layer if self.layer else num_layers
        return torch.full((probs.size(0),), layer >= target, dtype=torch.bool, device=probs.device), state


def full_depth() -> BudgetedExit:
    """The policy that always answers from the last exit."""
    return BudgetedExit(0)


def cost_weights(num_layers: int) -> tuple[float, ...]:
    """BEEM's cost-based expert weights w_m = m / M (deeper exits cost more, so count more)."""
    return tuple(m / num_layers for m in range(1, num_layers + 1))


def _as_floats(values: Any, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in (values or ()))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers, got {values!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise ValueError(f"{what} must be finite and >= 0, got {list(out)}")
    return out


@dataclass(frozen=True)
class BEEM(ExitPolicy):
    """BEEM (Bajpai & Hanawal, 2025): exits are experts whose weighted confidences add up.

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
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"BEEM threshold must be finite and >= 0, got {self.threshold}")
        # Lists (from JSON / configs) become tuples so the policy stays hashable and comparable.
        object.__setattr__(self, "weights", _as_floats(self.weights, "BEEM weights"))
        object.__setattr__(self, "layer_thresholds", _as_floats(self.layer_thresholds, "BEEM layer thresholds"))

    def _per_layer(self, values: tuple[float, ...], num_layers: int, what: str) -> tuple[float, ...]:
        if len(values) != num_layers:
            raise ValueError(f"BEEM has {len(values)} {what} but the model has {num_layers} exits")
        return values

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(previous argmax, score); -1 means no previous exit."""
        state = torch.zeros(batch_size, 2, dtype=torch.float32, device=device)
        state[:, 0] = -1
        return state

    def step(self, layer, num_layers, probs, state):
        weights = self._per_layer(self.weights, num_layers, "weights") if self.weights else cost_weights(num_layers)
        thresholds = self._per_layer(self.layer_thresholds, num_layers, "layer thresholds") \
            if self.layer_thresholds else None
        confidence, prediction = probs.float().max(-1)
        gain = weights[layer - 1] * confidence
        same = state[:, 0] == prediction.to(state.dtype)
        score = torch.where(same, state[:, 1] + gain, gain)
        limit = thresholds[layer - 1] if thresholds is not None else self.threshold
        return score >= limit, torch.stack([prediction.to(state.dtype), score], dim=1)


POLICIES: dict[str, type[ExitPolicy]] = {
    cls.name: cls for cls in (EPEE, EntropyExit, PatienceExit, MaxProbExit, BudgetedExit, BEEM)
}


def policy_from_dict(data: dict[str, Any] | None) -> ExitPolicy:
    """Rebuild a policy from ``to_dict`` output; ``None`` gives full depth."""
    if data is None:
        return full_depth()
    data = dict(data)
    name = data.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"Unknown exit policy {name!r}; known: {', '.join(POLICIES)}")
    return POLICIES[name](**data)


def make_policy(
    entropy: float | None = None, patience: int | None = None, budget: int | None = None, beem: float | None = None
) -> ExitPolicy:
    """Policy from the usual knobs: EPEE, entropy-only, patience-only, budgeted or BEEM as given."""
    if beem is not None:
        if entropy is not None or patience is not None or budget is not None:
            raise ValueError("a BEEM threshold cannot be combined with entropy/patience/budget")
        return BEEM(threshold=float(beem))
    if budget is not None:
        return BudgetedExit(int(budget))
    if entropy is not None and patience is not None:
        return EPEE(entropy=float(entropy), patience=int(patience))
    if entropy is not None:
        return EntropyExit(entropy=float(entropy))
    if patience is not None:
        return PatienceExit(patience=int(patience))
    return full_depth()


def simulate(policy: ExitPolicy, exit_probs: torch.Tensor) -> torch.Tensor:
    """1-based exit layer of each row, given every exit's probabilities (N, M, K)."""
    num_rows, num_layers, _ = exit_probs.shape
    state = policy.init_state(num_rows, exit_probs.device)
    exit_layer = torch.full((num_rows,), num_layers, dtype=torch.long, device=exit_probs.device)
    done = torch.zeros(num_rows, dtype=torch.bool, device=exit_probs.device)
    for m in range(1, num_layers + 1):
        leave, state = policy.step(m, num_layers, exit_probs[:, m - 1], state)
        newly = leave & ~done
        exit_layer[newly] = m
        done |= leave
    return exit_layer
