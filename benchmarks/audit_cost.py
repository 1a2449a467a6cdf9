"""What the production audit costs: the same notes through the same pipeline with and without it.

    python -m benchmarks.audit_cost [--notes 600] [--fraction 0.05] [--layer 2] [--repeats 3] [--out result.json]

A MiniLM multi-exit model (offline:minilm, 6 layers, random exit heads) classifies every sentence
with the budgeted policy at ``--layer`` (every row exits there, so the audited rows pay the most
extra layers). Three settings run alternately, ``--repeats`` times each (fastest kept):

- plain: no audit; audited: ``audit_fraction=F``; full: the same notes at full depth.

Reported: ``audited / plain`` (the audit's cost as a ratio to the same job without it) and
``(audited - plain) / (F x full)``, the extra time over what auditing F of the notes at full depth
would cost from scratch (the issue's "no more than F x full-depth cost plus a small constant"
gives <= 1 plus noise; continuing the early pass makes it smaller), by wall clock and by this
process's CPU time (steadier on a shared machine). Ratios of one run only. The audited items
continue inside their own batches: each batch holding one pays a few layer calls on a handful of
rows, a per-batch constant that is what pushes the extra above the ideal F x (full - early).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from typing import Any

import numpy as np
import spacy
import torch

import epee_annotate.components  # noqa: F401
from epee_annotate.model import MultiExitModel
from epee_annotate.offline import minilm_path

WORDS = ("patient reports nausea after the first dose of warfarin and aspirin was stopped rash improved "
         "she continues fish oil daily no history of bleeding follow up in two weeks").split()


def notes(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [". ".join(" ".join(rng.choice(WORDS, size=int(rng.integers(6, 30)))) for _ in range(int(rng.integers(2, 6))))
            + "." for _ in range(count)]


def pipeline(checkpoint: str, **config: Any):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    component = nlp.add_pipe("epee_textcat", config={"checkpoint": checkpoint, "batch_size": 32, **config})
    return nlp, component


def run(count: int, fraction: float, layer: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    texts = notes(count)
    with tempfile.TemporaryDirectory() as root:
        MultiExitModel.from_base(str(minilm_path()), labels=["a", "b", "c"]).save_pretrained(root)
        settings = {"plain": {"budget": layer, "audit_fraction": 0.0},
                    "audited": {"budget": layer, "audit_fraction": fraction},
                    "full": {"budget": 0, "audit_fraction": 0.0}}
        pipes = {name: pipeline(root, **config) for name, config in settings.items()}
        for nlp, _ in pipes.values():
            list(nlp.pipe(texts[:20], batch_size=64))  # warm-up (and model loading)
        best = {name: float("inf") for name in settings}
        cpu = {name: float("inf") for name in settings}
        for _ in range(repeats):
            for name, (nlp, _) in pipes.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                list(nlp.pipe(texts, batch_size=64))
                best[name] = min(best[name], time.perf_counter() - started)
                cpu[name] = min(cpu[name], time.process_time() - started_cpu)
        audit = pipes["audited"][1].audit
    sentences = audit.audited
    return {
        "notes": count, "fraction": fraction, "layer": layer, "num_layers": 6, "repeats": repeats,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "audited_items_all_runs": sentences,
        "audit_over_plain": round(best["audited"] / best["plain"], 4),
        "extra_over_fraction_of_full": round((best["audited"] - best["plain"]) / (fraction * best["full"]), 4),
        "cpu_audit_over_plain": round(cpu["audited"] / cpu["plain"], 4),
        "cpu_extra_over_fraction_of_full": round((cpu["audited"] - cpu["plain"]) / (fraction * cpu["full"]), 4),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=600)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run(args.notes, args.fraction, args.layer, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
