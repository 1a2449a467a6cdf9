"""Images per second through ``classify_images``, DICOM decoding included: EPEE vs full depth, one run.

Uses real DICOM files that ship in wheels (pydicom's CT/MR test files and the chest CR
radiograph RG1_UNCR.dcm from pydicom-data), repeated to make a folder-sized workload.

    python -m benchmarks.images_dicom [--checkpoint runs/pneumonia_vit] [--copies 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from pydicom.data import get_testdata_file

from epee_annotate import BudgetedExit, MultiExitModel
from epee_annotate.cores import usable_cores
from epee_annotate.imaging.classify import classify_images

FILES = ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/pneumonia_vit"))
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = MultiExitModel.from_pretrained(args.checkpoint)
    paths = [p for p in (get_testdata_file(name, download=False) for name in FILES) if p]
    sources = [Path(p) for p in paths] * args.copies
    # (policy, prefetch): None is classify_images' default (prefetch with a core to spare).
    policies = {"EPEE (checkpoint default)": (model.default_policy, None),
                "EPEE, prefetching on": (model.default_policy, True),
                "EPEE, prefetching off": (model.default_policy, False),
                "full depth": (BudgetedExit(0), None)}
    classify_images(model, sources[:4], policy=model.default_policy)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in policies}
    exits: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (policy, prefetch) in policies.items():
            start = time.perf_counter()
            results = classify_images(model, sources, policy=policy, batch_size=32, prefetch=prefetch)
            times[name].append(time.perf_counter() - start)
            ok = [r.prediction.exit_layer for r in results if r.prediction.ok]
            exits[name] = sum(ok) / max(len(ok), 1)
    print(f"{len(sources)} DICOM files ({', '.join(Path(p).name for p in paths)}), decode + classify:")
    for name in policies:
        seconds = statistics.median(times[name])
        print(f"  {name}: {len(sources) / seconds:.1f} images/s (median of {args.repeats}), "
              f"mean exit layer {exits[name]:.2f}/{model.num_layers}")
    ratio = statistics.median(times["full depth"]) / statistics.median(times["EPEE (checkpoint default)"])
    print(f"  wall-clock speed-up {ratio:.2f}x")
    overlap = statistics.median(times["EPEE, prefetching off"]) / statistics.median(times["EPEE, prefetching on"])
    print(f"  prefetching on (decoding beside the model) vs off: {overlap:.2f}x "
          f"({usable_cores()} usable cores, {torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()
