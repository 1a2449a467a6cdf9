"""The two batch jobs: read (Ray Data) -> annotate (actor pool) -> write Parquet -> summary.

``run_notes_job`` and ``run_images_job`` are what the ``annotate-notes`` / ``annotate-images``
commands call. Every input yields at least one row; the dataset appears at ``out`` only when
the whole job succeeded (see ``output.staged_output``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from .. import __version__
from ..policy_settings import given_settings, policy_overrides, resolve_policy
from ..vocab import AUTOCAST_MODES, FRAME_MODES
from .errors import SettingError
from .notes import NoteAnnotator, NoteColumns, PipelineSource, component_info
from .output import check_output, staged_output
from .runtime import ActorSettings, bound_actor_start, check_cluster_fits, configure_progress, ray_session
from .schema import STATUS_ERROR, input_row, output_schema, rows_to_table, with_job_metadata
from .summary import format_summary, summarize, write_summary

logger = logging.getLogger(__name__)


@dataclass
class JobOptions:
    """Knobs shared by both jobs."""

    out: str
    overwrite: bool = False
    actors: ActorSettings = field(default_factory=ActorSettings)
    batch_size: int = 64  # inputs per actor call (and per nlp.pipe batch)
    model_batch_size: int = 32  # model inputs per forward pass
    address: str | None = None
    entropy: float | None = None
    patience: int | None = None
    budget: int | None = None
    autocast: str | None = None
    partition_by_task: bool = False
    include_text: bool = False
    progress: bool = True
    worker_logs: bool = False
    verbose: bool = False  # Ray's start-up and per-operator logs (quiet by default)
    rows_per_file: int | None = 100_000
    actor_start_timeout_s: float = 600.0  # the longest wait for the actor pool (model loading included)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.model_batch_size < 1:
            raise SettingError("batch sizes must be >= 1", "batch_size", "model_batch_size")
        if self.autocast is not None and self.autocast not in AUTOCAST_MODES:
            raise SettingError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}; got {self.autocast!r}",
                               "autocast")
        if self.actor_start_timeout_s <= 0:
            raise SettingError("the actor start timeout must be > 0 seconds", "actor_start_timeout_s")
        resolve_policy(self.policy_knobs, prefix="--")  # conflicting policy flags: one clear error, both jobs

    @property
    def policy_knobs(self) -> dict[str, Any] | None:
        """The policy settings given (None: each checkpoint's default)."""
        return given_settings(asdict(self)) or None

    def parameters(self) -> dict[str, Any]:
        """Job parameters for the output metadata."""
        params = asdict(self)
        params["out"] = str(Path(self.out).expanduser().resolve())
        return params


@dataclass
class NotesJob:
    inputs: Sequence[str]
    source: PipelineSource
    options: JobOptions
    id_column: str = "id"
    text_column: str = "text"
    keep_columns: Sequence[str] = ()
    fmt: str | None = None
    annotator: type = NoteAnnotator  # the actor class (tests inject a subclass that fails on purpose)


@dataclass
class ImagesJob:
    checkpoint: str
    options: JobOptions
    inputs: Sequence[str] = ()
    npz: str | None = None
    split: str = "val"
    frames: str = "middle"
    task_name: str = "image"

    def __post_init__(self) -> None:
        if bool(self.inputs) == bool(self.npz):
            raise SettingError("give image files/directories or an npz archive, not both (and not neither)",
                               "inputs", "npz")
        if self.frames not in FRAME_MODES:
            raise SettingError(f"frames must be one of {FRAME_MODES}, got {self.frames!r}", "frames")
        if self.options.include_text:
            raise SettingError("include_text applies to the notes job only", "include_text")


def _threads(actors: ActorSettings) -> int:
    return max(1, int(actors.cpus_per_actor))


def _write(ds, staging: Path, schema: pa.Schema, options: JobOptions) -> None:
    """Write with the explicit schema; an input with no rows still gets one (empty) file with it."""
    partition = ["task"] if options.partition_by_task else None
    rows_per_file = None if partition else options.rows_per_file
    ds.write_parquet(str(staging), schema=schema, partition_cols=partition, min_rows_per_file=rows_per_file)
    if not any(staging.rglob("*.parquet")):
        import pyarrow.parquet as pq

        pq.write_table(rows_to_table([], schema).replace_schema_metadata(schema.metadata), staging / "empty.parquet")


def _start(options: JobOptions) -> None:
    """Checks and settings once Ray is up: the pool must fit the cluster, its start must be bounded."""
    import ray

    check_cluster_fits(options.actors, ray.cluster_resources())
    configure_progress(options.progress, options.verbose)
    bound_actor_start(options.actor_start_timeout_s)


def _with_unreadable(ds, rows: list[dict[str, Any]], schema: pa.Schema):
    """``ds`` plus one error row per unreadable input file (``ds`` may be None: no readable file)."""
    if not rows:
        return ds
    import ray.data

    errors = ray.data.from_arrow(rows_to_table(rows, schema))
    return errors if ds is None else ds.union(errors)


def _finish(ds, schema: pa.Schema, options: JobOptions, job: str, started: float, ray_start_s: float) -> dict[str, Any]:
    from ray.exceptions import GetTimeoutError

    out = check_output(options.out, options.overwrite)
    pipeline_started = time.perf_counter()
    with staged_output(out, options.overwrite) as staging:
        try:
            _write(ds, staging, schema, options)
        except GetTimeoutError as error:
            raise TimeoutError(
                f"the {options.actors.num_actors} annotation actor(s) did not start within "
                f"{options.actor_start_timeout_s:g} s (each needs {options.actors.cpus_per_actor:g} CPU"
                f"{f', {options.actors.gpus_per_actor:g} GPU' if options.actors.gpus_per_actor else ''}); "
                "the cluster may be busy or too small, or loading the model is slow"
            ) from error
        pipeline_s = time.perf_counter() - pipeline_started
        timings = {"pipeline_s": pipeline_s, "ray_start_s": ray_start_s, "wall_s": time.perf_counter() - started}
        summary = summarize(staging, options.partition_by_task, timings, job)
        summary["output"] = str(out)
        write_summary(summary, staging)
    print(format_summary(summary), flush=True)
    return summary


def run_notes_job(job: NotesJob) -> dict[str, Any]:
    """Annotate an EHR export with a spaCy/medspaCy EPEE pipeline; returns the run summary."""
    from .sources import note_passthrough_fields, read_notes, resolve_note_inputs, unreadable_inputs

    started = time.perf_counter()
    options = job.options
    check_output(options.out, options.overwrite)  # refuse before any slow work
    fmt, listed = resolve_note_inputs(job.inputs, job.fmt)
    files, unreadable = unreadable_inputs(listed)
    columns = NoteColumns(fmt, job.id_column, job.text_column, tuple(job.keep_columns))
    passthrough = note_passthrough_fields(fmt, files, job.id_column, job.text_column, job.keep_columns)
    settings = {**policy_overrides(options.policy_knobs), "batch_size": options.model_batch_size,
                "device": options.actors.device, "autocast": options.autocast}
    # Load the pipeline once here (on CPU) to validate it and record checkpoints, labels, policies.
    components = component_info(job.source.load({**settings, "device": "cpu", "autocast": None}))
    schema = output_schema("notes", passthrough, options.include_text)
    schema = with_job_metadata(schema, {
        "package_version": __version__, "job": "notes", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "components": components, "pipeline": job.source.describe(),
        "inputs": {"format": fmt, "num_files": len(listed), "files": listed[:1000], "unreadable_files": len(unreadable),
                   "id_column": job.id_column, "text_column": job.text_column, "keep_columns": list(job.keep_columns)},
        "parameters": options.parameters(),
    })
    with ray_session(options.address, options.actors, options.worker_logs, options.verbose) as mode:
        ray_start_s = time.perf_counter() - started
        logger.info("notes job: %d %s file(s), Ray %s", len(files), fmt, mode)
        _start(options)
        ds = None
        if files:
            ds = options.actors.map_batches(
                read_notes(fmt, files, columns.read_columns),
                job.annotator,
                fn_constructor_kwargs={
                    "source": job.source, "columns": columns, "settings": settings,
                    "schema": schema.remove_metadata(), "pipe_batch_size": options.batch_size,
                    "include_text": options.include_text, "threads": _threads(options.actors),
                },
                batch_size=options.batch_size,
                batch_format="pyarrow",
            )
        errors = [input_row({"doc_id": None}, STATUS_ERROR, f"{Path(path).name}: {reason}")
                  for path, reason in unreadable.items()]
        return _finish(_with_unreadable(ds, errors, schema), schema, options, "notes", started, ray_start_s)


def run_images_job(job: ImagesJob) -> dict[str, Any]:
    """Classify DICOM/PNG/JPEG files or an npz split with a multi-exit image model; returns the summary."""
    from .images import ImageAnnotator, job_policy, load_image_model
    from ..imaging.classify import DECODE_ERROR_PREFIX
    from .sources import read_image_files, read_npz, resolve_image_inputs, unreadable_inputs

    started = time.perf_counter()
    options = job.options
    check_output(options.out, options.overwrite)
    model = load_image_model(job.checkpoint)  # validate on the driver; actors load their own copy
    policy = job_policy(options.policy_knobs, model.default_policy)
    passthrough: list[pa.Field] = []
    files: list[str] = []
    unreadable: dict[str, str] = {}
    if job.npz:
        inputs_meta = {"npz": str(Path(job.npz).resolve()), "split": job.split}
    else:
        listed = resolve_image_inputs(job.inputs)
        files, unreadable = unreadable_inputs(listed)
        inputs_meta = {"files": len(listed), "unreadable_files": len(unreadable), "frames": job.frames}
    with ray_session(options.address, options.actors, options.worker_logs, options.verbose) as mode:
        ray_start_s = time.perf_counter() - started
        _start(options)
        ds = None
        if job.npz:
            ds, label_field = read_npz(job.npz, job.split)
            passthrough = [label_field]
        elif files:
            ds = read_image_files(files)
        logger.info("images job: %s, Ray %s", inputs_meta, mode)
        schema = with_job_metadata(output_schema("images", passthrough), {
            "package_version": __version__, "job": "images", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "components": [{
                "task": job.task_name, "checkpoint_id": model.checkpoint_id, "checkpoint": str(job.checkpoint),
                "labels": list(model.labels), "num_layers": model.num_layers, "policy": policy.describe(),
                "policy_config": policy.to_dict(),
            }],
            "inputs": inputs_meta,
            "parameters": options.parameters(),
        })
        if ds is not None:
            ds = options.actors.map_batches(
                ds,
                ImageAnnotator,
                fn_constructor_kwargs={
                    "checkpoint": str(Path(job.checkpoint).resolve()), "schema": schema.remove_metadata(),
                    "task_name": job.task_name, "policy_knobs": options.policy_knobs,
                    "device": options.actors.device, "autocast": options.autocast, "frames": job.frames,
                    "model_batch_size": options.model_batch_size, "threads": _threads(options.actors),
                },
                batch_size=options.batch_size,
                batch_format="pyarrow",
            )
        errors = [{"doc_id": path, "path": path, "task": job.task_name, "kind": "image", "status": STATUS_ERROR,
                   "error": f"{DECODE_ERROR_PREFIX}{reason}"} for path, reason in unreadable.items()]
        return _finish(_with_unreadable(ds, errors, schema), schema, options, "images", started, ray_start_s)
