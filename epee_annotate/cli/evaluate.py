"""``epee-annotate evaluate`` and ``epee-annotate calibrate``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..vocab import METRICS
from .common import (
    add_column_arguments, add_policy_arguments, add_runtime_argument, add_threads_argument, apply_threads,
    columns_from_args, runtime_from_args,
)

log = logging.getLogger("epee_annotate.evaluate")

GUESS_FORMAT = {".jsonl": "jsonl", ".csv": "csv", ".npz": "npz", ".spacy": "docbin"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` and ``calibrate`` subcommands."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint: per-exit (budgeted) and threshold-grid (dynamic) modes, report + plots",
        description="Evaluate a multi-exit checkpoint on labelled data from one full-depth pass: every exit "
                    "(budgeted mode), the checkpoint's default or a given exit policy, and with --grid every "
                    "registered policy family's grid (EPEE, its entropy-only and patience-only baselines, BEEM). "
                    "The checkpoint's metric (the one training selected on) is reported first; --metric "
                    "overrides it. Writes OUTDIR/report.json, report.md and PNG plots.",
    )
    _common(evaluate)
    add_policy_arguments(evaluate, "exit policy to evaluate (default: the checkpoint's calibrated policy); the "
                                   "settings of one policy at a time")
    evaluate.add_argument("--grid", action="store_true",
                          help="sweep every registered family's grid (EPEE (tau, P) with its baselines, BEEM)")
    evaluate.add_argument("--report", required=True, metavar="OUTDIR", help="folder for report.json, report.md, PNGs")
    evaluate.add_argument("--time-all", action="store_true",
                          help="with --grid: time the real early-exit run of every grid point (slow)")
    evaluate.add_argument("--no-timing", action="store_true", help="skip wall-clock measurements")
    evaluate.add_argument("--timing-repeats", type=int, default=3, metavar="R",
                          help="time each policy R times (interleaved) and keep the fastest (default 3)")
    evaluate.add_argument("--no-plots", action="store_true", help="write report.json and report.md only")
    evaluate.add_argument("--allow-same-split", action="store_true",
                          help="evaluate even on the data the checkpoint was calibrated on (numbers are optimistic)")
    evaluate.set_defaults(func=run_evaluate)

    calibrate = subparsers.add_parser(
        "calibrate",
        help="choose (entropy, patience) for a stated goal and store it as the checkpoint's default policy",
        description="Choose an exit policy's setting on a calibration split for one goal and store it, with the "
                    "evidence, in DIR/epee_config.json. Without --in-sample the choice is certified on new data "
                    "(Learn-then-Test: exact binomial tests in a fixed order, with the error rate 1 - C split over "
                    "every printed statement). Metric values are fractions: --max-drop 0.005 allows half a point "
                    "of the checkpoint's metric (the one training selected on; --metric overrides it).",
    )
    _common(calibrate)
    goal = calibrate.add_mutually_exclusive_group(required=True)
    goal.add_argument("--max-drop", type=float, metavar="D",
                      help="fastest setting whose metric is within D (absolute, 0.005 = 0.5 points) of the last exit "
                           "(macro-F1 / positive micro-F1 are certified through the disagreement rate and refused, "
                           "with the n needed, when this data cannot certify them)")
    goal.add_argument("--min-speedup", type=float, metavar="S", help="best metric among settings with speed-up >= S")
    goal.add_argument("--max-disagreement", type=float, metavar="E",
                      help="fastest setting whose expected disagreement with full depth on new data is <= E")
    calibrate.add_argument("--confidence", type=float, default=0.95, metavar="C",
                           help="joint confidence of every statement printed about new data (default 0.95)")
    calibrate.add_argument("--in-sample", action="store_true",
                           help="choose on the calibration split's own values (no statement about new data; "
                                "the old behaviour)")
    calibrate.add_argument("--guard-drop", type=float, metavar="G",
                           help="refuse a setting whose in-sample drop on ANY reported metric exceeds G "
                                "(default 0.02, two points; a larger --max-drop widens it)")
    calibrate.add_argument("--force", action="store_true", help="store the choice even when the guard refuses it")
    calibrate.add_argument("--out", metavar="DIR2",
                           help="write a calibrated copy of the checkpoint to DIR2 and leave DIR unchanged")
    calibrate.add_argument("--overwrite", action="store_true", help="with --out: replace an existing DIR2")
    calibrate.add_argument("--family", choices=_family_names(), default="epee",
                           help="registered policy family searched (beem-accuracy weights each exit by its accuracy "
                                "on training's dev set, recorded in the checkpoint)")
    calibrate.add_argument("--allow-dev-overlap", action="store_true",
                           help="calibrate even on examples of the dev set that chose the checkpoint's epoch "
                                "(the guarantee then does not hold; recorded in the checkpoint)")
    calibrate.add_argument("--dry-run", action="store_true", help="print the choice without changing the checkpoint")
    calibrate.add_argument("--json", metavar="FILE", help="also write the calibration record to FILE")
    calibrate.set_defaults(func=run_calibrate)


def _family_names() -> list[str]:
    from ..policies import families

    return [f.name for f in families()]


def _common(parser: argparse.ArgumentParser) -> None:
    from ..data import FORMATS

    parser.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (from train or save_pretrained)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="PATH", help="labelled data file (or DDI XML folder)")
    data.add_argument("--format", choices=FORMATS,
                      help="data format (default: from the extension for .jsonl, .csv, .npz, .spacy; "
                           ".jsonl is 'spans' for a span checkpoint)")
    data.add_argument("--spans-key", metavar="KEY", help="docbin: the doc.spans group to read (default: doc.ents)")
    data.add_argument("--split", help="which arrays of an npz file (e.g. val); required when it holds several")
    data.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="bad records: stop or skip them")
    data.add_argument("--dev-fraction", type=float, metavar="F",
                      help="first keep only the dev part that `train --dev-fraction F --seed S` held out "
                           "(documents kept whole), for data that has no separate dev file, e.g. DDI")
    data.add_argument("--dev-seed", type=int, default=42, metavar="S",
                      help="the --seed of that training run (default 42, train's default)")
    data.add_argument("--calibration-fraction", type=float, metavar="F",
                      help="split --data deterministically: calibrate uses a fraction F, evaluate the rest")
    data.add_argument("--seed", type=int, default=0, help="seed of the calibration/report split (default 0)")
    grid = parser.add_argument_group("grid and metric")
    grid.add_argument("--metric", default="auto", choices=("auto", *METRICS),
                      help="main metric, reported first (auto: the checkpoint's metric, the one training selected "
                           "its epoch on; without a training record micro_f1_positive when there is a negative "
                           "label, else accuracy)")
    grid.add_argument("--negative-label", metavar="LABEL",
                      help="the no-relation label for micro_f1_positive (default: 'none' etc. for relation tasks)")
    grid.add_argument("--negative-rules", choices=("auto", "on", "off"), default="auto",
                      help="answer the pairs a DDI 2013 negative rule matches with the negative label before the "
                           "model, as the epee_ddi component does: they count in every quality figure, and cost, "
                           "timing and calibration cover the pairs the model answers (auto: on for --format ddi)")
    grid.add_argument("--taus", type=_floats, metavar="T1,T2,...", help="entropy thresholds of the grid")
    grid.add_argument("--patiences", type=_ints, metavar="P1,P2,...", help="patience values of the grid (default 1..M)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    run.add_argument("--int8", action="store_true",
                     help="int8 dynamic quantization of the backbone's Linear layers (CPU; see its accuracy cost); "
                          "the same as --runtime torch-int8")
    add_runtime_argument(run)
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: when stderr is a terminal)")
    add_threads_argument(run)
    add_column_arguments(parser)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ----- shared steps ------------------------------------------------------------------------------------
def _progress(args) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _load_model(args):
    import torch

    from ..model import MultiExitModel

    runtime = runtime_from_args(args)
    device = args.device
    if device == "auto":  # the int8 and ONNX runtimes are CPU runtimes
        device = "cuda" if torch.cuda.is_available() and runtime in (None, "torch") else "cpu"
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    model = MultiExitModel.from_pretrained(args.checkpoint, device=device)
    return model.use_runtime(runtime)


def _load_data(args, model, part: str) -> tuple[list[Any], list[str], dict[str, Any], list[str], list[bool] | None]:
    """(inputs, gold labels, fingerprint, warnings, rule flags or None) of the requested part of --data."""
    from ..calibration import data_fingerprint, split_examples
    from ..data import load_examples

    path = Path(args.data)
    if not path.exists():
        raise FileNotFoundError(f"data path {args.data!r} does not exist")
    fmt = args.format or GUESS_FORMAT.get(path.suffix.lower())
    if args.format is None and fmt == "jsonl" and model.task == "span":
        fmt = "spans"  # a span checkpoint's JSONL data is span records
    if fmt is None:
        raise ValueError(f"cannot tell the format of {args.data!r} from its name: pass --format")
    split = _npz_split(path, args.split) if fmt == "npz" else args.split
    # npz labels are class ids: name them with the checkpoint's labels, in order.
    options: dict[str, Any] = {"label_names": model.labels} if fmt == "npz" else {}
    if args.spans_key is not None:
        if fmt != "docbin":
            raise ValueError("--spans-key applies to --format docbin only")
        options["spans_key"] = args.spans_key
    columns = columns_from_args(args)
    if columns:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"--*-column options apply to csv/jsonl data, not {fmt}")
        options["columns"] = columns
    examples = load_examples(path, fmt, model.task, split=split, on_error=args.on_error, **options)
    if not examples:
        raise ValueError(f"{args.data!r} holds no examples")
    holdout = None
    if args.dev_fraction is not None:
        from ..data import split_by_group

        examples = split_by_group(examples, args.dev_fraction, args.dev_seed)[1]
        holdout = {"dev_fraction": args.dev_fraction, "dev_seed": args.dev_seed}
    fraction = args.calibration_fraction
    if fraction is not None:
        calibration_part, report_part = split_examples(examples, fraction, args.seed)
        examples = calibration_part if part == "calibration" else report_part
    else:
        part = "all"
    inputs = [e.input for e in examples]
    gold = [str(e.label) for e in examples]
    _check_labels(gold, model.labels)
    warnings = []
    missing = sorted(set(model.labels) - set(gold))
    if missing:
        warnings.append(f"labels of the checkpoint absent from this data: {missing} (macro-F1 averages over all "
                        "the checkpoint's labels, so each counts with F1 0)")
    fingerprint = data_fingerprint(inputs, path=path, format=fmt, split=split, fraction=fraction, seed=args.seed,
                                   part=part, holdout=holdout)
    ruled = _rule_flags(args.negative_rules, fmt, model, examples)
    if ruled is not None:
        fingerprint["negative_rules"] = {"rule_rows": sum(ruled), "model_rows": len(ruled) - sum(ruled)}
    return inputs, gold, fingerprint, warnings, ruled


def _rule_flags(choice: str, fmt: str, model, examples) -> list[bool] | None:
    """Which examples a DDI negative rule answers (None: rules off); ``on`` is refused where it cannot apply."""
    if choice == "off" or (choice == "auto" and fmt != "ddi"):
        return None
    if fmt != "ddi":
        raise ValueError(f"--negative-rules on needs --format ddi (the loader that marks the pairs a DDI 2013 "
                         f"negative rule matches), not {fmt}")
    from ..evaluation import find_negative_label

    if find_negative_label(model.labels) is None:
        raise ValueError(f"--negative-rules answers the negative label, and the checkpoint has none: {model.labels}"
                         "; pass --negative-rules off")
    return [bool((e.meta or {}).get("filter_rule")) for e in examples]


def _npz_split(path: Path, split: str | None) -> str:
    """The npz split to read: --split, or the only one there is (never a silent default)."""
    from ..data.medmnist import npz_splits

    if split is not None:
        return split
    splits = npz_splits(path)
    if len(splits) != 1:
        raise ValueError(f"{str(path)!r} holds the splits {splits}: pass --split (e.g. --split val) to say "
                         "which one to use")
    return splits[0]


def _check_labels(gold: list[str], labels: list[str]) -> None:
    unseen = sorted(set(gold) - set(labels))
    if not unseen:
        return
    if not set(gold) & set(labels):
        raise ValueError(f"the label set of the data {sorted(set(gold))[:10]} does not match the checkpoint's "
                         f"labels {labels}")
    raise ValueError(f"labels unseen in the checkpoint: {unseen[:10]}; checkpoint labels: {labels}")


def _check_split(calibration, fingerprint, allow: bool) -> str | None:
    """``calibration.check_split`` with this command line's options as advice."""
    from ..calibration import SameSplitError, check_split

    try:
        return check_split(calibration, fingerprint, allow)
    except SameSplitError as error:
        part = error.part
        advice = "--allow-same-split overrides"
        if part:
            options = f"--calibration-fraction {part['fraction']} --seed {part['seed']}"
            if "dev_fraction" in part:
                options += f" --dev-fraction {part['dev_fraction']} --dev-seed {part['dev_seed']}"
            advice = f"pass {options} to evaluate on the other part; {advice}"
        raise SameSplitError(f"{error} ({advice})", part) from None


