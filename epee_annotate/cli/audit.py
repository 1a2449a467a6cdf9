"""``audit-report``: the audits of several job outputs (e.g. monthly runs) as one table and one plot."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_audit_report(args: argparse.Namespace) -> int:
    from ..pipelines.audit import audit_table, format_audit_table, plot_audit

    rows = audit_table(args.outputs)
    print(format_audit_table(rows))
    Path(args.plot).write_bytes(plot_audit(rows))
    print(f"plot: {args.plot}")
    return 0


def register(subparsers) -> None:
    """Add the ``audit-report`` subcommand."""
    parser = subparsers.add_parser(
        "audit-report", help="disagreement of the early answers with full depth over several job outputs",
        description="Reads the audit in each output's _SUCCESS manifest (annotate-notes --audit-fraction) and "
                    "shows the observed rate, its exact 95% upper bound, the promised bound and the verdict per "
                    "run, oldest first: how to watch for drift.")
    parser.add_argument("outputs", nargs="+", metavar="OUT", help="job output locations (directories or URIs)")
    parser.add_argument("--plot", default="audit-report.png", help="where to write the plot (PNG)")
    parser.set_defaults(func=run_audit_report)
