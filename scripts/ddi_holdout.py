"""Split a DDI 2013 folder by document into train/ and test/ folders of symbolic links (no corpus copy).

    python scripts/ddi_holdout.py ../shared/data/ddi/Train runs/ddi_split --fraction 0.15 --seed 7

The test/ part is for the final figure only: train with --train OUT/train --dev-fraction F (selection
and calibration happen inside it) and evaluate on OUT/test.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from epee_annotate.data.ddi import ddi_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    files = [Path(f) for f in ddi_files(args.source)]  # one XML file per <document>
    order = sorted(files)
    random.Random(args.seed).shuffle(order)
    test = set(order[: round(args.fraction * len(order))])
    for file in files:
        target = args.out / ("test" if file in test else "train") / file.relative_to(args.source.resolve() if file.is_absolute() else args.source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(file.resolve())
    print(f"{len(files) - len(test)} train and {len(test)} test documents under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
