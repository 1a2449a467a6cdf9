"""Options shared by several subcommands (imports stay light: ``--help`` must not load torch)."""

from __future__ import annotations

import argparse


def add_policy_arguments(parser: argparse.ArgumentParser, title: str | None = None) -> None:
    """--entropy / --patience / --budget; none given means the checkpoint's default policy."""
    group = parser.add_argument_group(title or "exit policy (default: the checkpoint's calibrated policy)")
    group.add_argument("--entropy", type=float, metavar="TAU", help="exit when normalized entropy < TAU")
    group.add_argument("--patience", type=int, metavar="P", help="exit when the same class wins P exits in a row")
    group.add_argument("--budget", type=int, metavar="M", help="every input exits at layer M (0 = full depth)")


def policy_from_args(args: argparse.Namespace):
    """The ExitPolicy the options ask for, or None for the checkpoint default."""
    from ..policy_settings import resolve_policy

    return resolve_policy(vars(args), prefix="--")
