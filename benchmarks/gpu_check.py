"""The GPU check behind ``benchmarks/gpu_check.sh``: one table, about 5 minutes on one GPU.

Rows:

- CUDA engine decisions (label and exit layer) equal to CPU decisions, fp32 (TF32 off);
- bf16 / fp16 autocast decisions against fp32 CUDA;
- batched throughput, full depth vs the early-exit policy, for torch eager, torch.compile'd
  layers, and ONNX Runtime's CUDA / TensorRT execution providers (per-layer graphs, same policy
  loop) when onnxruntime-gpu offers them;
- the Ray batch job (``annotate-notes``) with one GPU actor (``--gpus-per-actor 1``) on --notes notes.

Without a GPU (or with --smoke) it runs a CPU fallback on a tiny random model and a few notes, so
CI keeps the script working; the GPU rows then read "skipped: no GPU". Exit status 1 when a
decision check fails.

    bash benchmarks/gpu_check.sh [--checkpoint runs/phee_minilm] [--data PHEE dev.json] [--notes 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from epee_annotate import BudgetedExit, MultiExitModel
from epee_annotate.policies import ExitPolicy
from epee_annotate.timing import time_paired

from .early_exit_speed import load_sentences

MIN_AGREEMENT = 0.99  # decision checks below this fail (fp32 CUDA vs CPU should agree on all but ties)


def decisions(model: MultiExitModel, texts: Sequence[str], policy: ExitPolicy, batch_size: int) -> list[tuple]:
    return [(p.label, p.exit_layer) for p in model.predict(list(texts), policy=policy, batch_size=batch_size)]


def agreement(a: Sequence[tuple], b: Sequence[tuple]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def throughput(runners: dict[str, Callable[[Sequence[str]], Any]], texts: Sequence[str], model: MultiExitModel,
               batch_size: int, repeats: int, synchronize: Callable[[], None]) -> dict[str, float]:
    """Docs/s of each runner over the same length buckets, paired batch by batch (``timing.time_paired``)."""
    buckets = model.batches(model.encode(list(texts)), batch_size)
    for run in runners.values():  # warm-up (and compilation)
        run([texts[i] for i in buckets[0]])
    times = time_paired({name: (lambda bucket, run=run: run([texts[i] for i in bucket])) for name, run in runners.items()},
                        buckets, repeats, synchronize=synchronize)
    return {name: len(texts) / t.seconds for name, t in times.items()}


def compiled_copy(checkpoint: Path, device: str) -> MultiExitModel:
    """The model with every transformer layer wrapped in ``torch.compile(dynamic=True)``."""
    model = MultiExitModel.from_pretrained(checkpoint, device=device)
    layers = model.backbone.layers
    for index in range(len(layers)):
        layers[index] = torch.compile(layers[index], dynamic=True)
    return model


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in onnxruntime.get_available_providers()]


def ray_job(checkpoint: Path, texts: Sequence[str], gpus: float, policy: ExitPolicy, work: Path) -> dict[str, Any]:
    """annotate-notes on ``texts`` with one actor (``gpus`` GPUs) and ``policy``; the job's summary."""
    from epee_annotate.pipelines.jobs import JobOptions, NotesJob, run_notes_job
    from epee_annotate.pipelines.notes import PipelineSource
    from epee_annotate.pipelines.runtime import ActorSettings

    notes = work / "notes.jsonl"
    notes.write_text("".join(json.dumps({"id": f"n{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    budget = policy.layer if isinstance(policy, BudgetedExit) else None  # else the checkpoint's own (calibrated) policy
    options = JobOptions(out=str(work / "out"), actors=ActorSettings(1, 1.0, gpus),
                         policy={} if budget is None else {"budget": budget}, progress=False, verbose=False)
    return run_notes_job(NotesJob(inputs=[str(notes)], source=PipelineSource(checkpoint=str(checkpoint), scope="doc"),
                                  options=options))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU check: decisions, autocast, throughput, Ray GPU actor")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained checkpoint (default: the offline MiniLM with untrained heads, budgeted policy)")
    parser.add_argument("--data", type=Path, default=None, help="PHEE JSON lines (default: ../shared PHEE dev)")
    parser.add_argument("--docs", type=int, default=2000, help="inputs for the decision and throughput checks")
    parser.add_argument("--notes", type=int, default=2000, help="notes for the Ray GPU actor job")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="the CPU fallback even when a GPU is present")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available() and not args.smoke
    work = Path(tempfile.mkdtemp(prefix="epee_gpu_check_"))
    rows: list[tuple[str, str, str]] = []
    failed = False
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        checkpoint = args.checkpoint or _minilm_checkpoint(work)
        texts = _texts(args.data, args.docs)
        notes, device, repeats = _texts(args.data, args.notes), "cuda", args.repeats
        machine = torch.cuda.get_device_name(0)
    else:
        from epee_annotate.testing import tiny_model

        checkpoint = work / "tiny"
        tiny_model("bert", work / "tiny_base").save_pretrained(checkpoint)
        texts = _texts(None, 64)
        notes, device, repeats = texts[:40], "cpu", 1
        machine = "CPU fallback (no GPU): tiny random BERT"
    cpu_model = MultiExitModel.from_pretrained(checkpoint)
    policy = cpu_model.default_policy
    if policy == BudgetedExit(0):  # untrained or uncalibrated: exit half way, so early exit has work to do
        policy = BudgetedExit(max(1, cpu_model.num_layers // 2))
    print(f"{machine}; checkpoint {cpu_model.checkpoint_id}; policy {policy.describe()}; {len(texts)} inputs",
          flush=True)

    reference = decisions(cpu_model, texts, policy, args.batch_size)
    if gpu:
        cuda_model = MultiExitModel.from_pretrained(checkpoint, device="cuda")
        cuda_fp32 = decisions(cuda_model, texts, policy, args.batch_size)
        share = agreement(cuda_fp32, reference)
        failed |= share < MIN_AGREEMENT
        rows.append(("CUDA decisions == CPU (fp32)", f"{share:.4f}", "PASS" if share >= MIN_AGREEMENT else "FAIL"))
        for mode in ("bf16", "fp16"):
            cuda_model.use_autocast(mode)
            share = agreement(decisions(cuda_model, texts, policy, args.batch_size), cuda_fp32)
            rows.append((f"autocast {mode} decisions == fp32 CUDA", f"{share:.4f}", "agreement (not a pass/fail)"))
        cuda_model.use_autocast(None)
    else:
        rows += [("CUDA decisions == CPU (fp32)", "skipped", "no GPU"),
                 ("autocast bf16/fp16 decisions", "skipped", "no GPU")]

    model = cuda_model if gpu else cpu_model
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    runners: dict[str, Callable] = {
        "torch eager, full depth": lambda b: model.predict(b, policy=BudgetedExit(0), batch_size=args.batch_size),
        "torch eager, early exit": lambda b: model.predict(b, policy=policy, batch_size=args.batch_size),
    }
    notes_on_skips = []
    if gpu:
        try:
            compiled = compiled_copy(checkpoint, device)
            runners["torch.compile, full depth"] = lambda b: compiled.predict(b, BudgetedExit(0), args.batch_size)
            runners["torch.compile, early exit"] = lambda b: compiled.predict(b, policy, args.batch_size)
        except Exception as error:  # a check script reports what does not work rather than stopping
            notes_on_skips.append(("torch.compile", "skipped", f"{type(error).__name__}: {error}"[:80]))
    providers = ort_providers() if gpu else (["CPUExecutionProvider"] if _onnx() else [])
    for provider in providers:
        from epee_annotate.runtimes import onnx_export
        from epee_annotate.runtimes.onnx_engine import OnnxEngine

        engine_model = MultiExitModel.from_pretrained(checkpoint)
        engine_model.runtime_engine = OnnxEngine(onnx_export.graphs(engine_model, "fp32"), engine_model.num_layers,
                                                 providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))
        short = provider.replace("ExecutionProvider", "")
        runners[f"ORT {short} per-layer, full depth"] = \
            lambda b, m=engine_model: m.predict(b, BudgetedExit(0), args.batch_size)
        runners[f"ORT {short} per-layer, early exit"] = lambda b, m=engine_model: m.predict(b, policy, args.batch_size)
    if gpu and not providers:
        notes_on_skips.append(("ORT CUDA/TensorRT", "skipped", "onnxruntime-gpu not installed"))
    speed = throughput(runners, texts, model, args.batch_size, repeats, sync)
    for name, docs_per_s in speed.items():
        detail = ""
        if name.endswith("early exit"):
            full = speed[name.replace("early exit", "full depth")]
            detail = f"{docs_per_s / full:.2f}x its full depth"
        rows.append((f"throughput {name}", f"{docs_per_s:.1f} docs/s", detail))
    rows += notes_on_skips

    start = time.perf_counter()
    try:
        summary = ray_job(checkpoint, notes, 1.0 if gpu else 0.0, policy, work)
        ok = summary["rows_per_status"].get("ok", 0)
        failed |= ok != len(notes)
        rows.append((f"Ray job, {'1 GPU' if gpu else 'CPU'} actor, {len(notes)} notes",
                     f"{summary['throughput']['docs_per_s']:.1f} notes/s",
                     f"{ok}/{len(notes)} ok, layer speed-up {summary['layer_speedup']}, "
                     f"{time.perf_counter() - start:.0f} s with Ray start"))
    except Exception as error:
        failed = True
        rows.append((f"Ray job, {'1 GPU' if gpu else 'CPU'} actor", "FAIL", f"{type(error).__name__}: {error}"[:100]))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':{width}s} | {'result':>18s} | detail")
    print(f"{'-' * width}-|-{'-' * 18}-|-------")
    for check, result, detail in rows:
        print(f"{check:{width}s} | {result:>18s} | {detail}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 1 if failed else 0


def _onnx() -> bool:
    from epee_annotate.runtimes.onnx_engine import available

    return available()


def _texts(data: Path | None, count: int) -> list[str]:
    if data is not None:
        lines = [json.loads(line)["context"] for line in data.read_text().splitlines() if line.strip()]
    else:
        lines = load_sentences(count)
    return [lines[i % len(lines)] for i in range(count)]


def _minilm_checkpoint(work: Path) -> Path:
    """The offline MiniLM with untrained heads, saved (the jobs load checkpoints from disk)."""
    from epee_annotate.offline import resolve_base

    model = MultiExitModel.from_base(resolve_base("offline:minilm"), task="text", labels=["a", "b"], max_length=128)
    model.save_pretrained(work / "minilm")
    return work / "minilm"


if __name__ == "__main__":
    sys.exit(main())
