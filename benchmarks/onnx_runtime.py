"""Full-depth inference of a fine-tuned multi-exit checkpoint in ONNX Runtime (fp32 and dynamic int8).

The baseline a user would pick instead of early exit: the same backbone and last exit head,
exported once to ONNX (backbone forward -> the checkpoint's pooling -> last head -> softmax)
and run by ONNX Runtime on the same encoded rows and length buckets as ``model.predict``.
``int8`` applies ONNX Runtime's dynamic quantization (int8 weights of MatMul/Gemm).
Needs the ``onnx`` extra (``pip install epee-annotate[onnx]``); callers skip without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from epee_annotate.model import MultiExitModel
from epee_annotate.runtimes import onnx_engine
from epee_annotate.runtimes.onnx_export import quantize_int8


available = onnx_engine.available


class _LastExit(nn.Module):
    """Backbone forward + the checkpoint's pooling + the last head, as one traceable module."""

    def __init__(self, model: MultiExitModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
        backbone = self.model.backbone
        hidden = backbone.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if backbone.mean_pooling:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        else:
            index = pool_index.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
            pooled = hidden.gather(1, index).flatten(1)
        return self.model.heads[-1](pooled).softmax(-1)


def export(model: MultiExitModel, directory: str | Path) -> dict[str, Path]:
    """Write ``fp32.onnx`` and ``int8.onnx`` (dynamic quantization) for a text checkpoint."""
    if model.task == "image":
        raise ValueError("the ONNX baseline covers text checkpoints")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = model.encode(["aspirin increases the effect of warfarin", "a longer second example sentence here"])
    batch = model.collate(rows)
    args = (batch["input_ids"], batch["attention_mask"], batch["pool_index"])
    fp32 = directory / "fp32" / "model.onnx"
    fp32.parent.mkdir(exist_ok=True)
    wrapper = _LastExit(model).eval()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            wrapper, args, str(fp32), input_names=["input_ids", "attention_mask", "pool_index"],
            output_names=["probs"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "pool_index": {0: "batch"}, "probs": {0: "batch"}},
        )
    quantize_int8(fp32.parent, directory / "int8")  # the same quantization as the per-layer graphs
    return {"fp32": fp32, "int8": directory / "int8" / "model.onnx"}


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with the per-layer engine's options (``onnx_engine.session_options``)."""
    return onnx_engine.make_session(path, threads)


def runner(model: MultiExitModel, ort_session) -> Callable[[Sequence[Any], int], list[np.ndarray]]:
    """``run(inputs, batch_size)``: encode and bucket exactly like ``model.predict``, then run the session."""

    # The exporter drops inputs the graph never reads (pool_index under mean pooling).
    names = [i.name for i in ort_session.get_inputs()]

    def run(inputs: Sequence[Any], batch_size: int) -> list[np.ndarray]:
        rows = model.encode(inputs)
        out = []
        for group in model.batches(rows, batch_size):
            batch = model.encoder.collate([rows[i] for i in group], "right")
            feeds = {name: batch[name].numpy().astype(np.int64) for name in names}
            out.append(ort_session.run(["probs"], feeds)[0])
        return out

    return run


def last_exit_probs(run: Callable, inputs: Sequence[Any], batch_size: int, model: MultiExitModel) -> np.ndarray:
    """Probabilities in input order (for agreement checks against the torch last exit)."""
    rows = model.encode(inputs)
    groups = model.batches(rows, batch_size)
    out = np.zeros((len(inputs), len(model.labels)), dtype=np.float32)
    for group in groups:
        out[group] = run([inputs[i] for i in group], len(group))[0]
    return out