def _negative_label(args, model) -> str | None:
    from ..evaluation import find_negative_label

    if args.negative_label is not None:
        if args.negative_label not in model.labels:
            raise ValueError(f"--negative-label {args.negative_label!r} is not a checkpoint label: {model.labels}")
        return args.negative_label
    return find_negative_label(model.labels) if model.task == "relation" else None


# ----- evaluate -----------------------------------------------------------------------------------------
def run_evaluate(args) -> int:
    """The ``evaluate`` subcommand."""
    from ..evaluation import evaluate_model
    from ..reports import write_report
    from .common import policy_from_args

    apply_threads(args.threads)
    if args.time_all and not args.grid:
        raise ValueError("--time-all needs --grid")
    model = _load_model(args)
    negative = _negative_label(args, model)
    inputs, gold, fingerprint, warnings, ruled = _load_data(args, model, part="report")
    same = _check_split(model.config.calibration, fingerprint, args.allow_same_split)
    if same:
        warnings.insert(0, same)
        print(same, file=sys.stderr)
    given = policy_from_args(args)
    if given is not None:
        policy, source = given, "command line"
    elif model.config.default_policy is not None:
        policy = model.default_policy
        goal = (model.config.calibration or {}).get("goal")
        source = "checkpoint default policy" + (f" (calibrated: {goal['kind']}={goal['value']})" if goal else "")
    else:
        policy, source = None, None
    timing = "none" if args.no_timing else ("all" if args.time_all else "selected")
    report = evaluate_model(
        model, inputs, gold, policy=policy, grid=args.grid, taus=args.taus, patiences=args.patiences,
        metric=args.metric, timing=timing, timing_repeats=args.timing_repeats, negative_label=negative,
        ruled=ruled, batch_size=args.batch_size, progress=_progress(args),
    )
    report["data"] = fingerprint
    report["warnings"] = warnings
    report["selected_source"] = source
    report["checkpoint"]["path"] = str(Path(args.checkpoint).resolve())
    paths = write_report(report, args.report, plots=not args.no_plots)
    _print_summary(report)
    print(f"report: {paths['markdown']} (numbers: {paths['json']})")
    return 0


