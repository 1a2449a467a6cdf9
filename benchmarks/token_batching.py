"""Token-budget batching against count-based batching: same inputs, same policy, paired timing.

Count-based batches hold ``--batch-size`` inputs of similar length; token-budget batches hold as
many as fit ``--max-tokens`` padded tokens (``--cap`` rows at most), so short inputs travel in
large batches and long ones in small batches. Two input sets: the PHEE dev sentences and "long
notes" (runs of consecutive PHEE sentences joined into one note, cut at the model's max length).
Chunks of inputs are timed in turn by each method (``timing.time_paired``), and the decisions of
the two batchings are compared.

    python -m benchmarks.token_batching CHECKPOINT [--data dev.json] [--runtime onnx-int8] [--docs 400]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from epee_annotate import MultiExitModel
from epee_annotate.timing import time_paired

from .run import SHARED, machine


def long_notes(sentences: list[str], per_note: int) -> list[str]:
    return [" ".join(sentences[i : i + per_note]) for i in range(0, len(sentences), per_note)]


def main() -> None:
    parser = argparse.ArgumentParser(description="token-budget vs count-based batching")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=SHARED / "phee" / "dev.json")
    parser.add_argument("--runtime", default=None, help="torch, torch-int8, onnx, onnx-int8")
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=0, help="default: batch size x mean padded length")
    parser.add_argument("--cap", type=int, default=256, help="rows per token-budget batch at most")
    parser.add_argument("--per-note", type=int, default=6, help="sentences per long note")
    parser.add_argument("--chunk", type=int, default=100, help="inputs per paired timing unit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = MultiExitModel.from_pretrained(args.checkpoint).use_runtime(args.runtime)
    policy = model.default_policy
    sentences = [json.loads(line)["context"] for line in args.data.read_text().splitlines() if line.strip()]
    print(f"{machine()}; runtime {model.runtime}; policy {policy.describe()}")
    for name, inputs in (("PHEE sentences", sentences[: args.docs]),
                         ("long notes", long_notes(sentences, args.per_note)[: args.docs])):
        rows = model.encode(inputs)
        lengths = [r.length for r in rows]
        budget = args.max_tokens or args.batch_size * round(sum(lengths) / len(lengths))
        chunks = [list(range(i, min(i + args.chunk, len(inputs)))) for i in range(0, len(inputs), args.chunk)]
        runners = {
            f"count (batch {args.batch_size})":
                lambda chunk: model.predict([inputs[i] for i in chunk], policy, batch_size=args.batch_size),
            f"tokens (budget {budget}, cap {args.cap})":
                lambda chunk: model.predict([inputs[i] for i in chunk], policy, batch_size=args.cap, max_tokens=budget),
        }
        answers: dict[str, list] = {n: [] for n in runners}

        def record(method, chunk, predictions):
            if len(answers[method]) < len(inputs):
                answers[method] += [(p.label, p.exit_layer) for p in predictions]

        for run in runners.values():
            run(chunks[0])  # warm-up
        times = time_paired(runners, chunks, args.repeats, on_result=record)
        count_name, token_name = runners
        same = sum(a == b for a, b in zip(answers[count_name], answers[token_name]))
        print(f"\n{name}: {len(inputs)} inputs, mean {sum(lengths) / len(lengths):.0f} tokens (max {max(lengths)}); "
              f"decisions equal for {same}/{len(inputs)}")
        for method, t in times.items():
            print(f"  {method:34s} {len(inputs) / t.seconds:8.1f} docs/s")
        print(f"  token budget / count: {times[count_name].seconds / times[token_name].seconds:.2f}x")


if __name__ == "__main__":
    main()
