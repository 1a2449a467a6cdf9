"""Export a multi-exit checkpoint to ONNX one layer at a time, cached beside the checkpoint.

Graphs (opset 17, dynamic batch and token axes):

- ``embed.onnx``: the backbone's ``embed`` (inputs -> hidden states);
- ``layer_NN.onnx``: layer NN and its exit head, ``(hidden, token_mask, pool_index) ->
  (hidden after the layer, exit logits)``. The attention mask is built inside the graph from the
  2-D token mask, so compaction between layers only ever slices 2-D masks.

Graphs that never read an input (``pool_index`` under mean pooling, masks for images) drop it;
the engine binds what each session asks for. ``int8`` graphs are the fp32 ones after
``onnxruntime.quantization.quantize_dynamic`` (8-bit MatMul weights, uint8: see ``quantize_int8``), as the full-depth ONNX
baseline in ``benchmarks.onnx_runtime``.

Cache: ``<checkpoint>/onnx/<weights sha256[:16]>-<pooling>-v<EXPORT_VERSION>/{fp32,int8}/``,
written to a temporary directory and renamed into place, so parallel workers (Ray actors) that
export at once never read half-written graphs. A read-only checkpoint directory falls back to
``$XDG_CACHE_HOME/epee_annotate/onnx/`` (default ``~/.cache``). A model that was never saved
(no weights hash) is exported to a fresh temporary directory each time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone, LayerState

if TYPE_CHECKING:
    from ..model import MultiExitModel

logger = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the graphs' inputs, outputs or contents change (2: uint8 weights)
OPSET = 17
PRECISIONS = ("fp32", "int8")


def additive_mask(token_mask: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1|T, T) additive attention mask: 0 where a query may attend, the dtype's minimum elsewhere.

    Every attention implementation (eager, sdpa) accepts an additive float mask; a finite minimum
    keeps rows without any visible key free of NaN.
    """
    keep = token_mask[:, None, None, :].bool()
    if causal:
        positions = torch.arange(token_mask.size(1), device=token_mask.device)
        keep = keep & (positions[None, :] <= positions[:, None])[None, None]
    return torch.zeros(keep.shape, dtype=dtype, device=token_mask.device).masked_fill(~keep, torch.finfo(dtype).min)


class EmbedGraph(nn.Module):
    """``backbone.embed`` as a graph: named batch tensors in, hidden states out."""

    def __init__(self, backbone: Backbone, names: list[str]):
        super().__init__()
        self.backbone, self.names = backbone, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(dict(zip(self.names, tensors))).hidden


class LayerGraph(nn.Module):
    """One backbone layer and its exit head: (hidden, [token_mask], pool_index) -> (hidden, logits)."""

    def __init__(self, backbone: Backbone, head: nn.Module, index: int):
        super().__init__()
        self.backbone, self.head, self.index = backbone, head, index

    def forward(self, hidden: torch.Tensor, pool_index: torch.Tensor, token_mask: torch.Tensor | None = None):
        attention = None if token_mask is None else additive_mask(token_mask, self.backbone.is_causal, hidden.dtype)
        extras = {}
        if self.backbone.is_causal:  # GPT-2 counts positions over real tokens (see GPT2Backbone.embed)
            extras["position_ids"] = (token_mask.cumsum(-1) - 1).clamp(min=0)
        state = self.backbone.run_layer(self.index, LayerState(hidden, attention, token_mask, pool_index, extras))
        return state.hidden, self.head(self.backbone.features(self.index, state))


def example_batch(model: "MultiExitModel") -> dict[str, torch.Tensor]:
    """A small real batch (two rows of different length) to trace the graphs with."""
    if model.task == "image":
        rows = model.encode([np.zeros((8, 8), dtype=np.uint8), np.full((8, 8), 200, dtype=np.uint8)])
    elif model.task == "relation":
        rows = model.encode([{"text": "aspirin increases the effect of warfarin", "head": (0, 7), "tail": (32, 40)},
                             {"text": "a b", "head": (0, 1), "tail": (2, 3)}])
    else:
        rows = model.encode(["aspirin increases the effect of warfarin in most patients", "a short one"])
    return {k: v.cpu() for k, v in model.encoder.collate(rows, "right").items()}


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The tracer's notes on Python-level shape checks of code paths these graphs do not take.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET,
                          dynamo=False, dynamic_axes={name: axes[name] for name in inputs + outputs})


