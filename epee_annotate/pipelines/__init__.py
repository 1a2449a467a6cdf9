"""Ray Data batch jobs: EHR exports and image archives -> Parquet (see docs/batch_jobs.md).

Modules: ``jobs`` (``run_notes_job``, ``run_images_job`` and their option dataclasses),
``notes`` / ``images`` (the per-actor annotators), ``sources`` (a Ray Data adapter over the
``formats`` readers), ``schema`` (the explicit output schema and its metadata), ``publish`` (the
job's output sink: datasets, side files, ``_SUCCESS`` manifest), ``output`` (all-or-nothing local
directories), ``summary`` (run summary), ``runtime`` (Ray session, actor pool settings, resource
checks), ``errors`` (setting errors the command line maps to its flags). Nothing here prints or
changes process-wide state.
Importing this package is cheap: Ray is imported only when a job runs.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_notes_job": "jobs", "run_images_job": "jobs", "NotesJob": "jobs", "ImagesJob": "jobs",
    "JobOptions": "jobs", "ActorSettings": "runtime", "PipelineSource": "notes", "read_job_metadata": "schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
