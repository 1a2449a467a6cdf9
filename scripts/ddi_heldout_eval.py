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
    none = model.labels.index("none")
    for name, data in parts.items():
        table = ExitTable.from_model(model, [e.input for e in data], [e.label for e in data], negative_label="none",
                                     batch_size=64)
        tables[name] = table
        ruled = torch.tensor([bool((e.meta or {}).get("filter_rule")) for e in data])
        rows = []
        for m in range(table.num_layers):
            predicted = table.probs[:, m].argmax(-1)
            forced = predicted.clone()
            forced[ruled] = none
            rows.append({"exit": m + 1, "micro_f1_positive": table.metrics(predicted)["micro_f1_positive"],
                         "with_rules": table.metrics(forced)["micro_f1_positive"]})
        out[name] = {"n": len(data), "exits": rows}
    grid = [EPEE(entropy=i / 20, patience=p) for i in range(1, 20) for p in range(1, model.num_layers + 1)]
    fast = [(p, r) for p in grid if (r := tables["dev"].evaluate(p))["speedup"] >= 1.5]
    policy, dev_row = max(fast, key=lambda pr: (pr[1]["micro_f1_positive"], pr[1]["speedup"]))
    test_row = tables["test"].evaluate(policy)
    keys = ("micro_f1_positive", "speedup")
    out["epee_min_speedup_1.5"] = {"policy": policy.describe(), "dev": {k: dev_row[k] for k in keys},
                                   "test": {k: test_row[k] for k in keys}}
    (args.checkpoint / "heldout_eval.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