def _print_summary(report: dict[str, Any]) -> None:
    metric = report["metric"]
    timing = (report.get("timing") or {}).get("policies", {})
    full = report["full_depth"]
    names = report["metric_names"]  # the main metric first
    print(f"metric: {metric} ({report['metric_source']})")
    print(f"n={report['n']}  last exit: " + "  ".join(f"{m} {full[m]:.4f}" for m in names))
    if "selected" in report:
        row = report["selected"]
        wall = timing.get("selected", {}).get("wall_speedup")
        cpu = timing.get("selected", {}).get("cpu_speedup")
        print(f"{row['name']}: " + "  ".join(f"{m} {row[m]:.4f}" for m in names)
              + f"  speedup {row['speedup']:.3f}x  saved_fraction {row['saved_fraction']:.3f}"
              + f"  disagreement {row['disagreement']:.4f}"
              + (f"  wall-clock speed-up {wall:.2f}x (CPU time {cpu:.2f}x)" if wall else ""))
    if "dynamic" in report:
        best = max(report["dynamic"]["epee"], key=lambda r: (r[metric] >= full[metric] - 0.005, r["speedup"]))
        print(f"grid: fastest EPEE setting within 0.005 {metric} of the last exit on this data: {best['name']} "
              f"({metric} {best[metric]:.4f}, speedup {best['speedup']:.3f}x; chosen on the report data itself, "
              "so optimistic)")
    for warning in report.get("warnings", []):
        print(f"note: {warning}", file=sys.stderr)


