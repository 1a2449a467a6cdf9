"""How much Ray shows on the terminal during a job: the command line's choice, made for its own process.

Quiet by default: one progress bar (or, when stdout is not a terminal, one "Total Progress" line
every ``QUIET_LOG_INTERVAL_S`` seconds) and the summary. Ray's start-up messages, the core
worker's notices, per-operator progress and execution plans appear with ``--verbose``.
The library never does this (``pipelines.runtime``): a notebook keeps its own logging.
"""

from __future__ import annotations

import logging
import os

QUIET_LOG_INTERVAL_S = 30
PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"  # Ray Data's non-terminal progress lines


class _TotalProgressOnly(logging.Filter):
    """Keep only the "Total Progress: n/N" line of Ray Data's logged progress block."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith("Total Progress")


def quiet_ray(verbose: bool, command: str = "a batch job") -> None:
    """Set this process's Ray logging for a job: everything with ``verbose``, else warnings-free and one progress line."""
    if not verbose:
        # Read by Ray when the driver's core worker starts (ray.init) and when Ray Data is first
        # imported; a value the user set wins. The core worker's C++ notices (e.g. about actor
        # constructor arguments and restarts) go to stderr at error level although nothing is
        # wrong; real failures still raise in the driver.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", str(QUIET_LOG_INTERVAL_S))
    from ..extras import require

    require("ray.data", command)  # importing Ray configures its loggers: set levels after that

    progress_logger = logging.getLogger(PROGRESS_LOGGER)
    for old in [f for f in progress_logger.filters if isinstance(f, _TotalProgressOnly)]:
        progress_logger.removeFilter(old)
    if verbose:
        logging.getLogger("ray").setLevel(logging.INFO)
        logging.getLogger("ray.data").setLevel(logging.NOTSET)
        return
    logging.getLogger("ray").setLevel(logging.ERROR)  # token-auth notice, "Started a local Ray instance"
    logging.getLogger("botocore").setLevel(logging.WARNING)  # "Found credentials ..." (the S3 output lock)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # execution plans, sink notices, bar notices
    progress_logger.setLevel(logging.INFO)
    progress_logger.addFilter(_TotalProgressOnly())
