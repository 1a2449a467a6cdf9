"""Ray session and actor-pool settings shared by the batch jobs.

No process-wide side effects: a job starts Ray only when none is running (with Ray's own
``logging_level`` option: ERROR, INFO with ``verbose``) and stops it at the end, and it sets its
Ray Data options (progress, actor start bound) on the current ``DataContext`` for its own
duration only (``job_data_context``). How quiet a terminal is (Ray's loggers, the progress line
interval, the core worker's native log level) is the command line's business (``cli.quiet``).

Why ``logging_level`` and not ``ray.init(logging_config=...)``: Ray's ``LoggingConfig`` also
installs a handler and a level on the driver's root logger, i.e. the caller's own logging.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..filesystem import TIMEOUT_VARIABLE, storage_timeout_s
from . import reaper
from .errors import SettingError, WaitTimeoutError

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


def wait_for_free_resources(settings: ActorSettings, available: Callable[[], dict[str, float]],
                            timeout_s: float, extra_cpus: float = 0, poll_s: float = 0.5) -> float:
    """Wait until the cluster has the job's CPUs and GPUs free (not held by other jobs); seconds waited.

    On a shared cluster another job may hold what ``check_cluster_fits`` counted: without this wait
    the actors or the reader would queue behind it forever. ``available`` is ``ray.available_resources``.
    """
    cpus = settings.cpus_needed(extra_cpus)
    gpus = settings.num_actors * settings.gpus_per_actor
    started = time.monotonic()
    while True:
        free = available()
        free_cpus, free_gpus = float(free.get("CPU", 0.0)), float(free.get("GPU", 0.0))
        if free_cpus + 1e-9 >= cpus and free_gpus + 1e-9 >= gpus:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout_s:
            wanted = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
            have = f"{free_cpus:g} CPUs" + (f" and {free_gpus:g} GPUs" if gpus else "")
            raise WaitTimeoutError(
                f"waited {timeout_s:g} s for {wanted} free on the Ray cluster (the actor pool and its reader) "
                f"and only {have} became free; other work holds the rest", "actor_start_timeout_s")
        time.sleep(poll_s)


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
    """Use the running Ray, join ``address``/RAY_ADDRESS, or start an embedded local Ray; yield which.

    A Ray started here is shut down at the end, and the environment variables ``ray.init`` sets in
    this process (e.g. ``RAY_USAGE_STATS_ENABLED``, ``PYTHONBREAKPOINT``) are put back as they were.
    Workers get this process's storage timeout (``filesystem.storage_timeout_s``): a local Ray's
    inherit this environment, a joined cluster's get it in the job's runtime environment; an
    already running Ray's workers keep the one they were started with.
    """
    import ray

    if ray.is_initialized():
        yield "existing"
        return
    environment = dict(os.environ)
    address = address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.ERROR
    runtime_env = {"env_vars": {TIMEOUT_VARIABLE: f"{storage_timeout_s():g}"}} if address else None
    watcher = None
    try:
        # ray.init's native start-up line ("Set ray log level ...") is the only thing hidden here.
        with _native_stderr_silenced(not verbose):
            if address:
                ray.init(address=address, log_to_driver=worker_logs, logging_level=level, runtime_env=runtime_env)
                mode = f"cluster {address}"
            else:
                # A local Ray's workers end with this driver even when it is killed (``reaper``).
                watcher = reaper.start()
                # GPUs are detected by Ray itself; CPUs are logical slots (see local_cpus).
                ray.init(num_cpus=local_cpus(settings, extra_cpus), include_dashboard=False,
                         log_to_driver=worker_logs, logging_level=level)
                mode = "local"
        try:
            yield mode
        finally:
            ray.shutdown()
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.wait(timeout=10)
        _restore_environment(environment)


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextmanager
def job_data_context(progress: bool, verbose: bool, actor_start_timeout_s: float) -> Iterator[None]:
    """The job's Ray Data options on the current ``DataContext``, restored when the job ends.

    Progress: the job draws its own bar with a total (``progress.job_progress``); Ray Data's bars
    (which show "0/?" for these reads) only with ``verbose``, per-operator ones too. The actor start
    bound (``wait_for_min_actors_s``): without it Ray Data waits forever when the actors cannot be
    placed; with it the job fails with ``ray.exceptions.GetTimeoutError``, which the jobs turn into
    a message (``jobs._finish``).
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    values = {"enable_progress_bars": progress and verbose, "enable_operator_progress_bars": progress and verbose,
              "print_on_execution_start": verbose,
              "wait_for_min_actors_s": max(1, int(math.ceil(actor_start_timeout_s)))}
    saved = {name: getattr(context, name) for name in values}
    for name, value in values.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