# ----- calibrate ----------------------------------------------------------------------------------------
def run_calibrate(args) -> int:
    """The ``calibrate`` subcommand."""
    from ..calibration import DEFAULT_GUARD_DROP, CalibrationGoal, GuardError, calibrate_checkpoint

    if args.max_drop is not None:
        kind, value = "max_drop", args.max_drop
    elif args.min_speedup is not None:
        kind, value = "min_speedup", args.min_speedup
    else:
        kind, value = "max_disagreement", args.max_disagreement
    apply_threads(args.threads)
    goal = CalibrationGoal(kind, value, metric=args.metric, confidence=args.confidence, in_sample=args.in_sample,
                           guard_drop=DEFAULT_GUARD_DROP if args.guard_drop is None else args.guard_drop,
                           force=args.force)
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()) and not args.overwrite \
            and not args.dry_run:
        raise ValueError(f"--out {args.out!r} already exists and is not empty; pass --overwrite or another folder")
    model = _load_model(args)
    negative = _negative_label(args, model)
    inputs, gold, fingerprint, warnings, ruled = _load_data(args, model, part="calibration")
    if ruled is not None:
        # A rule-answered pair is answered the same at every setting and runs no layer, so the
        # statements are about the pairs the model answers, the ones production audits and times.
        inputs = [x for x, r in zip(inputs, ruled) if not r]
        gold = [g for g, r in zip(gold, ruled) if not r]
        print(f"negative rules: calibrating on the {len(inputs)} pairs the model answers; {sum(ruled)} pairs a "
              "DDI rule answers with the negative label are the same at every setting (--negative-rules off "
              "includes them)", file=sys.stderr)
        if not inputs:
            raise ValueError("the negative rules answer every pair: nothing left to calibrate on")
    for warning in warnings:
        print(f"note: {warning}", file=sys.stderr)
    target = args.out or args.checkpoint
    if model.config.calibration and not args.dry_run and not args.out:
        log.info("replacing the checkpoint's previous calibration (%s)", model.config.calibration.get("policy_name"))
    try:
        result = calibrate_checkpoint(
            args.checkpoint, inputs, gold, goal, data=fingerprint, taus=args.taus, patiences=args.patiences,
            negative_label=negative, batch_size=args.batch_size, progress=_progress(args), model=model,
            save=not args.dry_run, out=args.out, overwrite=args.overwrite, family=args.family,
            allow_dev_overlap=args.allow_dev_overlap,
        )
    except GuardError as error:
        print(f"epee-annotate calibrate: {error} (--guard-drop G raises the guard, --force forces the choice)",
              file=sys.stderr)
        return 3
    print(result.summary())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if args.dry_run:
        print("dry run: the checkpoint was not changed")
    else:
        print(f"stored {result.policy.describe()} as the default policy of {target}")
    return 0
