"""Ray session and actor-pool settings shared by the batch jobs."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator


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
            raise ValueError(f"--num-actors must be >= 1, got {self.num_actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"--cpus-per-actor must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise ValueError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")

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


def local_cpus(settings: ActorSettings, extra: int = 0) -> int:
    """Logical CPUs for an embedded Ray: the machine's cores, but always room for readers/writers.

    Actors hold their CPUs for the whole job; without a spare slot the read and write tasks
    would wait forever on a small machine. ``extra``: other actors the job needs (e.g. the
    checkpoint filter of a resumed run, one CPU).
    """
    needed = int(settings.num_actors * settings.cpus_per_actor + 0.999) + 1 + extra
    return max(os.cpu_count() or 1, needed)


@contextmanager
def ray_session(address: str | None, settings: ActorSettings, worker_logs: bool = False,
                extra_cpus: int = 0) -> Iterator[str]:
    """Use the running Ray, join ``address``/RAY_ADDRESS, or start an embedded local Ray; yield which."""
    import ray

    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=worker_logs)
        mode = f"cluster {address}"
    else:
        # GPUs are detected by Ray itself; CPUs are logical slots (see local_cpus).
        ray.init(num_cpus=local_cpus(settings, extra_cpus), include_dashboard=False, log_to_driver=worker_logs)
        mode = "local"
    try:
        yield mode
    finally:
        ray.shutdown()


def configure_progress(enabled: bool) -> None:
    """Turn Ray Data's progress bars on or off for this driver."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = enabled
    ctx.enable_operator_progress_bars = enabled
    # Only the progress bars: per-operator logs would be noise in a job's output.
    ctx.print_on_execution_start = enabled
