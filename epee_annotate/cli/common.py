"""Options shared by several subcommands (imports stay light: ``--help`` must not load torch)."""

from __future__ import annotations

import argparse

from ..cores import usable_cores


def add_policy_arguments(parser: argparse.ArgumentParser, title: str | None = None) -> None:
    """One flag per setting of every registered exit policy; none given means the checkpoint's default."""
    from ..policies import settings

    group = parser.add_argument_group(title or "exit policy (default: the checkpoint's calibrated policy); "
                                               "the settings of one policy at a time")
    for setting in settings():
        group.add_argument(setting.flag, dest=setting.key, type=setting.type, metavar=setting.metavar,
                           help=f"{setting.help}; range {setting.range_text()}")


def policy_settings_from_args(args: argparse.Namespace) -> dict:
    """The policy settings given on the command line (flat keys; empty: the checkpoint's default)."""
    from ..policies import given_settings

    return given_settings(vars(args))


def policy_from_args(args: argparse.Namespace):
    """The ExitPolicy the options ask for, or None for the checkpoint default."""
    from ..policies import resolve_policy

    return resolve_policy(vars(args))


# ----- threads -------------------------------------------------------------------------------------
def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """--threads N: torch's intra- and inter-op threads for this command."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads (default: the cores this process may use, its CPU affinity; never "
                             "more); on a shared machine give fewer")


def apply_threads(requested: int | None) -> int:
    """Set torch's thread pools before any model work (the inter-op pool can only be set once, first)."""
    if requested is not None and requested < 1:
        raise ValueError(f"--threads must be >= 1, got {requested}")
    # Never the load average: a default that depends on how busy the machine was at start makes runs
    # unreproducible (a busy start once gave a PHEE run 1 thread, twice the time and a worse model).
    threads = usable_cores() if requested is None else min(requested, usable_cores())
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # the pool already started (e.g. a second command in one process): keep it
        pass
    return threads


# ----- data columns ------------------------------------------------------------------------------
COLUMN_OPTIONS = ("text", "label", "group", "id", "head_start", "head_end", "tail_start", "tail_end")


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """--text-column, --label-column, ... for csv/jsonl data whose columns have other names."""
    group = parser.add_argument_group("columns (csv/jsonl; defaults are the names in docs/training.md)")
    for name in COLUMN_OPTIONS:
        flag = name.replace("_", "-")
        group.add_argument(f"--{flag}-column", dest=f"{name}_column", metavar="NAME",
                           help=f"column holding the {name.replace('_', ' ')} (default {name})")


def columns_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The renamed columns as {standard name: column in the file}."""
    return {name: getattr(args, f"{name}_column") for name in COLUMN_OPTIONS
            if getattr(args, f"{name}_column", None)}


# ----- runtime -------------------------------------------------------------------------------------
def add_runtime_argument(parser) -> None:
    """--runtime: torch, torch-int8, onnx or onnx-int8 (``epee_annotate.runtimes.RUNTIMES``)."""
    from ..runtimes import RUNTIME_HELP, RUNTIMES

    parser.add_argument("--runtime", choices=list(RUNTIMES), default=None, help=f"{RUNTIME_HELP} (default torch)")


def runtime_from_args(args: argparse.Namespace) -> str | None:
    """--runtime, with the older --int8 flag (where a command has it) as another name for torch-int8."""
    runtime = getattr(args, "runtime", None)
    if getattr(args, "int8", False):
        if runtime not in (None, "torch-int8"):
            raise ValueError(f"--int8 means --runtime torch-int8; it cannot be combined with --runtime {runtime}")
        return "torch-int8"
    return runtime