def export_fp32(model: "MultiExitModel", directory: Path) -> None:
    """Write ``embed.onnx`` and ``layer_NN.onnx`` for every layer of ``model`` (fp32) into ``directory``."""
    backbone = model.backbone
    batch = example_batch(model)
    names = list(batch)  # the exporter drops what embed never reads (pool_index)
    axes = {"hidden": {0: "batch", 1: "tokens"}, "hidden_out": {0: "batch", 1: "tokens"}, "logits": {0: "batch"},
            "token_mask": {0: "batch", 1: "tokens"}, "pool_index": {0: "batch"},
            "input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "pixel_values": {0: "batch"}}
    directory.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = backbone.embed(batch)
        _export(EmbedGraph(backbone, names), tuple(batch[k] for k in names), directory / "embed.onnx", names, ["hidden"], axes)
        text = state.token_mask is not None
        inputs = ["hidden", "pool_index"] + (["token_mask"] if text else [])
        for index in range(model.num_layers):
            graph = LayerGraph(backbone, model.heads[index], index)
            args = (state.hidden, state.pool_index) + ((state.token_mask,) if text else ())
            _export(graph, args, directory / f"layer_{index:02d}.onnx", inputs, ["hidden_out", "logits"], axes)
            with torch.no_grad():
                state = backbone.run_layer(index, state)
    finally:
        model.train(was_training)


def quantize_int8(source: Path, directory: Path) -> None:
    """Dynamic int8 copies (``onnxruntime.quantization.quantize_dynamic``) of every graph in ``source``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process logs on the root logger once per graph
    try:
        for path in sorted(source.glob("*.onnx")):
            # uint8 weights (ORT's U8U8 kernels): the signed-weight U8S8 kernels saturate on x86 CPUs without
            # VNNI (AVX2 only, as the CI box): a tiny BERT's int8 probabilities were off by 0.24 (0.09 with
            # reduce_range and per-channel scales), against < 0.05 with uint8 weights.
            quantize_dynamic(str(path), str(directory / path.name), weight_type=QuantType.QUInt8)
    finally:
        root.setLevel(level)


def cache_key(model: "MultiExitModel") -> str | None:
    """``<weights sha256[:16]>-<pooling>-v<EXPORT_VERSION>``, or None for a model never saved."""
    digest = model.config.weights_sha256
    if not digest or model.checkpoint_dir is None:
        return None
    return f"{digest[:16]}-{model.config.pooling}-v{EXPORT_VERSION}"


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def cache_root(model: "MultiExitModel") -> Path:
    """Where exports of this checkpoint live: beside it if writable, else the user cache."""
    beside = Path(model.checkpoint_dir) / "onnx"
    if _writable(beside):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "epee_annotate" / "onnx"


def graphs(model: "MultiExitModel", precision: str) -> Path:
    """The directory of ``precision`` graphs for ``model``, exported now unless the cache has them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if model.int8:
        raise ValueError("export needs the fp32 model; this one was quantized by torch (runtime 'torch-int8')")
    key = cache_key(model)
    if key is None:
        scratch = Path(tempfile.mkdtemp(prefix="epee_onnx_"))
        _build(model, scratch)
        return scratch / precision
    final = cache_root(model) / key
    if not (final / "manifest.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        logger.info("exporting %d layer graphs of %s to %s", model.num_layers, model.checkpoint_id, final)
        _build(model, scratch)
        try:
            os.rename(scratch, final)
        except OSError:  # another process finished the same export first: use theirs
            shutil.rmtree(scratch, ignore_errors=True)
            if not (final / "manifest.json").is_file():
                raise
    return final / precision


def _build(model: "MultiExitModel", directory: Path) -> None:
    import onnx
    import onnxruntime

    export_fp32(model, directory / "fp32")
    quantize_int8(directory / "fp32", directory / "int8")
    manifest = {"export_version": EXPORT_VERSION, "checkpoint_id": model.checkpoint_id,
                "weights_sha256": model.config.weights_sha256, "model_type": model.config.model_type,
                "num_layers": model.num_layers, "pooling": model.config.pooling, "opset": OPSET,
                "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
