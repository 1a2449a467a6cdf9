"""``epee-annotate classify-images``: early-exit classification of image files and folders."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..vocab import FRAME_MODES
from .common import add_policy_arguments, add_runtime_argument, add_threads_argument, apply_threads, policy_from_args

COLUMNS = ("source", "frame", "label", "exit_layer", "num_layers", "confidence", "entropy", "error")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify-images", help="classify DICOM/PNG/JPEG files or folders with a multi-exit ViT",
        description="Classify image files (folders are searched recursively) with EPEE early exit.",
    )
    parser.add_argument("checkpoint", type=Path, help="image checkpoint directory")
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--frames", choices=FRAME_MODES, default="middle",
                        help="multi-frame DICOM: middle frame, every frame, or max-intensity projection")
    parser.add_argument("--extra-tags", default="", help="comma-separated DICOM keywords to add (may be PHI)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    add_runtime_argument(parser)
    parser.add_argument("--output", type=Path, help="write all fields to .jsonl or .csv instead of a table")
    add_policy_arguments(parser)
    add_threads_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    from ..imaging.classify import classify_images, find_image_files
    from ..model import MultiExitModel

    policy = policy_from_args(args)  # conflicting flags fail before the model loads
    model = MultiExitModel.from_pretrained(args.checkpoint, device=args.device).use_runtime(args.runtime)
    files = find_image_files(args.paths)
    if not files:
        raise ValueError("no files found under the given paths")
    extra = [t for t in args.extra_tags.split(",") if t]
    results = classify_images(model, files, policy, args.batch_size, args.frames, extra,
                              progress=sys.stderr.isatty())
    rows = [r.to_dict() for r in results]
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.output and args.output.suffix == ".jsonl":
        args.output.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif args.output:
        with open(args.output, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    else:
        print("\t".join(COLUMNS))
        for row in rows:
            print("\t".join("" if row.get(c) is None else str(row.get(c)) for c in COLUMNS))
    failed = sum(1 for r in results if r.prediction.error)
    print(f"{len(results) - failed} classified, {failed} errors, {len(files)} files", file=sys.stderr)
    return 0
