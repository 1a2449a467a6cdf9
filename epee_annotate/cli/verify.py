"""``verify OUT``: check a job output against its ``_SUCCESS`` manifest (files, sizes, sha256, rows)."""

from __future__ import annotations

import argparse


def run_verify(args: argparse.Namespace) -> int:
    from ..pipelines.publish import verify_output

    manifest, problems = verify_output(args.out)
    for problem in problems:
        print(f"{args.out}: {problem}")
    if problems:
        print(f"{args.out}: does NOT match its manifest ({len(problems)} problem(s))")
        return 1
    datasets = manifest.get("datasets", {})
    files = sum(len(d.get("files", [])) for d in datasets.values()) + len(manifest.get("files", []))
    rows = ", ".join(f"{name} {d.get('rows')} rows" for name, d in sorted(datasets.items()))
    print(f"{args.out}: ok: {files} file(s) match the manifest (sizes and sha256); {rows}")
    return 0


def register(subparsers) -> None:
    """Add the ``verify`` subcommand."""
    verify = subparsers.add_parser(
        "verify", help="check a job output against its _SUCCESS manifest",
        description="Checks that every file the output's _SUCCESS manifest lists exists with its recorded size "
                    "and sha256, that no dataset folder holds a file the manifest does not list, and each "
                    "dataset's row count. Exit status 0: it matches; 1: it does not (each problem printed); "
                    "2: no manifest (the job has not finished) or the output cannot be read.",
    )
    verify.add_argument("out", help="the job output (a directory or a URI) holding _SUCCESS")
    verify.set_defaults(func=run_verify)
