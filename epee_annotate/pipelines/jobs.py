"""The two batch jobs: read (Ray Data) -> annotate (actor pool) -> write Parquet -> summary.

``run_notes_job`` and ``run_images_job`` are what the ``annotate-notes`` / ``annotate-images``
commands call. Every input yields at least one row; the dataset appears at ``out`` only when
the whole job succeeded (see ``publish.job_output``: a rename locally, a staging prefix and a
``_SUCCESS`` manifest on object storage). ``--resume`` continues an interrupted job (``resume``).
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
from ..runtimes import RuntimeSettingError, check_runtime
from ..vocab import AUTOCAST_MODES, FRAME_MODES
from . import storage
from .errors import SettingError
from .notes import NoteAnnotator, NoteColumns, PipelineSource, component_info
from .publish import Staging, check_job_output, job_output
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
    model_batch_tokens: int | None = None  # notes: a budget of padded tokens per forward pass (size still caps rows)
    address: str | None = None
    entropy: float | None = None
    patience: int | None = None
    budget: int | None = None
    autocast: str | None = None
    runtime: str | None = None  # runtimes.RUNTIMES; None = torch
    partition_by_task: bool = False
    include_text: bool = False
    progress: bool = True
    worker_logs: bool = False
    verbose: bool = False  # Ray's start-up and per-operator logs (quiet by default)
    rows_per_file: int | None = 100_000
    actor_start_timeout_s: float = 600.0  # the longest wait for the actor pool (model loading included)
    resume: bool = False

    @property
    def extra_cpus(self) -> int:
        """CPUs the job needs beyond the pool's and the reader's: a resumed run's checkpoint-filter actor."""
        return int(self.resume)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.model_batch_size < 1:
            raise SettingError("batch sizes must be >= 1", "batch_size", "model_batch_size")
        if self.model_batch_tokens is not None and self.model_batch_tokens < 1:
            raise SettingError("the model batch token budget must be >= 1", "model_batch_tokens")
        if self.autocast is not None and self.autocast not in AUTOCAST_MODES:
            raise SettingError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}; got {self.autocast!r}",
                               "autocast")
        try:
            check_runtime(self.runtime, self.actors.device, self.autocast)
        except RuntimeSettingError as error:
            raise SettingError(str(error), "runtime") from None
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
        params["out"] = self.out if storage.is_uri(self.out) else str(Path(self.out).expanduser().resolve())
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
        if self.options.model_batch_tokens is not None:
            raise SettingError("a token budget applies to text; images are all one size: set the model batch size",
                               "model_batch_tokens")


def _threads(actors: ActorSettings) -> int:
    return max(1, int(actors.cpus_per_actor))


def _write(ds, staging: Staging, schema: pa.Schema, options: JobOptions) -> None:
    """Write with the explicit schema; an input with no rows still gets one (empty) file with it."""
    partition = ["task"] if options.partition_by_task else None
    rows_per_file = None if partition else options.rows_per_file
    filesystem, path = storage.resolve(staging.data)
    ds.write_parquet(path, filesystem=filesystem, schema=schema, partition_cols=partition,
                     min_rows_per_file=rows_per_file)
    if not (storage.exists(staging.data) and storage.list_files(staging.data, lambda p: p.endswith(".parquet"))):
        import pyarrow.parquet as pq

        filesystem.create_dir(path, recursive=True)
        pq.write_table(rows_to_table([], schema).replace_schema_metadata(schema.metadata), f"{path}/empty.parquet",
                       filesystem=filesystem)


def _start(options: JobOptions) -> None:
    """Checks and settings once Ray is up: the pool must fit the cluster, its start must be bounded."""
    import ray

    check_cluster_fits(options.actors, ray.cluster_resources(), options.extra_cpus)
    configure_progress(options.progress, options.verbose)
    bound_actor_start(options.actor_start_timeout_s)


def _with_unreadable(ds, rows: list[dict[str, Any]], schema: pa.Schema):
    """``ds`` plus one error row per unreadable input file (``ds`` may be None: no readable file)."""
    if not rows:
        return ds
    import ray.data

    errors = ray.data.from_arrow(rows_to_table(rows, schema))
    return errors if ds is None else ds.union(errors)


