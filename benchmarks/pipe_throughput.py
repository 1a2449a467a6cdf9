"""Docs/second through ``nlp.pipe`` with EPEE early exit vs full depth, same pipeline, one run.

    python -m benchmarks.pipe_throughput --pv runs/phee_minilm --ddi runs/ddi_minilm
        [--docs 300] [--pipe-batch 64] [--batch-size 32] [--repeats 3] [--threads N] [--out result.json]

- PV events (``epee_pv_event``): PHEE dev sentences, one sentence per doc.
- DDI (``epee_ddi``): DDI 2013 train sentences with at least two entities; the corpus' entity
  spans are set as ``doc.ents`` (gold mentions, so only the EPEE component is measured, not a
  matcher), every pair within the sentence is classified.

Early exit uses the checkpoint's default policy when it has been calibrated, else
EPEE(entropy=0.3, patience=2); the baseline is BudgetedExit(0) (every input runs all layers).
Both pipelines are warmed up first; then every chunk of ``--pipe-batch`` docs goes through both,
alternating which goes first, so load from other processes on a shared machine hits both
alike. Reported: docs/second over all chunks and repeats (wall clock, and per CPU-second of
this process), mean exit layer, and how often the early-exit label equals the full-depth one. Data come from ../shared/data (read-only; never copied).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import spacy
import torch
from spacy.util import filter_spans

from epee_annotate.checkpoint import read_config
from epee_annotate.components import doc_annotations

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FALLBACK_EPEE = {"entropy": 0.3, "patience": 2}
FULL_DEPTH = {"budget": 0}


def phee_sentences(count: int) -> list[str]:
    lines = (SHARED / "phee" / "dev.json").read_text().splitlines()
    return [json.loads(line)["context"] for line in lines[:count]]


def ddi_sentences(count: int) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(text, [(start, end, TYPE)]) for sentences with two or more entities, in file order."""
    from epee_annotate.data.ddi import ddi_files, parse_offsets

    out = []
    for path in ddi_files(SHARED / "ddi" / "Train"):
        for sentence in ET.parse(path).getroot().iter("sentence"):
            entities = []
            for entity in sentence.iter("entity"):
                spans = parse_offsets(entity.get("charOffset"))
                entities.append((spans[0][0], spans[-1][1], (entity.get("type") or "drug").upper()))
            if len(entities) >= 2:
                out.append((sentence.get("text"), entities))
            if len(out) == count:
                return out
    return out


def ddi_docs(nlp, sentences) -> list:
    """Docs with the corpus entities as doc.ents (overlaps resolved by spaCy's filter_spans)."""
    docs = []
    for text, entities in sentences:
        doc = nlp.make_doc(text)
        spans = [doc.char_span(s, e, label=label, alignment_mode="expand") for s, e, label in entities]
        doc.ents = filter_spans([s for s in spans if s is not None])
        docs.append(doc)
    return docs


def early_policy(checkpoint: str) -> tuple[dict | None, str]:
    config = read_config(checkpoint)
    if config.default_policy is not None:
        return None, f"checkpoint default {config.default_policy}"
    return FALLBACK_EPEE, f"EPEE{FALLBACK_EPEE} (checkpoint has no calibrated default)"


def pipeline(factory: str, checkpoint: str, policy: dict | None, batch_size: int):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe(factory, config={"checkpoint": checkpoint, "policy": policy, "batch_size": batch_size})
    return nlp


def timed(nlp, inputs: list, pipe_batch: int) -> tuple[float, float, list]:
    """(wall seconds, process CPU seconds, docs) of one nlp.pipe pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    docs = list(nlp.pipe(inputs, batch_size=pipe_batch))
    return time.perf_counter() - wall, time.process_time() - cpu, docs


def measure(task: str, factory: str, checkpoint: str, make_inputs: Callable[[Any], list], args) -> dict[str, Any]:
    """Time both pipelines chunk by chunk, alternating which goes first, so load drift on a shared
    machine hits both alike; totals over all chunks and repeats give docs/second."""
    policy, description = early_policy(checkpoint)
    pipes = {"early_exit": pipeline(factory, checkpoint, policy, args.batch_size),
             "full_depth": pipeline(factory, checkpoint, FULL_DEPTH, args.batch_size)}
    for nlp in pipes.values():  # warm-up: model load, first-call allocations
        list(nlp.pipe(make_inputs(nlp)[: args.warmup], batch_size=args.pipe_batch))
    count = len(make_inputs(pipes["full_depth"]))
    wall = {k: 0.0 for k in pipes}
    cpu = {k: 0.0 for k in pipes}
    results: dict[str, list] = {k: [] for k in pipes}
    turn = 0
    for repeat in range(args.repeats):
        inputs = {k: make_inputs(nlp) for k, nlp in pipes.items()}  # fresh each repeat, built outside the timing
        for lo in range(0, count, args.pipe_batch):
            order = list(pipes) if turn % 2 == 0 else list(reversed(pipes))
            turn += 1
            for key in order:
                chunk = inputs[key][lo : lo + args.pipe_batch]
                seconds, cpu_seconds, docs = timed(pipes[key], chunk, args.pipe_batch)
                wall[key] += seconds
                cpu[key] += cpu_seconds
                if repeat == 0:
                    results[key] += [r for d in docs for r in doc_annotations(d)]
    early, full = results["early_exit"], results["full_depth"]
    agree = sum(a["label"] == b["label"] for a, b in zip(early, full)) / max(1, len(full))
    total_docs = count * args.repeats
    out = {
        "task": task, "checkpoint": checkpoint, "docs": count, "items": len(full), "policy": description,
        "repeats": args.repeats,
        "docs_per_s": {k: total_docs / v for k, v in wall.items()},
        "docs_per_cpu_s": {k: total_docs / v for k, v in cpu.items()},
        "mean_exit_layer": {k: statistics.mean(r["exit_layer"] for r in results[k]) if results[k] else None
                            for k in results},
        "num_layers": full[0]["num_layers"] if full else None,
        "label_agreement_with_full_depth": agree,
    }
    out["speedup"] = out["docs_per_s"]["early_exit"] / out["docs_per_s"]["full_depth"]
    out["speedup_cpu"] = out["docs_per_cpu_s"]["early_exit"] / out["docs_per_cpu_s"]["full_depth"]
    if out["mean_exit_layer"]["early_exit"]:
        out["layer_speedup"] = out["num_layers"] / out["mean_exit_layer"]["early_exit"]  # the ideal
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pv", help="PV event checkpoint (PHEE, text task)")
    parser.add_argument("--ddi", help="DDI checkpoint (relation task)")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--pipe-batch", type=int, default=64, help="docs per nlp.pipe batch")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per model forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=16, help="docs run through each pipeline before timing")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not (args.pv or args.ddi):
        parser.error("give --pv and/or --ddi")
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(), "device": "cpu"}
    results = []
    if args.pv:
        texts = phee_sentences(args.docs)
        results.append(measure("pv_event (PHEE dev sentences)", "epee_pv_event", args.pv, lambda nlp: list(texts), args))
    if args.ddi:
        sentences = ddi_sentences(args.docs)
        results.append(measure("ddi (DDI train sentences, gold mentions)", "epee_ddi", args.ddi,
                               lambda nlp: ddi_docs(nlp, sentences), args))
    report = {"environment": env, "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
