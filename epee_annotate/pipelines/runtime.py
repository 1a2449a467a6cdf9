"""Ray session and actor-pool settings shared by the batch jobs.

Quiet by default: a job shows one progress bar (or, when stdout is not a terminal, one progress
line every ``QUIET_LOG_INTERVAL_S`` seconds) and its summary. Ray's own start-up messages, the
core worker's notices, per-operator progress and execution plans appear with ``verbose``.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import SettingError

# CPUs kept free for Ray Data's read and write tasks: actors hold theirs for the whole job, so
# without a free slot the reader never runs and the job waits forever.
IO_CPUS = 1


@dataclass
class ActorSettings:
    """How many annotation actors, what each reserves, and how failures are retried."""

    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_restarts: int = 3  # a dead actor is recreated up to this many times ...
    max_task_retries: int = 3  # ... and its in-flight batches re-run up to this many times

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise SettingError(f"the number of actors must be >= 1, got {self.num_actors}", "num_actors")
        if self.cpus_per_actor <= 0:
            raise SettingError(f"CPUs per actor must be > 0, got {self.cpus_per_actor}", "cpus_per_actor")
        if self.gpus_per_actor < 0:
            raise SettingError(f"GPUs per actor must be >= 0, got {self.gpus_per_actor}", "gpus_per_actor")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    def map_batches_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Dataset.map_batches`` with a callable class."""
        import ray.data

        # Finite restarts/retries (Ray Data's default is infinite): a document that kills its
        # worker every time fails the job instead of looping forever.
        return {
            "compute": ray.data.ActorPoolStrategy(size=self.num_actors),
            "num_cpus": self.cpus_per_actor,
            "num_gpus": self.gpus_per_actor or None,
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_task_retries,
        }

    def map_batches(self, ds, fn: type, **kwargs: Any):
        """``ds.map_batches(fn, ...)`` on this actor pool."""
        import warnings

        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for max_restarts/max_task_retries yet; the
            # generic remote-args route is the only one and warns about its future removal.
            warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
            return ds.map_batches(fn, **kwargs, **self.map_batches_args())


    def cpus_needed(self, extra: float = 0) -> float:
        """CPUs the job needs in the cluster: every actor's, ``IO_CPUS`` for reading and writing, and ``extra``.

        ``extra``: other actors the job runs (a resumed run's checkpoint filter, one CPU).
        """
        return self.num_actors * self.cpus_per_actor + IO_CPUS + extra


def local_cpus(settings: ActorSettings, extra: float = 0) -> int:
    """Logical CPUs for an embedded Ray: the machine's cores, but always room for readers/writers."""
    return max(os.cpu_count() or 1, math.ceil(settings.cpus_needed(extra)))


def check_cluster_fits(settings: ActorSettings, resources: dict[str, float], extra_cpus: float = 0) -> None:
    """Refuse, naming what is needed, a pool that would starve the reader or never start.

    ``resources`` is ``ray.cluster_resources()``: the whole cluster, not what is free now;
    ``extra_cpus`` as in ``ActorSettings.cpus_needed``.
    """
    have_cpus = float(resources.get("CPU", 0.0))
    needed = settings.cpus_needed(extra_cpus)
    if have_cpus + 1e-9 < needed:
        also = f" plus {extra_cpus:g} CPU for the checkpoint filter" if extra_cpus else ""
        raise SettingError(
            f"the actor pool needs {settings.num_actors} x {settings.cpus_per_actor:g} CPU for the actors "
            f"plus {IO_CPUS} CPU for reading and writing{also} = {needed:g} CPUs, but the Ray cluster "
            f"has {have_cpus:g}; use fewer actors or fewer CPUs per actor, or add nodes",
            "num_actors", "cpus_per_actor",
        )
    gpus = settings.num_actors * settings.gpus_per_actor
    have_gpus = float(resources.get("GPU", 0.0))
    if gpus and have_gpus + 1e-9 < gpus:
        raise SettingError(
            f"the actor pool needs {settings.num_actors} x {settings.gpus_per_actor:g} GPU = {gpus:g} GPUs, "
            f"but the Ray cluster has {have_gpus:g}", "num_actors", "gpus_per_actor",
        )


