"""Mean ± sd over seeds of one recipe: each checkpoint's dev figures at its chosen epoch, and optionally on data.

    python scripts/seed_figures.py runs/phee_s1 runs/phee_s2 runs/phee_s3 \
        --data ../shared/data/phee/dev.json --format phee

Per checkpoint: seed, threads, chosen epoch, the last exit's dev metrics (training's own dev part),
and with ``--data`` the last exit's metrics on that file (``--split`` for npz). Then mean and
sample sd (n - 1) over the checkpoints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from epee_annotate.data import load_examples  # noqa: E402
from epee_annotate.evaluation import ExitTable  # noqa: E402
from epee_annotate.model import MultiExitModel  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", help="also evaluate the last exit on this file")
    parser.add_argument("--format")
    parser.add_argument("--split", default="val", help="npz split for --data")
    args = parser.parse_args()
    rows = []
    for path in args.checkpoints:
        model = MultiExitModel.from_pretrained(path)
        training = model.config.training
        row = {"checkpoint": str(path), "seed": training["seed"],
               "threads": training["environment"]["torch_threads"], "epoch": training["best_epoch"],
               **{f"dev_{k}": v for k, v in training["dev_metrics"][-1].items()}}
        if args.data:
            kwargs = {"split": args.split} if args.format == "npz" else {}
            examples = load_examples(args.data, args.format, model.task, **kwargs)
            table = ExitTable.from_model(model, [e.input for e in examples], [e.label for e in examples],
                                         batch_size=64)
            row.update({f"data_{k}": v for k, v in table.metrics(table.probs[:, -1].argmax(-1)).items()})
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    metrics = [k for k in rows[0] if k.startswith(("dev_", "data_"))]
    for key in metrics:
        values = [r[key] for r in rows]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key}: {statistics.mean(values):.4f} ± {sd:.4f} (n={len(values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
