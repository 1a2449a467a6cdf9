"""How often does a calibrated setting break its goal on new data? A synthetic population with known truth.

A population of N inputs gets M exits over two classes, one of them rare (--rare); early exits
disagree with the last exit a little more often the earlier they are. Each run draws a
calibration sample of n inputs, calibrates for a goal with ``epee_annotate.calibration.calibrate``,
and checks the chosen setting on the whole population (its true value). The violation rate is the
share of runs whose chosen setting misses the goal there; the guarantee says <= 1 - confidence.

Only the public API of ``calibrate`` / ``CalibrationGoal`` / ``ExitTable`` is used, so the same
script measures an older checkout too: ``PYTHONPATH=/path/to/old/checkout python -m
benchmarks.calibration_coverage``. It writes nothing; it prints one table.

    python -m benchmarks.calibration_coverage --runs 150
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from epee_annotate.calibration import CalibrationGoal, calibrate
from epee_annotate.evaluation import ExitTable
from epee_annotate.policies import full_depth, simulate


def population(size: int, depth: int, rare: float, seed: int, rare_hurt: bool = False) -> ExitTable:
    """Exit probabilities of a population: exit m agrees with the last exit with a rate rising in m.

    ``rare_hurt``: early exits miss mostly the rare class (the case where a small disagreement rate
    hides a large macro-F1 drop).
    """
    rng = np.random.default_rng(seed)
    gold = (rng.random(size) < rare).astype(np.int64)
    last = np.where(rng.random(size) < 0.97, gold, 1 - gold)
    common_rate, rare_rate = ((0.995, 0.6) if rare_hurt else (0.97, 0.97))
    agree_rate = np.where(last[:, None] == 1, np.linspace(rare_rate, 1.0, depth)[None, :],
                          np.linspace(common_rate, 1.0, depth)[None, :])
    probs = np.zeros((size, depth, 2), dtype=np.float32)
    for m in range(depth):
        agree = rng.random(size) < agree_rate[:, m]
        predicted = np.where(agree, last, 1 - last)
        confidence = np.where(agree, rng.uniform(0.75, 1.0, size), rng.uniform(0.5, 0.95, size))
        probs[np.arange(size), m, predicted] = confidence
        probs[np.arange(size), m, 1 - predicted] = 1 - confidence
    return ExitTable(torch.from_numpy(probs), torch.from_numpy(gold), ["common", "rare"])


def true_loss(pop: ExitTable, policy, goal: CalibrationGoal, reference: dict) -> float:
    """The chosen setting's value of the goal's quantity on the whole population."""
    row = pop.evaluate_exits(simulate(policy, pop.probs))
    if goal.kind == "max_disagreement":
        return row["disagreement"]
    return reference[goal.metric] - row[goal.metric]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=200_000)
    parser.add_argument("--n", type=int, default=961, help="calibration examples per run (PHEE dev has 961)")
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--rare", type=float, default=0.01, help="share of the rare class")
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rare-hurt", action="store_true", help="early exits miss mostly the rare class")
    args = parser.parse_args()

    depth = 6
    pop = population(args.population, depth, args.rare, args.seed, args.rare_hurt)
    reference = pop.evaluate(full_depth())
    grid = dict(taus=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9], patiences=list(range(1, depth + 1)))
    goals = [CalibrationGoal("max_disagreement", args.target, confidence=args.confidence, guard_drop=1.0),
             CalibrationGoal("max_drop", args.target, metric="accuracy", confidence=args.confidence, guard_drop=1.0),
             CalibrationGoal("max_drop", args.target, metric="macro_f1", confidence=args.confidence, guard_drop=1.0)]
    rng = np.random.default_rng(args.seed + 1)
    print(f"population {args.population:,}, rare class {args.rare:.1%}"
          + (" (early exits miss it)" if args.rare_hurt else "") + f", {depth} exits; calibration n={args.n}; "
          f"{args.runs} runs; target {args.target}, confidence {args.confidence}")
    print(f"{'goal':<34} {'violations':>10} {'refused':>8} {'full depth':>10} {'mean speed-up':>13}")
    for goal in goals:
        violations = refused = kept_full = 0
        speedups = []
        started = time.perf_counter()
        for _ in tqdm(range(args.runs), desc=f"{goal.kind} {goal.metric}", leave=False):
            rows = torch.from_numpy(rng.integers(0, args.population, args.n))
            sample = ExitTable(pop.probs[rows], pop.gold[rows], pop.labels)
            try:
                result = calibrate(sample, goal, **grid)
            except ValueError:  # a goal this n cannot certify is refused: no setting, no violation
                refused += 1
                continue
            kept_full += result.metrics["speedup"] == 1.0
            speedups.append(result.metrics["speedup"])
            violations += true_loss(pop, result.policy, goal, reference) > goal.value + 1e-12
        chosen = args.runs - refused
        rate = f"{violations / chosen:.3f}" if chosen else "n/a"
        print(f"{goal.kind + ' ' + goal.metric:<34} {rate:>10} {refused:>8} {kept_full:>10} "
              f"{np.mean(speedups) if speedups else float('nan'):>13.3f}   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
