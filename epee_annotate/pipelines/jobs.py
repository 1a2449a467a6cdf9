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
from .notes import CrashSwitch, NoteAnnotator, NoteColumns, PipelineSource, component_info
from . import storage
from .publish import Staging, check_job_output, job_output
from .runtime import ActorSettings, configure_progress, ray_session
from .schema import output_schema, rows_to_table, with_job_metadata
from .summary import format_summary, summarize, write_summary

logger = logging.getLogger(__name__)
AUTOCAST = (None, "bf16", "fp16")
FRAMES = ("middle", "all", "mip")


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
    rows_per_file: int | None = 100_000
    resume: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.model_batch_size < 1:
            raise ValueError("--batch-size and --model-batch-size must be >= 1")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"--autocast must be one of bf16, fp16; got {self.autocast!r}")

    @property
    def policy_knobs(self) -> dict[str, Any] | None:
        knobs = {k: v for k, v in (("entropy", self.entropy), ("patience", self.patience),
                                     ("budget", self.budget)) if v is not None}
        return knobs or None

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
            raise ValueError("give image files/directories or --npz FILE, not both (and not neither)")
        if self.frames not in FRAMES:
            raise ValueError(f"--frames must be one of {FRAMES}, got {self.frames!r}")
        if self.options.include_text:
            raise ValueError("--include-text applies to the notes job only")


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


def _finish(ds, keys, schema: pa.Schema, options: JobOptions, job: str, started: float,
            ray_start_s: float) -> dict[str, Any]:
    """Write ``ds`` into the output staging area (checkpointed by ``keys`` with --resume), summarise, publish."""
    from .resume import checkpoint_config

    pipeline_started = time.perf_counter()
    with job_output(options.out, options.overwrite, options.resume) as staging:
        if staging.checkpoint:  # the dataset's own context: its write plans the checkpointing
            ds.context.checkpoint_config = checkpoint_config(keys, staging.checkpoint)
        _write(ds, staging, schema, options)
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
    from .sources import note_passthrough_fields, read_notes, resolve_note_inputs

    started = time.perf_counter()
    options = job.options
    check_job_output(options.out, options.overwrite, options.resume)  # refuse before any slow work
    fmt, files = resolve_note_inputs(job.inputs, job.fmt)
    columns = NoteColumns(fmt, job.id_column, job.text_column, tuple(job.keep_columns))
    passthrough = note_passthrough_fields(fmt, files, job.id_column, job.text_column, job.keep_columns)
    settings = {"policy": options.policy_knobs, "batch_size": options.model_batch_size,
                "device": options.actors.device, "autocast": options.autocast}
    # Load the pipeline once here (on CPU) to validate it and record checkpoints, labels, policies.
    components = component_info(job.source.load({**settings, "device": "cpu", "autocast": None}))
    schema = output_schema("notes", passthrough, options.include_text)
    schema = with_job_metadata(schema, {
        "package_version": __version__, "job": "notes", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "components": components, "pipeline": job.source.describe(),
        "inputs": {"format": fmt, "num_files": len(files), "files": files[:1000], "id_column": job.id_column, "text_column": job.text_column,
                   "keep_columns": list(job.keep_columns)},
        "parameters": options.parameters(),
    })
    # A resumed run adds Ray Data's checkpoint-filter actor (1 CPU) next to the annotators.
    with ray_session(options.address, options.actors, options.worker_logs, int(options.resume)) as mode:
        ray_start_s = time.perf_counter() - started
        logger.info("notes job: %d %s file(s), Ray %s", len(files), fmt, mode)
        configure_progress(options.progress)
        keys = NoteKeys(columns)
        if options.resume:
            check_resumable_ids(read_notes(fmt, files, columns.read_columns), keys)
        ds = options.actors.map_batches(
            read_notes(fmt, files, columns.read_columns),
            NoteAnnotator,
            fn_constructor_kwargs={
                "source": job.source, "columns": columns, "settings": settings, "schema": schema.remove_metadata(),
                "pipe_batch_size": options.batch_size, "include_text": options.include_text,
                "threads": _threads(options.actors), "crash": CrashSwitch.from_env(),
            },
            batch_size=options.batch_size,
            batch_format="pyarrow",
        )
        return _finish(ds, keys, schema, options, "notes", started, ray_start_s)


def run_images_job(job: ImagesJob) -> dict[str, Any]:
    """Classify DICOM/PNG/JPEG files or an npz split with a multi-exit image model; returns the summary."""
    from .images import ImageAnnotator, job_policy, load_image_model
    from .resume import PathKeys
    from .sources import read_image_files, read_npz, resolve_image_inputs

    started = time.perf_counter()
    options = job.options
    if options.resume and job.npz:
        raise ValueError("--resume needs file inputs; an --npz archive is read by the driver in one piece")
    check_job_output(options.out, options.overwrite, options.resume)
    model = load_image_model(job.checkpoint)  # validate on the driver; actors load their own copy
    policy = job_policy(options.policy_knobs, model.default_policy)
    passthrough: list[pa.Field] = []
    files: list[str] = []
    if job.npz:
        inputs_meta = {"npz": job.npz if storage.is_uri(job.npz) else str(Path(job.npz).resolve()), "split": job.split}
    else:
        files = resolve_image_inputs(job.inputs)
        inputs_meta = {"files": len(files), "frames": job.frames}
    # A resumed run adds Ray Data's checkpoint-filter actor (1 CPU) next to the annotators.
    with ray_session(options.address, options.actors, options.worker_logs, int(options.resume)) as mode:
        ray_start_s = time.perf_counter() - started
        configure_progress(options.progress)
        if job.npz:
            ds, label_field = read_npz(storage.fetch(job.npz), job.split)  # the driver reads it whole anyway
            passthrough = [label_field]
        else:
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
        ds = options.actors.map_batches(
            ds,
            ImageAnnotator,
            fn_constructor_kwargs={
                "checkpoint": checkpoint, "schema": schema.remove_metadata(),
                "task_name": job.task_name, "policy_knobs": options.policy_knobs, "device": options.actors.device,
                "autocast": options.autocast, "frames": job.frames, "model_batch_size": options.model_batch_size,
                "threads": _threads(options.actors), "crash": CrashSwitch.from_env(), "path_prefix": keys.prefix,
            },
            batch_size=options.batch_size,
            batch_format="pyarrow",
        )
        return _finish(ds, keys, schema, options, "images", started, ray_start_s)
