"""Where the wall-clock time of early exit goes: full depth vs an exit policy, phase by phase.

For one checkpoint and data file it times ``model.predict`` under full depth and under the
policy (the checkpoint's calibrated one, or --entropy/--patience/--beem), interleaved and best of
--repeats, and splits each run into phases: encoding (tokenizer / image decode), transformer
layers, exit heads + policy step, compaction (select + padding trim) and the rest (collate,
results). Then torch.profiler lists the top operators of each run by self CPU time.
Layer-row-tokens (the sum over layers of rows x tokens actually computed) is what the layer
speed-up assumes the cost is proportional to; comparing it with layer time shows whether a
gap comes from overhead or from the batches' shapes.

    python -m benchmarks.profile_engine runs/ddi3_minilm --data runs/ddi3/dev.jsonl [--docs 400]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import torch

from epee_annotate import MultiExitModel
from epee_annotate import engine as engine_module
from epee_annotate.backbones import LayerState
from epee_annotate.cli.common import add_policy_arguments, policy_from_args, runtime_from_args
from epee_annotate.data.load import load_examples
from epee_annotate.policies import ExitPolicy, full_depth

from .machine_load import busy_processes


class PhaseTimer:
    """Wall-clock seconds per named phase, by wrapping the engine's building blocks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.layer_row_tokens = 0
        self.layer_calls = 0

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class TimedPolicy(ExitPolicy):
    """Delegates to a policy, timing its ``step`` (the engine only calls init_state and step)."""

    def __init__(self, policy: ExitPolicy, timer: PhaseTimer):
        self.policy, self.timer = policy, timer

    def init_state(self, batch_size, device="cpu"):
        return self.policy.init_state(batch_size, device)

    def step(self, layer, num_layers, probs, state):
        with self.timer.phase("policy step"):
            return self.policy.step(layer, num_layers, probs, state)


@contextmanager
def instrumented(model: MultiExitModel, timer: PhaseTimer):
    """Patch the backbone, heads and compaction helpers to record time per phase."""
    backbone = model.backbone
    originals = {
        "run_layer": backbone.run_layer, "features": backbone.features, "embed": backbone.embed,
        "encode": model.encode, "trim": engine_module._trim_right_padding, "select": LayerState.select,
    }
    starts: dict[int, float] = {}

    def head_start(module, args):
        starts[id(module)] = time.perf_counter()

    def head_end(module, args, output):
        timer.seconds["exit heads"] += time.perf_counter() - starts.pop(id(module))

    hooks = [h for head in model.heads for h in (head.register_forward_pre_hook(head_start),
                                                  head.register_forward_hook(head_end))]

    def run_layer(index, state):
        timer.layer_row_tokens += state.hidden.size(0) * state.hidden.size(1)
        timer.layer_calls += 1
        with timer.phase("layers"):
            return originals["run_layer"](index, state)

    def features(index, state):
        with timer.phase("pooling"):
            return originals["features"](index, state)

    def select(self, rows):
        with timer.phase("compaction"):
            return originals["select"](self, rows)

    def embed(batch):
        with timer.phase("embeddings + mask"):
            return originals["embed"](batch)

    def encode(inputs):
        with timer.phase("encode"):
            return originals["encode"](inputs)

    def trim(state):
        with timer.phase("compaction"):
            return originals["trim"](state)

    backbone.run_layer, backbone.features, backbone.embed, model.encode = run_layer, features, embed, encode
    engine_module._trim_right_padding = trim
    LayerState.select = select
    runtime = model.runtime_engine  # ONNX Runtime: its embed and layer step (layer + exit head, one session run)
    if runtime is not None:
        runtime_embed, runtime_step = runtime.embed, runtime.step

        def step(index, state):
            timer.layer_row_tokens += state.hidden.size(0) * state.hidden.size(1)
            timer.layer_calls += 1
            with timer.phase("layers + exit heads (one ONNX graph each)"):
                return runtime_step(index, state)

        def onnx_embed(batch):
            with timer.phase("embeddings + mask"):
                return runtime_embed(batch)

        runtime.embed, runtime.step = onnx_embed, step
    try:
        yield
    finally:
        if runtime is not None:
            del runtime.embed, runtime.step
        LayerState.select = originals["select"]
        for hook in hooks:
            hook.remove()
        backbone.run_layer, backbone.features, backbone.embed = (originals[k] for k in ("run_layer", "features", "embed"))
        model.encode = originals["encode"]
        engine_module._trim_right_padding = originals["trim"]
        for name in ("run_layer", "features", "embed"):
            backbone.__dict__.pop(name, None)
        model.__dict__.pop("encode", None)


def profile_policy(model: MultiExitModel, inputs: list[Any], policy: ExitPolicy, batch_size: int) -> dict[str, Any]:
    timer = PhaseTimer()
    with instrumented(model, timer):
        start, start_cpu = time.perf_counter(), time.process_time()
        predictions = model.predict(inputs, policy=TimedPolicy(policy, timer), batch_size=batch_size)
        total, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    accounted = sum(timer.seconds.values())
    return {"total": total, "cpu": cpu, "phases": dict(timer.seconds, rest=total - accounted),
            "layer_row_tokens": timer.layer_row_tokens, "layer_calls": timer.layer_calls,
            "mean_exit_layer": sum(p.exit_layer for p in predictions) / len(predictions)}


def operator_table(model: MultiExitModel, inputs: list[Any], policy: ExitPolicy, batch_size: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.predict(inputs, policy=policy, batch_size=batch_size)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def add_checkpoint_data_arguments(parser: argparse.ArgumentParser, docs: int) -> None:
    """CHECKPOINT, --data/--format/--split and --docs: the inputs these engine benchmarks run on."""
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default=None, help="default: from the file name (npz, jsonl, else phee)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--docs", type=int, default=docs)


def load_inputs(args: argparse.Namespace, model: MultiExitModel) -> list[Any]:
    """The first --docs inputs of --data, read as the model's task."""
    fmt = args.format or ("npz" if args.data.endswith(".npz") else "jsonl" if args.data.endswith(".jsonl") else "phee")
    return [e.input for e in load_examples(args.data, fmt, model.task, split=args.split)][: args.docs]


def main() -> None:
    parser = argparse.ArgumentParser(description="Phase-by-phase profile of early exit vs full depth")
    add_checkpoint_data_arguments(parser, docs=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--operators", type=int, default=15, help="rows of the torch.profiler table (0: none)")
    parser.add_argument("--int8", action="store_true", help="quantize the backbone's Linear layers first")
    parser.add_argument("--runtime", default=None, help="torch, torch-int8, onnx or onnx-int8 (epee_annotate.runtimes)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is steadier on a crowded machine")
    parser.add_argument("--busy", type=int, default=0,
                        help="start N busy-looping processes for the run, to measure a shared machine")
    add_policy_arguments(parser)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model = MultiExitModel.from_pretrained(args.checkpoint)
    model.use_runtime(runtime_from_args(args))
    inputs = load_inputs(args, model)
    policy = policy_from_args(args) or model.default_policy
    runs = {"full depth": full_depth(), policy.describe(): policy}
    with busy_processes(args.busy):
        model.predict(inputs[: args.batch_size], policy=full_depth(), batch_size=args.batch_size)  # warm-up
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeats):
            for name, p in runs.items():
                result = profile_policy(model, inputs, p, args.batch_size)
                if name not in best or result["total"] < best[name]["total"]:
                    best[name] = result
    base = best["full depth"]
    print(f"{len(inputs)} inputs, batch {args.batch_size}, best of {args.repeats}, runtime {model.runtime}, torch threads "
          f"{torch.get_num_threads()}, {args.busy} busy processes, {os.cpu_count()} cores")
    phases = sorted({k for r in best.values() for k in r["phases"]})
    print(f"{'':34s}" + "".join(f"{n[:28]:>30s}" for n in best))
    for phase in phases:
        print(f"{phase:34s}" + "".join(f"{1e3 * r['phases'].get(phase, 0):27.1f} ms" for r in best.values()))
    print(f"{'total':34s}" + "".join(f"{1e3 * r['total']:27.1f} ms" for r in best.values()))
    print(f"{'process CPU time':34s}" + "".join(f"{1e3 * r['cpu']:27.1f} ms" for r in best.values()))
    print(f"{'mean exit layer':34s}" + "".join(f"{r['mean_exit_layer']:30.2f}" for r in best.values()))
    print(f"{'layer row-tokens':34s}" + "".join(f"{r['layer_row_tokens']:30d}" for r in best.values()))
    print(f"{'layer calls':34s}" + "".join(f"{r['layer_calls']:30d}" for r in best.values()))
    for name, r in best.items():
        if r is base:
            continue
        layer_speedup = model.num_layers / r["mean_exit_layer"]
        print(f"\n{name}: layer speed-up {layer_speedup:.2f}, row-token speed-up "
              f"{base['layer_row_tokens'] / r['layer_row_tokens']:.2f}, layer-call speed-up "
              f"{base['layer_calls'] / r['layer_calls']:.2f}, layer-time speed-up "
              f"{base['phases']['layers'] / r['phases']['layers']:.2f}, wall speed-up {base['total'] / r['total']:.2f}, "
              f"CPU-time speed-up {base['cpu'] / r['cpu']:.2f}")
    if args.operators:
        for name, p in runs.items():
            print(f"\n== torch.profiler, {name} ==")
            print(operator_table(model, inputs, p, args.batch_size, args.operators))


if __name__ == "__main__":
    main()
