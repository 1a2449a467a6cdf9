"""The early-exit inference engine.

Rows that exit leave the batch at once (compaction): the next layer runs only on the rows still
active, so a batch pays for the layers its rows actually use rather than waiting for its
slowest row. Right padding that no active row needs any more is trimmed too. Text is grouped
into length buckets first so padding does not eat the savings.

A batch still runs every layer its slowest row needs, on ever smaller batches. Measured on a
quiet machine that costs next to nothing: layer time follows the rows x tokens actually computed,
not the number of layer calls (docs/evaluation.md, "Where the time goes"). Regrouping the survivors of several batches into
full batches per layer was tried and measured slower in every setting (more padding, more
copies), so the engine keeps one batch at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
from torch import nn

from .backbones import Backbone, LayerState
from .policies import ExitPolicy


@dataclass
class ExitResult:
    """Per-row outcome of one batch, in the batch's row order."""

    exit_layer: torch.Tensor  # (B,) 1-based
    probs: torch.Tensor  # (B, K) float32 probabilities of the exit that answered
    full_probs: torch.Tensor | None = None  # (B, K) last exit's probabilities; set on audited rows only


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on CUDA when asked; a no-op elsewhere."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def _trim_right_padding(state: LayerState) -> LayerState:
    """Drop trailing columns that are padding for every active row (right-padded text only)."""
    if state.token_mask is None:
        return state
    width = int(state.token_mask.any(0).nonzero().max()) + 1
    if width == state.token_mask.size(1):
        return state
    mask = state.attention_mask
    if mask is not None:
        mask = mask[..., :width, :width]
    extras = {k: v[:, :width] for k, v in state.extras.items()}
    return replace(state, hidden=state.hidden[:, :width], attention_mask=mask,
                   token_mask=state.token_mask[:, :width], extras=extras)


@torch.inference_mode()
def run_early_exit(
    backbone: Backbone,
    heads: nn.ModuleList,
    batch: dict[str, torch.Tensor],
    policy: ExitPolicy,
    autocast_dtype: torch.dtype | None = None,
    audit: torch.Tensor | None = None,
) -> ExitResult:
    """Run one batch layer by layer, letting rows leave as soon as ``policy`` says so.

    ``audit`` (B,) bool: those rows keep their early answer but stay in the batch to the last
    layer (the forward pass already done is reused), whose answer goes to ``full_probs``.
    """
    num_layers = backbone.num_layers
    first = next(iter(batch.values()))
    device = first.device
    with autocast_context(device, autocast_dtype):
        state = backbone.embed(batch)
        size = state.hidden.size(0)
        active = torch.arange(size, device=device)
        policy_state = policy.init_state(size, device)
        exit_layer = torch.full((size,), num_layers, dtype=torch.long, device=device)
        answered = torch.zeros(size, dtype=torch.bool, device=device)
        audited = audit.to(device=device, dtype=torch.bool) if audit is not None else None
        probs_out: torch.Tensor | None = None
        full_out: torch.Tensor | None = None
        for index in range(num_layers):
            state = backbone.run_layer(index, state)
            probs = heads[index](backbone.features(index, state)).float().softmax(-1)
            leave, policy_state = policy.step(index + 1, num_layers, probs, policy_state)
            last = index + 1 == num_layers
            if last:
                leave = torch.ones_like(leave)
            if probs_out is None:
                probs_out = torch.empty(size, probs.size(-1), dtype=torch.float32, device=device)
            newly = leave & ~answered[active]  # audited rows that answered earlier stay, answered
            if newly.any():
                rows = active[newly]
                exit_layer[rows] = index + 1
                probs_out[rows] = probs[newly]
                answered[rows] = True
            if audited is not None and last:
                full_out = torch.zeros_like(probs_out)
                keep = audited[active]
                full_out[active[keep]] = probs[keep]
            done = answered[active] if audited is None else answered[active] & ~audited[active]
            if done.any():
                stay = (~done).nonzero().squeeze(1)
                if stay.numel() == 0:
                    break
                active = active[stay]
                policy_state = policy_state[stay]
                state = _trim_right_padding(state.select(stay))
    return ExitResult(exit_layer, probs_out, full_out)


@torch.inference_mode()
def run_all_exits(
    backbone: Backbone, heads: nn.ModuleList, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Probabilities of every exit, (B, M, K): full depth, for evaluation and calibration."""
    device = next(iter(batch.values())).device
    with autocast_context(device, autocast_dtype):
        features = backbone(batch)
        return torch.stack([head(f).float().softmax(-1) for head, f in zip(heads, features)], dim=1)


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
