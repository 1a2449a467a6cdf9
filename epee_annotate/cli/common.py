"""Options shared by several subcommands."""

from __future__ import annotations

import argparse

from ..policies import ExitPolicy, make_policy


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """--entropy / --patience / --budget / --beem; none given means the checkpoint's default policy."""
    group = parser.add_argument_group("exit policy (default: the checkpoint's calibrated policy)")
    group.add_argument("--entropy", type=float, metavar="TAU", help="exit when normalized entropy < TAU")
    group.add_argument("--patience", type=int, metavar="P", help="exit when the same class wins P exits in a row")
    group.add_argument("--budget", type=int, metavar="M", help="every input exits at layer M (0 = full depth)")
    group.add_argument("--beem", type=float, metavar="S",
                       help="BEEM: exit when the running sum of (m/M) x confidence of agreeing exits reaches S")


def policy_from_args(args: argparse.Namespace) -> ExitPolicy | None:
    """The policy the options ask for, or None for the checkpoint default."""
    if args.budget is not None and (args.entropy is not None or args.patience is not None):
        raise ValueError("--budget cannot be combined with --entropy/--patience")
    beem = getattr(args, "beem", None)
    if args.entropy is None and args.patience is None and args.budget is None and beem is None:
        return None
    return make_policy(args.entropy, args.patience, args.budget, beem)
