"""Does early exit pay off in wall-clock time? Full depth vs early exit, same inputs, one run.

Uses the offline MiniLM (6-layer BERT) multi-exit model. Its exit heads are untrained (their
answers are near-uniform, so entropy and patience rules never fire), so the early-exit setting is
budgeted mode at layers 2, 3 and 4. Trained models with mixed per-input exits are measured by
``benchmarks.run``.

    python -m benchmarks.early_exit_speed [--docs 300] [--batch-size 32] [--repeats 3]

Prints, for batch size 1 and batched: layer speed-up (M / mean exit layer), measured wall-clock
speed-up, and their ratio (1.0 = we pay exactly for the layers used).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from epee_annotate import BudgetedExit, MultiExitModel
from epee_annotate.offline import minilm_path

PHEE_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "phee" / "dev.json"


def load_sentences(count: int) -> list[str]:
    """PHEE dev sentences when ../shared is there, else synthetic clinical-style sentences."""
    if PHEE_DEV.is_file():
        lines = PHEE_DEV.read_text().splitlines()[:count]
        return [json.loads(line)["context"] for line in lines]
    rng = np.random.default_rng(0)
    words = ("patient developed severe rash after starting carbamazepine therapy for seizures and "
             "was treated with corticosteroids with complete resolution of symptoms").split()
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 60)))) for _ in range(count)]


def time_batch_size_one(model: MultiExitModel, texts: list[str], policies: list) -> tuple[list[list[float]], list[list[int]]]:
    """Per-document latency of each policy; policies alternate per document so load drift hits all alike."""
    latencies: list[list[float]] = [[] for _ in policies]
    exits: list[list[int]] = [[] for _ in policies]
    for text in texts:
        for k, policy in enumerate(policies):
            start = time.perf_counter()
            (prediction,) = model.predict([text], policy=policy, batch_size=1)
            latencies[k].append(time.perf_counter() - start)
            exits[k].append(prediction.exit_layer)
    return latencies, exits


def time_batched(model: MultiExitModel, texts: list[str], policies: list, batch_size: int, repeats: int):
    """Whole-corpus time of each policy per repeat, alternating policies within each repeat."""
    times: list[list[float]] = [[] for _ in policies]
    exits: list[list[int]] = [[] for _ in policies]
    for _ in range(repeats):
        for k, policy in enumerate(policies):
            start = time.perf_counter()
            predictions = model.predict(texts, policy=policy, batch_size=batch_size)
            times[k].append(time.perf_counter() - start)
            exits[k] = [p.exit_layer for p in predictions]
    return times, exits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    texts = load_sentences(args.docs)
    model = MultiExitModel.from_base(str(minilm_path()), task="text", labels=["a", "b", "c"], max_length=128).eval()
    layers = model.num_layers
    setups = [(f"budgeted(layer={m})", model, BudgetedExit(m)) for m in (2, 3, 4)]
    warm = texts[:20]
    for _, m, policy in setups:  # warm-up, excluded from timing
        m.predict(warm, policy=policy, batch_size=args.batch_size)
        m.predict(warm[:1], policy=policy)

    rows = []
    for name, m, policy in setups:
        full = BudgetedExit(0)
        (full_lat, early_lat), (_, exits) = time_batch_size_one(m, texts, [full, policy])
        layer_speedup = layers / float(np.mean(exits))
        wall = float(np.mean(full_lat) / np.mean(early_lat))
        rows.append({
            "setting": name, "mode": "batch size 1", "mean_exit_layer": float(np.mean(exits)),
            "layer_speedup": layer_speedup, "wall_speedup": wall, "ratio": wall / layer_speedup,
            "full_ms_mean": 1e3 * float(np.mean(full_lat)), "full_ms_p95": 1e3 * float(np.percentile(full_lat, 95)),
            "early_ms_mean": 1e3 * float(np.mean(early_lat)), "early_ms_p95": 1e3 * float(np.percentile(early_lat, 95)),
        })
        (full_times, early_times), (_, exits) = time_batched(m, texts, [full, policy], args.batch_size, args.repeats)
        layer_speedup = layers / float(np.mean(exits))
        wall = statistics.median(full_times) / statistics.median(early_times)
        rows.append({
            "setting": name, "mode": f"batched ({args.batch_size})", "mean_exit_layer": float(np.mean(exits)),
            "layer_speedup": layer_speedup, "wall_speedup": wall, "ratio": wall / layer_speedup,
            "full_docs_per_s": len(texts) / statistics.median(full_times),
            "early_docs_per_s": len(texts) / statistics.median(early_times),
            "spread_s": [min(early_times), max(early_times)],
        })

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"MiniLM-L6 multi-exit, {len(texts)} docs, {machine}")
    print("| setting | mode | mean exit layer | layer speed-up | wall-clock speed-up | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['mode']} | {r['mean_exit_layer']:.2f} | {r['layer_speedup']:.2f} | "
              f"{r['wall_speedup']:.2f} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