UNREADABLE_PART = "unreadable-{i}.parquet"  # fixed name: a resumed run rewrites it, never adds a copy


def _write_unreadable(rows: list[dict[str, Any]], staging: Staging, schema: pa.Schema, options: JobOptions) -> None:
    """The unreadable-file error rows as their own part (resume: Ray does not checkpoint a union)."""
    import pyarrow.dataset as pads

    filesystem, path = storage.resolve(staging.data)
    table = rows_to_table(rows, schema).replace_schema_metadata(schema.metadata)
    # Partitioned as Ray's write_parquet does it (pyarrow's write_dataset, hive flavor).
    pads.write_dataset(table, path, format="parquet", filesystem=filesystem,
                       partitioning=["task"] if options.partition_by_task else None, partitioning_flavor="hive",
                       basename_template=UNREADABLE_PART, existing_data_behavior="overwrite_or_ignore")


def _finish(ds, keys, unreadable: list[dict[str, Any]], schema: pa.Schema, options: JobOptions, job: str,
            started: float, ray_start_s: float) -> dict[str, Any]:
    """Write ``ds`` and the ``unreadable`` error rows into the output staging area, summarise, publish.

    With --resume ``ds`` is checkpointed by ``keys`` and the error rows are written apart from it.
    """
    from ray.exceptions import GetTimeoutError

    from .resume import checkpoint_config

    pipeline_started = time.perf_counter()
    with job_output(options.out, options.overwrite, options.resume) as staging:
        try:
            if not staging.checkpoint:
                _write(_with_unreadable(ds, unreadable, schema), staging, schema, options)
            else:
                if ds is not None:  # the dataset's own context: its write plans the checkpointing
                    ds.context.checkpoint_config = checkpoint_config(keys, staging.checkpoint)
                    _write(ds, staging, schema, options)
                if unreadable:
                    _write_unreadable(unreadable, staging, schema, options)
        except GetTimeoutError as error:
            raise TimeoutError(
                f"the {options.actors.num_actors} annotation actor(s) did not start within "
                f"{options.actor_start_timeout_s:g} s (each needs {options.actors.cpus_per_actor:g} CPU"
                f"{f', {options.actors.gpus_per_actor:g} GPU' if options.actors.gpus_per_actor else ''}); "
                "the cluster may be busy or too small, or loading the model is slow"
            ) from error
        pipeline_s = time.perf_counter() - pipeline_started
        timings = {"pipeline_s": pipeline_s, "ray_start_s": ray_start_s, "wall_s": time.perf_counter() - started}
        summary = summarize(staging.data, options.partition_by_task, timings, job)
        summary["output"] = staging.out
        write_summary(summary, staging.data)
        staging.extra["rows"] = summary["rows"]
    print(format_summary(summary), flush=True)
    return summary


def run_notes_job(job: NotesJob) -> dict[str, Any]:
    """Annotate an EHR export with a spaCy/medspaCy EPEE pipeline; returns the run summary."""
    from .resume import NoteKeys, check_resumable_ids
    from .sources import note_passthrough_fields, read_notes, resolve_note_inputs, unreadable_inputs

    started = time.perf_counter()
    options = job.options
    check_job_output(options.out, options.overwrite, options.resume)  # refuse before any slow work
    fmt, listed = resolve_note_inputs(job.inputs, job.fmt)
    files, unreadable = unreadable_inputs(listed)
    columns = NoteColumns(fmt, job.id_column, job.text_column, tuple(job.keep_columns))
    passthrough = note_passthrough_fields(fmt, files, job.id_column, job.text_column, job.keep_columns)
    settings = {**policy_overrides(options.policy_knobs), "batch_size": options.model_batch_size,
                "batch_tokens": options.model_batch_tokens,
                "device": options.actors.device, "autocast": options.autocast, "runtime": options.runtime}
    # Load the pipeline once here (on CPU) to validate it and record checkpoints, labels, policies; an ONNX
    # runtime exports its graphs here once, so the actors find them cached.
    components = component_info(job.source.load({**settings, "device": "cpu", "autocast": None}))
    schema = output_schema("notes", passthrough, options.include_text)
    schema = with_job_metadata(schema, {
        "package_version": __version__, "job": "notes", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "components": components, "pipeline": job.source.describe(),
        "inputs": {"format": fmt, "num_files": len(listed), "files": listed[:1000], "unreadable_files": len(unreadable),
                   "id_column": job.id_column, "text_column": job.text_column, "keep_columns": list(job.keep_columns)},
        "parameters": options.parameters(),
    })
    with ray_session(options.address, options.actors, options.worker_logs, options.verbose,
                     options.extra_cpus) as mode:
        ray_start_s = time.perf_counter() - started
        logger.info("notes job: %d %s file(s), Ray %s", len(files), fmt, mode)
        _start(options)
        keys = NoteKeys(columns)
        ds = None
        if files:
            if options.resume:
                check_resumable_ids(read_notes(fmt, files, columns.read_columns), keys)
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
        return _finish(ds, keys, errors, schema, options, "notes", started, ray_start_s)


