"""Early exit in ONNX Runtime: one session per layer graph, driven by the torch engine's own loop.

``OnnxEngine`` supplies ``embed`` and a layer ``step`` to ``engine.early_exit_loop``, so the exit
policies, the decisions and the compaction between layers are the very code the torch runtime
runs. Tensors stay torch tensors on CPU: each layer session reads the (compacted) hidden states
and masks in place and writes into preallocated buffers through IO binding, so no layer copies
through numpy. Sessions use the same options as the full-depth ONNX Runtime baseline
(``session_options``): ``threads`` intra-op threads (default torch's count), one inter-op
thread, all graph optimisations, no spinning threads. The torch glue between layers (softmax,
policy, compaction) runs on one torch thread (``single_torch_thread``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..backbones import LayerState
from ..engine import ExitResult, all_exits_loop, early_exit_loop
from ..policies import ExitPolicy
from . import onnx_export

if TYPE_CHECKING:
    from ..model import MultiExitModel

os.environ.setdefault("ORT_LOGGING_LEVEL", "3")

_NUMPY = {torch.float32: np.float32, torch.int64: np.int64}


class OnnxUnavailableError(ImportError):
    """onnx / onnxruntime are not installed."""


def available() -> bool:
    """True when onnx and onnxruntime are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def require() -> None:
    if not available():
        raise OnnxUnavailableError("the ONNX runtimes need onnx and onnxruntime: pip install 'epee-annotate[onnx]'")


def session_options(threads: int | None = None):
    """The CPU session options every ONNX Runtime path here uses (per-layer engine and full-depth baseline)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads outlive each run and slowed the next torch run in the same process 3x
    # (PHEE, batch size 1: 15 -> 50 ms); benchmarks interleave runtimes, so no spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(path: str | Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session with ``session_options(threads)`` (CPU unless ``providers`` says otherwise)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=list(providers))


@contextlib.contextmanager
def single_torch_thread():
    """torch on one thread for the duration: the glue between ONNX layers is tiny, and torch's
    OpenMP workers spin-wait after each parallel region, taking cores from ONNX Runtime's threads
    (PHEE, 2 cores: per-layer full depth ran ~15% slower with torch on 2 threads)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Buffers:
    """Two growable flat float32 buffers used in turn for layer outputs (input and output never share one)."""

    def __init__(self):
        self.flat = [torch.empty(0), torch.empty(0)]

    def output_like(self, hidden: torch.Tensor) -> torch.Tensor:
        taken = hidden.untyped_storage().data_ptr()
        slot = 1 if self.flat[0].untyped_storage().data_ptr() == taken and self.flat[0].numel() else 0
        if self.flat[slot].numel() < hidden.numel():
            self.flat[slot] = torch.empty(hidden.numel(), dtype=torch.float32)
        return self.flat[slot][: hidden.numel()].view(hidden.shape)


class OnnxEngine:
    """Per-layer ONNX Runtime sessions of one checkpoint, fp32 or int8."""

    def __init__(self, directory: Path, num_layers: int, threads: int | None = None, int8: bool = False,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        self.directory = Path(directory)
        self.int8 = int8
        self.threads = threads or torch.get_num_threads()
        # Other providers (CUDA, TensorRT: benchmarks/gpu_check.py) still read and write CPU tensors here.
        self.embed_session = make_session(self.directory / "embed.onnx", self.threads, providers)
        self.layer_sessions = [make_session(self.directory / f"layer_{i:02d}.onnx", self.threads, providers)
                               for i in range(num_layers)]
        self.embed_inputs = [i.name for i in self.embed_session.get_inputs()]
        self.layer_inputs = [[i.name for i in s.get_inputs()] for s in self.layer_sessions]
        self.bindings = [s.io_binding() for s in self.layer_sessions]
        self.num_labels = int(self.layer_sessions[0].get_outputs()[1].shape[1])
        self.buffers = _Buffers()

    @classmethod
    def for_model(cls, model: "MultiExitModel", int8: bool = False, threads: int | None = None) -> "OnnxEngine":
        """Export (or reuse the cached) layer graphs of ``model`` and open their sessions."""
        require()
        if model.device.type != "cpu":
            raise ValueError("the ONNX runtimes run on CPU; load the model with device='cpu'")
        directory = onnx_export.graphs(model, "int8" if int8 else "fp32")
        return cls(directory, model.num_layers, threads, int8)

    @property
    def name(self) -> str:
        return "onnx-int8" if self.int8 else "onnx"

    @property
    def num_layers(self) -> int:
        return len(self.layer_sessions)

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        """Hidden states after the embeddings, with the masks the layers and compaction need."""
        feeds = {name: batch[name].cpu().numpy() for name in self.embed_inputs}
        hidden = torch.from_numpy(self.embed_session.run(["hidden"], feeds)[0])
        token_mask = batch.get("attention_mask")
        token_mask = None if token_mask is None else token_mask.to(torch.int64).contiguous()
        return LayerState(hidden, None, token_mask, batch["pool_index"].to(torch.int64).contiguous())

    def step(self, index: int, state: LayerState) -> tuple[LayerState, torch.Tensor]:
        """Layer ``index`` and its exit head through IO binding: (state after the layer, exit logits)."""
        hidden = state.hidden.contiguous()
        tensors = {"hidden": hidden, "pool_index": state.pool_index, "token_mask": state.token_mask}
        binding = self.bindings[index]
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name in self.layer_inputs[index]:
            tensor = tensors[name].contiguous()  # compaction keeps them contiguous; a no-op then
            tensors[name] = tensor
            binding.bind_input(name, "cpu", 0, _NUMPY[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        out = self.buffers.output_like(hidden)
        logits = torch.empty(hidden.size(0), self.num_labels, dtype=torch.float32)
        binding.bind_output("hidden_out", "cpu", 0, np.float32, tuple(out.shape), out.data_ptr())
        binding.bind_output("logits", "cpu", 0, np.float32, tuple(logits.shape), logits.data_ptr())
        self.layer_sessions[index].run_with_iobinding(binding)
        return LayerState(out, None, state.token_mask, state.pool_index, state.extras), logits

    @torch.inference_mode()
    def run_early_exit(self, batch: dict[str, torch.Tensor], policy: ExitPolicy,
                       audit: torch.Tensor | None = None) -> ExitResult:
        """One batch with early exit: ``engine.early_exit_loop`` over this runtime's layers."""
        with single_torch_thread():
            return early_exit_loop(self.embed(batch), self.step, self.num_layers, policy, audit)

    @torch.inference_mode()
    def run_all_exits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Probabilities of every exit, (B, M, K), for evaluation and calibration."""
        with single_torch_thread():
            return all_exits_loop(self.embed(batch), self.step, self.num_layers)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "graphs": str(self.directory), "threads": self.threads}
