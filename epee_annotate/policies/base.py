"""The exit-policy protocol, the shared entropy measure, and replay over precomputed probabilities.

torch is imported inside the functions that compute: the registry (and with it every CLI
``--help``) reads policy declarations without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch


def normalized_entropy(probs: "torch.Tensor") -> "torch.Tensor":
    """H = -sum p log p / log K, in [0, 1], over the last dimension."""
    import torch

    num_classes = probs.size(-1)
    if num_classes < 2:
        return torch.zeros(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-45).log(), torch.zeros_like(probs))
    return (-plogp.sum(-1) / math.log(num_classes)).clamp(0.0, 1.0)


class ExitPolicy:
    """Base class. Subclasses are frozen dataclasses with a ``name`` and implement ``step``.

    ``step`` sees the exit probabilities of the rows still running at layer ``m`` and a small
    per-row state tensor, and returns which rows exit. The engine owns compaction: it indexes the
    state with the rows that stay, so policies never see exited rows.
    """

    name: ClassVar[str] = "policy"

    def init_state(self, batch_size: int, device: "torch.device | str" = "cpu") -> "torch.Tensor":
        """Per-row state, shape (B, S). Stateless policies use S = 0."""
        import torch

        return torch.zeros(batch_size, 0, device=device)

    def step(
        self, layer: int, num_layers: int, probs: "torch.Tensor", state: "torch.Tensor"
    ) -> "tuple[torch.Tensor, torch.Tensor]":
        """Return (exit mask (B,), new state) for the rows at ``layer`` (1-based)."""
        raise NotImplementedError

    def is_full_depth(self, num_layers: int) -> bool:
        """True when every possible input answers at the last exit (nothing to bound or test)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """The saved form (a checkpoint's default policy): ``{"name": ..., **fields}``."""
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]

    def describe(self) -> str:
        """Compact, stable text form used in outputs (e.g. ``epee(entropy=0.2,patience=3)``)."""
        # Round floats: config round trips (thinc) turn 0.3 into 0.30000000000000004.
        args = ",".join(f"{k}={round(v, 6) if isinstance(v, float) else v}"
                        for k, v in asdict(self).items())  # type: ignore[call-overload]
        return f"{self.name}({args})"


def patience_state(batch_size: int, device: "torch.device | str") -> "torch.Tensor":
    """(previous argmax, run length) per row; -1 means no previous exit."""
    import torch

    state = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
    state[:, 0] = -1
    return state


def patience_update(probs: "torch.Tensor", state: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """Advance (previous argmax, run length); the run resets to 1 when the argmax changes."""
    import torch

    prediction = probs.argmax(-1).to(state.dtype)
    same = state[:, 0] == prediction
    count = torch.where(same, state[:, 1] + 1, torch.ones_like(state[:, 1]))
    return count, torch.stack([prediction, count], dim=1)


def simulate(policy: ExitPolicy, exit_probs: "torch.Tensor") -> "torch.Tensor":
    """1-based exit layer of each row, given every exit's probabilities (N, M, K)."""
    import torch

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
