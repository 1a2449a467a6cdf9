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
from typing import Callable, Iterator, Sequence

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


# One layer of a runtime: state in, (state after the layer, that layer's exit logits) out.
LayerStep = Callable[[int, LayerState], "tuple[LayerState, torch.Tensor]"]


def compact(state: LayerState, stay: torch.Tensor) -> LayerState:
    """Keep only the rows ``stay`` and the columns they still need: every runtime's compaction."""
    return _trim_right_padding(state.select(stay))


def early_exit_loop(state: LayerState, step: LayerStep, num_layers: int, policy: ExitPolicy,
                    audit: torch.Tensor | None = None) -> ExitResult:
    """Run embedded ``state`` layer by layer, letting rows leave as soon as ``policy`` says so.

    Shared by every runtime (torch, ONNX Runtime): the runtime supplies ``step``; the policy
    decisions and the compaction between layers are this one loop. ``audit`` (B,) bool: those rows
    keep their early answer but stay in the batch to the last layer (the forward pass already done
    is reused), whose answer goes to ``full_probs``.
    """
    size = state.hidden.size(0)
    device = state.hidden.device
    active = torch.arange(size, device=device)
    policy_state = policy.init_state(size, device)
    exit_layer = torch.full((size,), num_layers, dtype=torch.long, device=device)
    answered = torch.zeros(size, dtype=torch.bool, device=device)
    audited = audit.to(device=device, dtype=torch.bool) if audit is not None else None
    probs_out: torch.Tensor | None = None
    full_out: torch.Tensor | None = None
    for index in range(num_layers):
        state, logits = step(index, state)
        probs = logits.float().softmax(-1)
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
            state = compact(state, stay)
    return ExitResult(exit_layer, probs_out, full_out)


def all_exits_loop(state: LayerState, step: LayerStep, num_layers: int) -> torch.Tensor:
    """Probabilities of every exit, (B, M, K), through a runtime's ``step``."""
    out = []
    for index in range(num_layers):
        state, logits = step(index, state)
        out.append(logits.float().softmax(-1))
    return torch.stack(out, dim=1)


def torch_step(backbone: Backbone, heads: nn.ModuleList) -> LayerStep:
    """The torch runtime's layer step: the backbone layer, then its exit head."""

    def step(index: int, state: LayerState) -> tuple[LayerState, torch.Tensor]:
        state = backbone.run_layer(index, state)
        return state, heads[index](backbone.features(index, state))

    return step


@torch.inference_mode()
def run_early_exit(
    backbone: Backbone,
    heads: nn.ModuleList,
    batch: dict[str, torch.Tensor],
    policy: ExitPolicy,
    autocast_dtype: torch.dtype | None = None,
    audit: torch.Tensor | None = None,
) -> ExitResult:
    """Run one batch layer by layer in torch, letting rows leave as soon as ``policy`` says so (``audit``: see
    ``early_exit_loop``)."""
    device = next(iter(batch.values())).device
    with autocast_context(device, autocast_dtype):
        state = backbone.embed(batch)
        return early_exit_loop(state, torch_step(backbone, heads), backbone.num_layers, policy, audit)


@torch.inference_mode()
def run_all_exits(
    backbone: Backbone, heads: nn.ModuleList, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Probabilities of every exit, (B, M, K): full depth, for evaluation and calibration."""
    device = next(iter(batch.values())).device
    with autocast_context(device, autocast_dtype):
        features = backbone(batch)
        return torch.stack([head(f).float().softmax(-1) for head, f in zip(heads, features)], dim=1)


def length_buckets(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early).

    ``max_tokens``: a token budget; a batch also ends before its padded size (rows x its longest
    row) would pass it, so short inputs travel in larger batches than long ones. ``batch_size``
    still caps the rows per batch; an input longer than the budget is a batch of its own.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_tokens is None:
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
        return
    batch: list[int] = []
    for index in order:
        # Longest first: the batch's first row sets its padded width.
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[batch[0]] > max_tokens):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch
