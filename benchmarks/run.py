"""Accuracy, speed-up and throughput of early exit against full depth and the usual alternatives.

One run, same inputs for every method:

- full depth (the multi-exit model's last exit), EPEE at the checkpoint's calibrated setting,
  entropy-only and patience-only at the settings whose speed-up on the calibration part is
  closest to EPEE's, budgeted mode at the layer closest to the same speed-up;
- BEEM (weighted expert confidences) at the threshold whose calibration speed-up is closest to EPEE's;
- int8: the same engine with the backbone's Linear layers dynamically quantized
  (``model.quantize_dynamic()``), full depth and EPEE at the calibrated setting, quality measured
  on the int8 model's own exit table;
- the baseline a user would otherwise run: a plain Hugging Face ``pipeline("text-classification")``
  over the same fine-tuned backbone with only the last classifier (text), or the model's own
  full forward + last head (relations, images), and for text the same checkpoint's full depth
  in ONNX Runtime, fp32 and dynamic int8 (skipped without the ``onnx`` extra);
- early exit inside ONNX Runtime (``runtime="onnx-int8"``: one int8 graph per layer, the same
  policy loop and compaction), full depth and EPEE, quality from its own exit table; the goal
  lines compare EPEE on it with ONNX Runtime int8 at full depth and, where a goal is missed,
  print where the time goes (``benchmarks.profile_engine``);
- batch size 1 (mean and p95 latency) and batched throughput (sum of each length bucket's fastest
  run, with the repeats' spread), warm-up excluded; methods alternate bucket by bucket so load
  drift hits all alike;
- layer speed-up (EPEE paper Eq. 5, as M / mean exit layer) next to the measured wall-clock
  speed-up over full depth *of the same runtime* (torch fp32, torch int8, per-layer ONNX int8),
  and their ratio.

    python -m benchmarks.run [--phee runs/phee_minilm] [--ddi runs/ddi_minilm] [--ddi3 runs/ddi3_minilm]
        [--vit runs/pneumonia_vit] [--only PHEE,...]

Writes results.{json,md,png} under --out (default runs/benchmarks/, ignored by git) and prints
the tables; it never edits tracked files unless asked: --update-readme also writes the published
copy in benchmarks/results/ and rewrites the README's results section. A task this run skips (no
checkpoint, or not in --only) keeps its rows from the previous results.json (--out's, else the
published one), marked with the run they came from.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from epee_annotate import BudgetedExit, EntropyExit, MultiExitModel, PatienceExit
from epee_annotate.calibration import split_examples
from epee_annotate.data import split_by_group
from epee_annotate.data.load import load_examples
from epee_annotate.evaluation import ExitTable, checkpoint_metric, find_negative_label, resolve_metric
from epee_annotate.policies import ExitPolicy, beem_grid
from epee_annotate.timing import time_paired

from epee_annotate.runtimes import onnx_engine

from . import onnx_runtime

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"  # the published (tracked) copy: written only with --update-readme
DEFAULT_OUT = ROOT / "runs" / "benchmarks"
README = ROOT / "README.md"
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


@dataclass
class Task:
    name: str
    checkpoint: Path
    data: Path
    format: str
    split: str | None = None
    options: dict | None = None


# ----- baselines ---------------------------------------------------------------------------------
def hf_text_pipeline(model: MultiExitModel):
    """The same fine-tuned backbone as a stock HF sequence classifier: BERT pooler + classifier = last exit head."""
    from transformers import AutoModelForSequenceClassification, pipeline

    config = model.backbone.config.__class__.from_dict(model.backbone.config.to_dict())
    config.num_labels = len(model.labels)
    config.id2label = dict(enumerate(model.labels))
    config.label2id = {label: i for i, label in enumerate(model.labels)}
    hf = AutoModelForSequenceClassification.from_config(config).eval()
    base = getattr(hf, hf.base_model_prefix)
    missing, _ = base.load_state_dict(model.backbone.model.state_dict(), strict=False)
    head = model.heads[-1]
    with torch.no_grad():
        base.pooler.dense.load_state_dict(head.dense.state_dict())
        hf.classifier.load_state_dict(head.classifier.state_dict())
    assert all(k.startswith("pooler.") for k in missing), missing
    return pipeline("text-classification", model=hf, tokenizer=model.preprocessor, device=-1)


def check_pipeline_matches(model: MultiExitModel, pipe, texts: Sequence[str]) -> float:
    """Max |prob difference| between the HF pipeline and our last exit (should be ~0)."""
    ours = model.predict(list(texts), policy=BudgetedExit(0))
    theirs = pipe(list(texts), top_k=None, truncation=True, max_length=model.encoder.max_length)
    diffs = []
    for p, t in zip(ours, theirs):
        scores = {d["label"]: d["score"] for d in t}
        diffs.append(max(abs(p.probs[i] - scores[label]) for i, label in enumerate(model.labels)))
    return float(max(diffs))


def own_forward(model: MultiExitModel) -> Callable[[Sequence[Any], int], None]:
    """The backbone's own HF forward over full depth, then the last exit head."""

    @torch.inference_mode()
    def run(inputs: Sequence[Any], batch_size: int) -> None:
        rows = model.encode(inputs)
        for group in model.batches(rows, batch_size):
            batch = model.collate([rows[i] for i in group])
            if model.task == "image":
                hidden = model.backbone.model(pixel_values=batch["pixel_values"]).last_hidden_state
            else:
                hidden = model.backbone.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state
            if model.backbone.mean_pooling:
                weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1)
            else:
                index = batch["pool_index"].unsqueeze(-1).expand(-1, -1, hidden.size(-1))
                pooled = hidden.gather(1, index).flatten(1)
            model.heads[-1](pooled).softmax(-1)

    return run


# ----- timing ------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(runners: dict[str, Callable[[Sequence[Any], int], Any]], inputs: Sequence[Any], single: int,
            batch_size: int, repeats: int, buckets: Sequence[Sequence[int]]) -> dict[str, dict[str, float]]:
    """Batch-size-1 latency over ``single`` inputs and batched throughput over all, methods interleaved.

    Batched timing is paired bucket by bucket (``timing.time_paired``); the spread comes from each
    repeat's total.
    """
    for run in runners.values():  # warm-up
        run(inputs[:batch_size], batch_size)
        if single:
            run(inputs[:1], 1)
    latency: dict[str, list[float]] = {name: [] for name in runners}
    for item in inputs[:single]:
        for name, run in runners.items():
            latency[name].append(timed(lambda: run([item], 1)))
    times = time_paired({name: (lambda bucket, run=run: run([inputs[i] for i in bucket], batch_size))
                         for name, run in runners.items()}, buckets, repeats)
    out = {}
    for name in runners:
        seconds = times[name].seconds
        out[name] = {
            "bs1_mean_ms": 1e3 * float(np.mean(latency[name])) if single else None,
            "bs1_p95_ms": 1e3 * float(np.percentile(latency[name], 95)) if single else None,
            "throughput": len(inputs) / seconds,
            "throughput_min": len(inputs) / max(times[name].repeat_seconds),
            "throughput_max": len(inputs) / min(times[name].repeat_seconds),
        }
    return out


# ----- one task ----------------------------------------------------------------------------------
def closest(table: ExitTable, policies: Sequence[ExitPolicy], speedup: float) -> ExitPolicy:
    return min(policies, key=lambda p: abs(table.evaluate(p)["speedup"] - speedup))


def run_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    model = MultiExitModel.from_pretrained(task.checkpoint)
    # Re-create exactly the calibration / report halves that `epee-annotate calibrate` used.
    record = (model.config.calibration or {}).get("data", {})
    examples = load_examples(task.data, task.format, model.task, split=task.split, **(task.options or {}))
    if record.get("holdout"):
        examples = split_by_group(examples, record["holdout"]["dev_fraction"], record["holdout"]["dev_seed"])[1]
    calib, report = split_examples(examples, float(record.get("fraction") or 0.5), int(record.get("seed") or 0))
    negative = find_negative_label(model.labels) if model.task == "relation" else None
    print(f"[{task.name}] {len(calib)} calibration / {len(report)} report examples, policy {model.default_policy.describe()}")
    calib_table = ExitTable.from_model(model, [e.input for e in calib], [e.label for e in calib], negative_label=negative)
    table = ExitTable.from_model(model, [e.input for e in report], [e.label for e in report], negative_label=negative)

    epee = model.default_policy
    target = calib_table.evaluate(epee)["speedup"]
    layers = model.num_layers
    methods: dict[str, ExitPolicy] = {
        "full depth (last exit)": BudgetedExit(0),
        f"EPEE calibrated {epee.describe()}": epee,
        "entropy-only": closest(calib_table, [EntropyExit(t) for t in np.linspace(0.01, 0.99, 99).round(2)], target),
        "patience-only": closest(calib_table, [PatienceExit(p) for p in range(1, layers + 1)], target),
        "budgeted": BudgetedExit(max(1, min(layers, round(layers / target)))),
        "BEEM": closest(calib_table, beem_grid(layers), target),
    }
    metric = resolve_metric("auto", table, checkpoint_metric(model))  # the checkpoint's metric, reported first
    rows = {name: table.evaluate(policy) for name, policy in methods.items()}
    full_quality = rows["full depth (last exit)"]

    inputs = [e.input for e in report][: args.docs]
    runners: dict[str, Callable] = {
        name: (lambda batch, bs, policy=policy: model.predict(batch, policy=policy, batch_size=bs))
        for name, policy in methods.items()
    }
    runners["own HF forward + last head"] = own_forward(model)
    quality: dict[str, dict[str, Any]] = {"own HF forward + last head": full_quality}

    # int8: the same engine, backbone Linear layers dynamically quantized; quality from its own exit table.
    int8 = copy.deepcopy(model).quantize_dynamic()
    int8_table = ExitTable.from_model(int8, [e.input for e in report], [e.label for e in report], negative_label=negative)
    for name, policy in (("full depth int8 (torch dynamic)", BudgetedExit(0)), (f"EPEE int8 {epee.describe()}", epee)):
        quality[name] = int8_table.evaluate(policy)
        runners[name] = lambda batch, bs, policy=policy: int8.predict(batch, policy=policy, batch_size=bs)

    onnx_int8 = None
    if onnx_engine.available():
        # Early exit inside ONNX Runtime: int8 layer graphs, same policy loop; quality from its own exit table.
        onnx_int8 = MultiExitModel.from_pretrained(task.checkpoint).use_runtime("onnx-int8")
        onnx_table = ExitTable.from_model(onnx_int8, [e.input for e in report], [e.label for e in report],
                                          negative_label=negative)
        for name, policy in ((ONNX_FULL, BudgetedExit(0)), (f"{ONNX_EPEE} {epee.describe()}", epee)):
            quality[name] = onnx_table.evaluate(policy)
            runners[name] = lambda batch, bs, policy=policy: onnx_int8.predict(batch, policy=policy, batch_size=bs)
    if model.task != "image" and onnx_runtime.available():
        export_dir = Path(tempfile.mkdtemp(prefix="epee_onnx_"))
        for kind, path in onnx_runtime.export(model, export_dir).items():
            name = f"ONNX Runtime {kind} (full depth)"
            runners[name] = onnx_runtime.runner(model, onnx_runtime.session(path))
            probs = onnx_runtime.last_exit_probs(runners[name], [e.input for e in report], args.batch_size, model)
            predicted = torch.from_numpy(probs).argmax(-1)
            quality[name] = {**table.metrics(predicted), "speedup": 1.0, "mean_exit_layer": float(layers)}
    elif model.task != "image":
        print(f"[{task.name}] ONNX Runtime rows skipped: install the onnx extra (pip install 'epee-annotate[onnx]')")
    pipeline_note = ""
    if model.task == "text" and model.config.model_type == "bert":
        pipe = hf_text_pipeline(model)
        diff = check_pipeline_matches(model, pipe, inputs[:32])
        print(f"[{task.name}] HF pipeline vs last exit, max |prob diff| = {diff:.2e}")
        max_length = model.encoder.max_length
        runners["HF pipeline"] = lambda batch, bs: pipe(list(batch), batch_size=bs, truncation=True, max_length=max_length)
        if model.backbone.mean_pooling:
            # A stock sequence classifier pools [CLS]; this model mean-pools, so only the timing compares.
            pipeline_note = "HF pipeline: stock BertForSequenceClassification (CLS pooler), timing only"
    buckets = model.batches(model.encode(inputs), args.batch_size)
    timing = measure(runners, inputs, min(args.single, len(inputs)), args.batch_size, args.repeats, buckets)

    quality.update(rows)
    results = []
    for name, t in timing.items():
        scores = quality.get(name, {})  # the HF pipeline (CLS pooler) has no comparable quality
        layer_speedup = scores.get("speedup", 1.0)
        reference = same_runtime_full_depth(name)
        full = timing[reference]
        wall_bs1 = full["bs1_mean_ms"] / t["bs1_mean_ms"] if t["bs1_mean_ms"] else None
        wall_batched = t["throughput"] / full["throughput"]
        results.append({
            "task": task.name, "method": name, "policy": methods[name].describe() if name in methods else None,
            "versus": reference,
            "accuracy": scores.get("accuracy"), "macro_f1": scores.get("macro_f1"),
            **({"micro_f1_positive": scores.get("micro_f1_positive")} if negative else {}),
            "metric": metric, "mean_exit_layer": scores.get("mean_exit_layer", float(layers)),
            "layer_speedup": layer_speedup,
            "wall_speedup_bs1": wall_bs1, "ratio_bs1": wall_bs1 / layer_speedup if wall_bs1 else None,
            "wall_speedup_batched": wall_batched, "ratio_batched": wall_batched / layer_speedup,
            **t,
        })
    goals = check_goals(task.name, results)
    breakdown = None
    if onnx_int8 is not None and any(not g["met"] for g in goals):
        breakdown = time_breakdown(onnx_int8, inputs, epee, args.batch_size, args.repeats)
    return {"task": task.name, "checkpoint": str(task.checkpoint), "checkpoint_id": model.checkpoint_id,
            "note": pipeline_note, "versus_fastest_full_depth": versus_fastest_full_depth(results),
            "goals": goals, "breakdown": breakdown,
            "report_examples": len(report), "timed_examples": len(inputs), "rows": results}


ONNX_FULL = "full depth onnx-int8 (per-layer ONNX Runtime)"
ONNX_EPEE = "EPEE onnx-int8"
ORT_INT8_FULL = "ONNX Runtime int8 (full depth)"
# Goals of issue 22: EPEE on per-layer ONNX Runtime int8 against ONNX Runtime int8 at full depth.
SPEED_GOALS = {"PHEE": 2.0, "DDI sentences, 3 classes": 1.5}
QUALITY_GOALS = {"PHEE": {"accuracy": -0.005, "macro_f1": -0.01}}
MIN_RATIO = 0.9


def same_runtime_full_depth(method: str) -> str:
    """The full-depth row of the runtime a method runs on: its wall speed-up is measured against it."""
    if method.startswith(ONNX_EPEE) or method == ONNX_FULL:
        return ONNX_FULL
    if "int8" in method and not method.startswith("ONNX Runtime"):
        return "full depth int8 (torch dynamic)"
    return "full depth (last exit)"


def check_goals(task: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal that applies to ``task`` with its measured figure, its target and whether it is met."""
    by_name = {r["method"]: r for r in rows}
    goals = []
    epee = next((r for r in rows if r["method"].startswith(ONNX_EPEE)), None)
    speed = next((v for k, v in SPEED_GOALS.items() if task.startswith(k)), None)
    if epee is not None and speed is not None and ORT_INT8_FULL in by_name:
        ratio = epee["throughput"] / by_name[ORT_INT8_FULL]["throughput"]
        goals.append({"goal": f"{epee['method']} / {ORT_INT8_FULL}, batched throughput", "value": ratio,
                      "target": speed, "met": ratio >= speed, "kind": "ratio"})
        fp32 = by_name["full depth (last exit)"]
        for metric, floor in next((v for k, v in QUALITY_GOALS.items() if task.startswith(k)), {}).items():
            change = epee[metric] - fp32[metric]
            goals.append({"goal": f"{epee['method']} {metric} - fp32 last exit", "value": change, "target": floor,
                          "met": change >= floor, "kind": "change"})
    for r in rows:
        if r["method"].startswith(("EPEE", ONNX_EPEE)) and r["layer_speedup"] > 1.0:
            goals.append({"goal": f"{r['method']}: batched wall/layer ratio (vs {r['versus']})",
                          "value": r["ratio_batched"], "target": MIN_RATIO, "met": r["ratio_batched"] >= MIN_RATIO,
                          "kind": "ratio"})
    return goals


def time_breakdown(model: MultiExitModel, inputs: Sequence[Any], policy: ExitPolicy, batch_size: int,
                   repeats: int) -> dict[str, Any]:
    """Phase times (ms per batch) of full depth and ``policy`` on ``model``'s runtime, best of ``repeats``."""
    from .profile_engine import profile_policy

    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, p in (("full depth", BudgetedExit(0)), (policy.describe(), policy)):
            result = profile_policy(model, list(inputs), p, batch_size)
            if name not in best or result["total"] < best[name]["total"]:
                best[name] = result
    batches = len(model.batches(model.encode(list(inputs)), batch_size))
    return {"runtime": model.runtime, "batches": batches, "batch_size": batch_size,
            "runs": {name: {"ms_per_batch": {k: 1e3 * v / batches for k, v in r["phases"].items()},
                            "total_ms_per_batch": 1e3 * r["total"] / batches, "layer_calls": r["layer_calls"],
                            "layer_row_tokens": r["layer_row_tokens"], "mean_exit_layer": r["mean_exit_layer"]}
                     for name, r in best.items()}}


def versus_fastest_full_depth(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fastest early-exit row against the fastest full-depth runtime of the same run."""
    full = [r for r in rows if r["layer_speedup"] == 1.0 and r["method"] != "HF pipeline"]
    early = [r for r in rows if r["layer_speedup"] > 1.0 and r["method"].startswith(("EPEE", "BEEM"))]
    if not full or not early:
        return {}
    fastest_full = max(full, key=lambda r: r["throughput"])
    best = max(early, key=lambda r: r["throughput"])
    reference = next(r for r in rows if r["method"] == "full depth (last exit)")
    metric = reference["metric"]
    return {"early_exit": best["method"], "full_depth": fastest_full["method"],
            "throughput_ratio": best["throughput"] / fastest_full["throughput"],
            "metric_change_vs_fp32_last_exit": best[metric] - reference[metric]}


def earlier_tasks(path: Path, measured: set[str]) -> list[dict[str, Any]]:
    """Tasks of a previous results.json that this run did not measure, each marked with its run."""
    if not path.is_file():
        return []
    previous = json.loads(path.read_text())
    kept = []
    for task in previous.get("tasks", []):
        if task["task"] not in measured:
            task.setdefault("earlier_run", {"command": previous.get("command"), "machine": previous.get("machine")})
            kept.append(task)
    return kept


def earlier_memory(path: Path) -> str:
    """The previous run's actor-memory line, marked as such (it is measured by benchmarks.batch_jobs)."""
    if not path.is_file():
        return ""
    memory = json.loads(path.read_text()).get("memory", "")
    return memory if not memory or "earlier run" in memory else f"{memory} (earlier run)"


# ----- output ------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}. Command: `{results['command']}`.", ""]
    for task in results["tasks"]:
        metric = task["rows"][0]["metric"]
        earlier = task.get("earlier_run")
        source = f"; **not re-run: from an earlier run**, `{earlier['command']}`, {earlier['machine']}" if earlier else ""
        lines += [
            f"**{task['task']}** ({task['report_examples']} report examples for quality, {task['timed_examples']} timed{source})",
            "",
            f"| method | {metric} (the checkpoint's metric) | accuracy | mean exit layer | layer speed-up | bs=1 mean / p95 ms | wall speed-up bs=1 (ratio) | batched docs/s (repeats' range) | wall speed-up batched (ratio) |",
    # wall speed-ups are against the same runtime's full depth (row "versus" in results.json)
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in task["rows"]:
            quality = "n/a | n/a" if r[metric] is None else f"{r[metric]:.4f} | {r['accuracy']:.4f}"
            bs1 = "n/a | n/a" if r["bs1_mean_ms"] is None else (
                f"{r['bs1_mean_ms']:.1f} / {r['bs1_p95_ms']:.1f} | {r['wall_speedup_bs1']:.2f} ({r['ratio_bs1']:.2f})")
            lines.append(
                f"| {r['method']} | {quality} | {r['mean_exit_layer']:.2f} | "
                f"{r['layer_speedup']:.2f} | {bs1} | {r['throughput']:.1f} "
                f"({r['throughput_min']:.1f}-{r['throughput_max']:.1f}) | "
                f"{r['wall_speedup_batched']:.2f} ({r['ratio_batched']:.2f}) |"
            )
        versus = task.get("versus_fastest_full_depth")
        if versus:
            lines.append(f"\nFastest early exit ({versus['early_exit']}) vs the fastest full-depth runtime "
                         f"({versus['full_depth']}): {versus['throughput_ratio']:.2f}x batched throughput, "
                         f"{metric} {100 * versus['metric_change_vs_fp32_last_exit']:+.2f} points vs the fp32 last exit.")
        if task.get("note"):
            lines.append(f"\n{task['note']}.")
        lines += goal_lines(task)
        lines.append("")
    if results.get("memory"):
        lines.append(f"Peak resident memory of one batch-job actor at the default batch size: {results['memory']}.")
    return "\n".join(lines)


def goal_lines(task: dict[str, Any]) -> list[str]:
    """The goals with measured figure, target and met/MISSED; the time breakdown when one is missed."""
    lines = []
    for g in task.get("goals") or []:
        value, target = (f"{g['value']:+.4f}", f"{g['target']:+.4f}") if g["kind"] == "change" else \
            (f"{g['value']:.2f}", f"{g['target']:.2f}")
        lines.append(f"- {g['goal']}: {value} (target >= {target}) **{'met' if g['met'] else 'MISSED'}**")
    if lines:
        lines.insert(0, "\nGoals (issue 22):\n")
    breakdown = task.get("breakdown")
    if breakdown:
        runs = breakdown["runs"]
        phases = sorted({k for r in runs.values() for k in r["ms_per_batch"]})
        lines += ["", f"Where the time goes on runtime {breakdown['runtime']} (ms per batch of {breakdown['batch_size']}, "
                      f"{breakdown['batches']} batches, best of the repeats; 'rest' is Python overhead: collate, "
                      f"results, the loop):", "", "| phase | " + " | ".join(runs) + " |",
                  "|---|" + "---|" * len(runs)]
        for phase in phases:
            lines.append(f"| {phase} | " + " | ".join(f"{r['ms_per_batch'].get(phase, 0.0):.2f}" for r in runs.values()) + " |")
        lines.append("| total | " + " | ".join(f"{r['total_ms_per_batch']:.2f}" for r in runs.values()) + " |")
        lines.append("| layer calls | " + " | ".join(str(r["layer_calls"]) for r in runs.values()) + " |")
        lines.append("| layer row-tokens | " + " | ".join(str(r["layer_row_tokens"]) for r in runs.values()) + " |")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = task["rows"][0]["metric"]
        for r in task["rows"]:
            if r[metric] is None:
                continue
            ax.scatter(r["throughput"], r[metric], s=40)
            label = re.sub(r"\s*\w+\(.*\)$", "", r["method"])  # drop the policy's settings
            ax.annotate(label, (r["throughput"], r[metric]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("batched throughput (inputs/s)")
        ax.set_ylabel(metric)
        ax.set_title(task["task"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_readme(text: str, readme: Path = README) -> None:
    """Replace the README's results section (between ``MARKERS``); refuse a README without them."""
    content = readme.read_text()
    if MARKERS[0] not in content or MARKERS[1] not in content:
        raise ValueError(f"{readme} has no results section ({MARKERS[0]} ... {MARKERS[1]})")
    head, rest = content.split(MARKERS[0], 1)
    _, tail = rest.split(MARKERS[1], 1)
    readme.write_text(f"{head}{MARKERS[0]}\n{text}\n{MARKERS[1]}{tail}")


def write_results(results: dict[str, Any], out: Path) -> str:
    """results.{json,md,png} under ``out``; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / "results.md").write_text(text + "\n")
    if results["tasks"]:
        plot(results, out / "results.png")
    return text


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Early-exit benchmarks (see module docstring)")
    parser.add_argument("--phee", type=Path, default=ROOT / "runs" / "phee_minilm")
    parser.add_argument("--ddi", type=Path, default=ROOT / "runs" / "ddi_minilm")
    parser.add_argument("--ddi3", type=Path, default=ROOT / "runs" / "ddi3_minilm")
    parser.add_argument("--ddi3-data", type=Path, default=ROOT / "runs" / "ddi3" / "dev.jsonl",
                        help="dev part written by python -m benchmarks.ddi_sentences")
    parser.add_argument("--vit", type=Path, default=ROOT / "runs" / "pneumonia_vit")
    parser.add_argument("--only", default="", help="comma-separated task name prefixes to run (default all)")
    parser.add_argument("--phee-data", type=Path, default=SHARED / "phee" / "dev.json")
    parser.add_argument("--ddi-data", type=Path, default=SHARED / "ddi" / "Train")
    parser.add_argument("--npz", type=Path, default=SHARED / "pneumoniamnist" / "pneumoniamnist_train_val.npz")
    parser.add_argument("--docs", type=int, default=400, help="inputs timed per task")
    parser.add_argument("--single", type=int, default=200, help="inputs timed at batch size 1 (0: skip)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and ONNX Runtime threads (0: torch's default); 1 is steadier on a crowded machine")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", default="", help="peak RSS per batch-job actor, measured by benchmarks.batch_jobs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where results.{json,md,png} go (default runs/benchmarks/, ignored by git)")
    parser.add_argument("--update-readme", action="store_true",
                        help="also publish: write benchmarks/results/ and rewrite the README's results section")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tasks = [
        Task("PHEE (pharmacovigilance event type)", args.phee, args.phee_data, "phee"),
        Task("DDI 2013 (drug-drug interaction)", args.ddi, args.ddi_data, "ddi"),
        Task("DDI sentences, 3 classes (none / interaction / mechanism)", args.ddi3, args.ddi3_data, "jsonl"),
        Task("PneumoniaMNIST (chest X-ray)", args.vit, args.npz, "npz", split="val",
             options={"label_names": ["normal", "pneumonia"]}),
    ]
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {"machine": machine(), "command": command.strip(), "tasks": []}
    load_start = os.getloadavg()[0]
    only = [prefix.strip() for prefix in args.only.split(",") if prefix.strip()]
    for task in tasks:
        if only and not task.name.startswith(tuple(only)):
            continue
        if not (task.checkpoint / "epee_config.json").is_file() or not task.data.exists():
            print(f"[{task.name}] skipped: {task.checkpoint} or {task.data} is missing")
            continue
        start = time.perf_counter()
        results["tasks"].append(run_task(task, args))
        print(f"[{task.name}] done in {time.perf_counter() - start:.0f} s")
    load_end = os.getloadavg()[0]
    if max(load_start, load_end) > (os.cpu_count() or 1):
        results["machine"] += (f"; shared with other work (1-minute load average {load_start:.1f} at the start, "
                               f"{load_end:.1f} at the end)")
    previous = args.out / "results.json"
    if args.update_readme or not previous.is_file():
        previous = RESULTS / "results.json"
    results["tasks"] += earlier_tasks(previous, {t["task"] for t in results["tasks"]})
    results["memory"] = args.memory or earlier_memory(previous)
    text = write_results(results, args.out)
    if args.update_readme:
        if args.out.resolve() != RESULTS.resolve():
            write_results(results, RESULTS)
        update_readme(text + "\n\n![accuracy vs throughput](benchmarks/results/results.png)")
    print(text)
    print(f"\nresults: {args.out}" + ("; README and benchmarks/results/ updated" if args.update_readme else ""))


if __name__ == "__main__":
    main()