def run_images_job(job: ImagesJob) -> dict[str, Any]:
    """Classify DICOM/PNG/JPEG files or an npz split with a multi-exit image model; returns the summary."""
    from .images import ImageAnnotator, job_policy, load_image_model
    from ..imaging.classify import DECODE_ERROR_PREFIX
    from .resume import PathKeys
    from .sources import read_image_files, read_npz, resolve_image_inputs, unreadable_inputs

    started = time.perf_counter()
    options = job.options
    if options.resume and job.npz:
        raise SettingError("resuming needs file inputs; an npz archive is read by the driver in one piece",
                           "resume", "npz")
    check_job_output(options.out, options.overwrite, options.resume)
    # Validate on the driver (an ONNX runtime exports its graphs once here); actors load their own copy.
    model = load_image_model(job.checkpoint, runtime=options.runtime)
    policy = job_policy(options.policy_knobs, model.default_policy)
    passthrough: list[pa.Field] = []
    files: list[str] = []
    unreadable: dict[str, str] = {}
    if job.npz:
        inputs_meta = {"npz": job.npz if storage.is_uri(job.npz) else str(Path(job.npz).resolve()), "split": job.split}
    else:
        listed = resolve_image_inputs(job.inputs)
        files, unreadable = unreadable_inputs(listed)
        inputs_meta = {"files": len(listed), "unreadable_files": len(unreadable), "frames": job.frames}
    with ray_session(options.address, options.actors, options.worker_logs, options.verbose,
                     options.extra_cpus) as mode:
        ray_start_s = time.perf_counter() - started
        _start(options)
        ds = None
        if job.npz:
            ds, label_field = read_npz(storage.fetch(job.npz), job.split)  # the driver reads it whole anyway
            passthrough = [label_field]
        elif files:
            ds = read_image_files(files)
        # Image ids are file paths, unique by construction (resolve_image_inputs): nothing to check.
        keys = PathKeys(storage.scheme(files[0]) + "://" if files and storage.is_uri(files[0]) else "")
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
        checkpoint = job.checkpoint if storage.is_uri(job.checkpoint) else str(Path(job.checkpoint).resolve())
        if ds is not None:
            ds = options.actors.map_batches(
                ds,
                ImageAnnotator,
                fn_constructor_kwargs={
                    "checkpoint": checkpoint, "schema": schema.remove_metadata(),
                    "task_name": job.task_name, "policy_knobs": options.policy_knobs,
                    "device": options.actors.device, "autocast": options.autocast, "runtime": options.runtime,
                    "frames": job.frames,
                    "model_batch_size": options.model_batch_size, "threads": _threads(options.actors),
                    "path_prefix": keys.prefix,
                },
                batch_size=options.batch_size,
                batch_format="pyarrow",
            )
        errors = [{"doc_id": path, "path": path, "task": job.task_name, "kind": "image", "status": STATUS_ERROR,
                   "error": f"{DECODE_ERROR_PREFIX}{reason}"} for path, reason in unreadable.items()]
        return _finish(ds, keys, errors, schema, options, "images", started, ray_start_s)