QUIET_LOG_INTERVAL_S = 30
PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"  # Ray Data's non-terminal progress lines


class _TotalProgressOnly(logging.Filter):
    """Keep only the "Total Progress: n/N" line of Ray Data's logged progress block."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith("Total Progress")


def quiet_ray(verbose: bool) -> None:
    """Set Ray's driver-side logging for a job: everything with ``verbose``, else warnings-free and one progress line."""
    import ray.data  # noqa: F401  (importing Ray configures its loggers: set levels after that)

    try:
        from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager
    except ImportError:  # another Ray layout: its default interval stays
        LoggingExecutionProgressManager = None
    progress_logger = logging.getLogger(PROGRESS_LOGGER)
    for old in [f for f in progress_logger.filters if isinstance(f, _TotalProgressOnly)]:
        progress_logger.removeFilter(old)
    if verbose:
        logging.getLogger("ray").setLevel(logging.INFO)
        logging.getLogger("ray.data").setLevel(logging.NOTSET)
        if LoggingExecutionProgressManager is not None:  # Ray's own default interval
            LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC = int(
                os.environ.get("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", 10))
        return
    # The core worker's C++ notices (e.g. about actor constructor arguments and restarts) go to
    # stderr at error level although nothing is wrong; real failures still raise in the driver.
    # (Ray reads this when the driver's core worker starts, in ray.init.)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    logging.getLogger("ray").setLevel(logging.ERROR)  # token-auth notice, "Started a local Ray instance"
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # execution plans, sink notices, bar notices
    progress_logger.setLevel(logging.INFO)
    progress_logger.addFilter(_TotalProgressOnly())
    if LoggingExecutionProgressManager is not None:
        LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC = max(
        LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC, QUIET_LOG_INTERVAL_S)


@contextmanager
def _native_stderr_silenced(enabled: bool) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (C++ start-up notices); Python errors still raise afterwards."""
    if not enabled:
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def ray_session(address: str | None, settings: ActorSettings, worker_logs: bool = False,
                verbose: bool = False, extra_cpus: float = 0) -> Iterator[str]:
    """Use the running Ray, join ``address``/RAY_ADDRESS, or start an embedded local Ray; yield which."""
    import ray

    quiet_ray(verbose)
    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.ERROR
    # ray.init's native start-up line ("Set ray log level ...") is the only thing hidden here.
    with _native_stderr_silenced(not verbose):
        if address:
            ray.init(address=address, log_to_driver=worker_logs, logging_level=level)
            mode = f"cluster {address}"
        else:
            # GPUs are detected by Ray itself; CPUs are logical slots (see local_cpus).
            ray.init(num_cpus=local_cpus(settings, extra_cpus), include_dashboard=False, log_to_driver=worker_logs,
                     logging_level=level)
            mode = "local"
    try:
        yield mode
    finally:
        ray.shutdown()


def bound_actor_start(timeout_s: float) -> None:
    """Make Ray Data wait at most ``timeout_s`` for the pool's actors to start (model loading included).

    Without it Ray Data waits forever when the actors cannot be placed; with it the job fails
    with ``ray.exceptions.GetTimeoutError``, which the jobs turn into a message (``jobs._finish``).
    """
    from ray.data import DataContext

    DataContext.get_current().wait_for_min_actors_s = max(1, int(math.ceil(timeout_s)))


def configure_progress(enabled: bool, verbose: bool = False) -> None:
    """Ray Data progress for this driver: one overall bar (per-operator bars too with ``verbose``), or none."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = enabled
    ctx.enable_operator_progress_bars = enabled and verbose
    ctx.print_on_execution_start = verbose
