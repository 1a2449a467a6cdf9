"""How steady is a measured wall-clock speed-up on a shared machine? Whole runs vs batch-paired timing.

The old ``evaluate`` timing ran each policy over all inputs, interleaved, best of --repeats: load
that comes and goes within seconds lands on whichever whole run it overlaps, so one policy can be
timed busy and the other quiet. ``evaluation.time_policies`` now pairs policies bucket by bucket
(rotating order, per-bucket minimum). This runs both methods --trials times, on a quiet machine
and under busy processes that switch on and off (--busy, --on, --off), and prints the spread of
the wall-clock speed-up each method reports.

    python -m benchmarks.timing_noise runs/ddi3_minilm --data runs/ddi3/dev.jsonl --docs 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from epee_annotate import MultiExitModel
from epee_annotate.cli.common import add_policy_arguments, policy_from_args
from epee_annotate.evaluation import time_policies
from epee_annotate.policies import ExitPolicy, full_depth

from .machine_load import busy_processes
from .profile_engine import add_checkpoint_data_arguments, load_inputs


def whole_run_speedup(model: MultiExitModel, inputs: list[Any], policy: ExitPolicy, batch_size: int,
                      repeats: int) -> float:
    """The previous method: whole ``predict`` runs, policies interleaved, best of ``repeats``."""
    best = {"full": float("inf"), "policy": float("inf")}
    for _ in range(repeats):
        for name, p in (("full", full_depth()), ("policy", policy)):
            start = time.perf_counter()
            model.predict(inputs, policy=p, batch_size=batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    return best["full"] / best["policy"]


def paired_speedup(model: MultiExitModel, inputs: list[Any], policy: ExitPolicy, batch_size: int,
                   repeats: int) -> float:
    return time_policies(model, inputs, {"policy": policy}, batch_size=batch_size, repeats=repeats)["policy"]["wall_speedup"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Spread of measured speed-ups: whole runs vs batch-paired timing")
    add_checkpoint_data_arguments(parser, docs=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--busy", type=int, default=1, help="busy processes in the loaded condition")
    parser.add_argument("--on", type=float, default=1.0, help="seconds each busy process spins before a pause")
    parser.add_argument("--off", type=float, default=1.0, help="mean seconds of a pause")
    add_policy_arguments(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = MultiExitModel.from_pretrained(args.checkpoint)
    inputs = load_inputs(args, model)
    policy = policy_from_args(args) or model.default_policy
    exits = [p.exit_layer for p in model.predict(inputs, policy=policy, batch_size=args.batch_size)]
    print(f"{len(inputs)} inputs, {policy.describe()}, layer speed-up {model.num_layers * len(exits) / sum(exits):.2f}, "
          f"torch threads {args.threads}, {args.trials} trials, best of {args.repeats} in each")
    methods = {"whole runs": whole_run_speedup, "batch-paired": paired_speedup}
    conditions = {"quiet": 0, f"{args.busy} busy on/off {args.on}/{args.off} s": args.busy}
    for condition, busy in conditions.items():
        values: dict[str, list[float]] = {name: [] for name in methods}
        with busy_processes(busy, on_s=args.on, off_s=args.off):
            for _ in range(args.trials):
                for name, method in methods.items():
                    values[name].append(method(model, inputs, policy, args.batch_size, args.repeats))
        for name, v in values.items():
            print(f"{condition:32s} {name:13s} wall speed-up median {statistics.median(v):.2f}, "
                  f"range {min(v):.2f}-{max(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
