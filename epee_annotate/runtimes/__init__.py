"""Inference runtimes: the one declaration of what ``runtime=`` accepts, and applying one to a model.

- ``torch``: the torch engine (``epee_annotate.engine``), fp32 (or bf16/fp16 autocast on CUDA);
- ``torch-int8``: the same, with the backbone's Linear layers dynamically quantized to int8 (CPU);
- ``onnx``: ONNX Runtime, one graph per layer (``onnx_engine``), fp32, CPU;
- ``onnx-int8``: the same graphs dynamically quantized to int8 by ``onnxruntime.quantization``.

Every runtime runs the same exit policies through the same loop and compaction
(``engine.early_exit_loop``). Components (``runtime`` setting), the CLI (``--runtime``) and batch
jobs take their choices from ``RUNTIMES``. No heavy imports here: the CLI reads it for ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import MultiExitModel

RUNTIMES: dict[str, str] = {
    "torch": "torch, fp32 (bf16/fp16 autocast on CUDA)",
    "torch-int8": "torch, backbone Linear layers dynamically quantized to int8 (CPU)",
    "onnx": "ONNX Runtime, one graph per layer, fp32 (CPU; needs the onnx extra)",
    "onnx-int8": "ONNX Runtime, one graph per layer, dynamic int8 (CPU; needs the onnx extra)",
}
DEFAULT_RUNTIME = "torch"
RUNTIME_HELP = "inference runtime: " + "; ".join(f"{name} = {text}" for name, text in RUNTIMES.items())


class RuntimeSettingError(ValueError):
    """An unknown runtime, or one that cannot run with the other settings given."""


def check_runtime(name: str | None, device: str = "cpu", autocast: str | None = None) -> str:
    """``name`` (None = the default) if it is known and fits ``device`` and ``autocast``; else a clear error."""
    runtime = DEFAULT_RUNTIME if name is None else str(name)
    if runtime not in RUNTIMES:
        raise RuntimeSettingError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    if runtime != "torch" and not str(device).startswith("cpu"):
        raise RuntimeSettingError(f"runtime {runtime!r} runs on CPU; device {device!r} needs runtime 'torch'")
    if runtime != "torch" and autocast is not None:
        raise RuntimeSettingError(f"autocast {autocast!r} applies to runtime 'torch' on CUDA, not to {runtime!r}")
    return runtime


def apply_runtime(model: "MultiExitModel", name: str | None, threads: int | None = None) -> "MultiExitModel":
    """Make ``model`` infer with runtime ``name``, in place; returns the model.

    ONNX runtimes export (or reuse from the cache beside the checkpoint) one graph per layer.
    ``threads``: ONNX Runtime intra-op threads (default: torch's thread count, as the full-depth
    ONNX baseline in ``benchmarks.onnx_runtime``).
    """
    autocast = None if model.autocast_dtype is None else str(model.autocast_dtype)
    runtime = check_runtime(name, str(model.device), autocast)
    if runtime == "torch":
        if model.int8 or model.runtime_engine is not None:
            raise RuntimeSettingError(f"this model already runs {model.runtime!r}; load it again for runtime 'torch'")
        return model
    if runtime == "torch-int8":
        if model.runtime_engine is not None:
            raise RuntimeSettingError(f"this model already runs {model.runtime!r}; load it again for 'torch-int8'")
        return model.quantize_dynamic()
    if model.int8:
        raise RuntimeSettingError(f"runtime {runtime!r} needs the fp32 model; this one is already torch-int8")
    from .onnx_engine import OnnxEngine

    model.runtime_engine = OnnxEngine.for_model(model, int8=runtime == "onnx-int8", threads=threads)
    return model
