"""Held-out DDI figures of one checkpoint (the ablation in docs/training.md).

    python scripts/ddi_heldout_eval.py runs/ddi_minilm runs/ddi_split --dev-fraction 0.1 --dev-seed 42

Per exit: micro-F1 over the positive types on SPLIT/test and on the dev part of SPLIT/train, also with
the DDI 2013 filter rules applied at prediction time (rule-matched pairs answered "none"); and the
EPEE setting with the best dev micro-F1 among those at >= 1.5x fewer layers on dev, measured on test.
Writes CHECKPOINT/heldout_eval.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from epee_annotate.data import load_ddi, split_by_group  # noqa: E402
from epee_annotate.evaluation import ExitTable  # noqa: E402
from epee_annotate.model import MultiExitModel  # noqa: E402
from epee_annotate.policies.epee import EPEE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("split", type=Path, help="folder made by scripts/ddi_holdout.py (train/ and test/)")
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--dev-seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = MultiExitModel.from_pretrained(args.checkpoint)
    parts = {"test": load_ddi(args.split / "test"),
             "dev": split_by_group(load_ddi(args.split / "train"), args.dev_fraction, args.dev_seed)[1]}
    out, tables = {}, {}
    for name, data in parts.items():
        table = ExitTable.from_model(model, [e.input for e in data], [e.label for e in data], negative_label="none",
                                     batch_size=64)
        # The same pass with the rule-matched pairs answered "none" first, as epee_ddi does.
        ruled = ExitTable(table.probs, table.gold, table.labels, "none",
                          ruled=[bool((e.meta or {}).get("filter_rule")) for e in data])
        tables[name], tables[name + "_rules"] = table, ruled
        rows = []
        for m in range(1, table.num_layers + 1):
            at = torch.full((table.num_rows,), m)
            rows.append({"exit": m, "micro_f1_positive": table.evaluate_exits(at)["micro_f1_positive"],
                         "with_rules": ruled.evaluate_exits(at)["micro_f1_positive"]})
        out[name] = {"n": len(data), "rule_rows": ruled.rule_rows, "exits": rows}
    grid = [EPEE(entropy=i / 20, patience=p) for i in range(1, 20) for p in range(1, model.num_layers + 1)]
    out["epee_min_speedup_1.5"] = _choose(grid, tables["dev"], tables["test"])
    # The same choice made and measured with the rules (speed-up over the pairs the model answers).
    out["epee_min_speedup_1.5_with_rules"] = _choose(grid, tables["dev_rules"], tables["test_rules"])
    (args.checkpoint / "heldout_eval.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


def _choose(grid: list, dev: ExitTable, test: ExitTable) -> dict:
    """The setting with the best dev micro-F1 among those at >= 1.5x fewer layers on dev, measured on test."""
    fast = [(p, r) for p in grid if (r := dev.evaluate(p))["speedup"] >= 1.5]
    policy, dev_row = max(fast, key=lambda pr: (pr[1]["micro_f1_positive"], pr[1]["speedup"]))
    test_row = test.evaluate(policy)
    keys = ("micro_f1_positive", "speedup")
    return {"policy": policy.describe(), "dev": {k: dev_row[k] for k in keys}, "test": {k: test_row[k] for k in keys}}


if __name__ == "__main__":
    raise SystemExit(main())
