"""The two batch jobs: read (Ray Data) -> annotate (actor pool) -> write Parquet -> summary.

``run_notes_job`` and ``run_images_job`` are what the ``annotate-notes`` / ``annotate-images``
commands call; they return the run summary (a dict) and print nothing. Every input yields at
least one row; the output appears at ``out`` only when the whole job succeeded, with the rows
in ``out/annotations/`` and the ``_SUCCESS`` manifest and summary beside it (``publish``).
``resume`` continues an interrupted job (``resume`` module).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from .. import __version__
from ..formats import BAD_RECORD_MODES, BadRecordLimit, ReadOptions
from ..policies import PolicySettingError, given_settings, policy_overrides, resolve_policy, setting_keys
from ..runtimes import RuntimeSettingError, check_runtime
from ..vocab import AUTOCAST_MODES, DEFAULT_MAX_FIELD_LINES, FRAME_MODES
from .. import filesystem, storage
from ..extras import require
from .errors import SettingError, WaitTimeoutError
from ..omop import NoteNlpWriter, has_context
from .note_nlp import NoteNlpOptions, check_note_id_type
from .notes import NoteAnnotator, NoteColumns, PipelineSource, component_info
from .identity import (check_same_job, fingerprint, listed_bytes, read_identity, summary as identity_summary,
                       write_identity)
from .lock import OutputLock
from .progress import job_progress
from .publish import MAIN_DATASET, JobSink, claim_output, identity_location, job_output
from .runtime import ActorSettings, check_cluster_fits, job_data_context, ray_session, wait_for_free_resources
from .schema import STATUS_ERROR, input_row, output_schema, rows_to_table, weights_record, with_job_metadata
from .summary import summarize, write_summary

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
    # Exit-policy settings (flat keys of the policy registry; empty: each checkpoint's default).
    policy: dict[str, Any] = field(default_factory=dict)
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
    trust_unhashed_weights: bool = False  # load checkpoints that record no weights hash (recorded in the metadata)
    lock_lease_s: float = 60.0  # the output lock's lease: a holder silent this long is taken over

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
        unknown = sorted(set(self.policy) - set(setting_keys()))
        if unknown:
            raise SettingError(f"unknown exit-policy settings {unknown}; known: {', '.join(setting_keys())}", "policy")
        try:
            resolve_policy(self.policy)  # conflicting settings: one clear error, both jobs
        except PolicySettingError as error:
            raise SettingError(str(error), *given_settings(self.policy)) from None

    @property
    def policy_knobs(self) -> dict[str, Any] | None:
        """The policy settings given (None: each checkpoint's default)."""
        return given_settings(self.policy) or None

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
    encoding: str = "utf-8"  # declared text encoding of the inputs (``formats.ReadOptions``)
    on_bad_record: str = "permissive"  # malformed records: error rows, or fail at the first one
    max_bad_records: str | None = None  # "N" or "F%": more bad records fail the job, nothing published
    max_field_lines: int = DEFAULT_MAX_FIELD_LINES  # CSV/TSV: a longer quoted field is a quote left open
    note_nlp: NoteNlpOptions | None = None  # also write the OMOP NOTE_NLP dataset (``note_nlp``)
    # Share of docs also run to full depth (``calibration.audit``); None: each component's setting
    # (by default DEFAULT_AUDIT_FRACTION when its checkpoint carries a calibration, else 0).
    audit_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.on_bad_record not in BAD_RECORD_MODES:
            raise SettingError(f"on_bad_record must be one of {', '.join(BAD_RECORD_MODES)}; got "
                               f"{self.on_bad_record!r}", "on_bad_record")
        if self.max_field_lines < 1:
            raise SettingError(f"max_field_lines must be >= 1; got {self.max_field_lines}", "max_field_lines")
        try:
            limit = None if self.max_bad_records is None else BadRecordLimit.parse(self.max_bad_records)
        except ValueError as error:
            raise SettingError(str(error), "max_bad_records") from None
        try:
            self.read_options = ReadOptions(self.encoding, self.on_bad_record, max_field_lines=self.max_field_lines,
                                            max_bad_records=limit)
        except ValueError as error:  # an unknown encoding
            raise SettingError(str(error), "encoding") from None
        if self.audit_fraction is not None and not 0.0 <= self.audit_fraction <= 1.0:
            raise SettingError(f"the audit fraction must be in [0, 1], got {self.audit_fraction}", "audit_fraction")


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


def _partition(options: JobOptions) -> list[str]:
    return ["task"] if options.partition_by_task else []


@contextmanager
def _job_on_ray(options: JobOptions) -> Iterator[str]:
    """Ray for one job (see ``runtime``): the pool must fit the cluster, its start is bounded; yields Ray's mode."""
    with ray_session(options.address, options.actors, options.worker_logs, options.verbose,
                     options.extra_cpus) as mode:
        import ray

        check_cluster_fits(options.actors, ray.cluster_resources(), options.extra_cpus)
        wait_for_free_resources(options.actors, ray.available_resources, options.actor_start_timeout_s,
                                options.extra_cpus)
        with job_data_context(options.progress, options.verbose, options.actor_start_timeout_s):
            yield mode


def _with_unreadable(ds, rows: list[dict[str, Any]], schema: pa.Schema):
    """``ds`` plus one error row per unreadable input file (``ds`` may be None: no readable file)."""
    if not rows:
        return ds
    import ray.data

    errors = ray.data.from_arrow(rows_to_table(rows, schema))
    return errors if ds is None else ds.union(errors)


UNREADABLE_PART = "unreadable-{i}.parquet"  # fixed name: a resumed run rewrites it, never adds a copy


def _write_unreadable(rows: list[dict[str, Any]], sink: JobSink, schema: pa.Schema, options: JobOptions) -> None:
    """The unreadable-file error rows as their own part (resume: Ray does not checkpoint a union)."""
    table = rows_to_table(rows, schema).replace_schema_metadata(schema.metadata)
    sink.write_table(table, MAIN_DATASET, UNREADABLE_PART, _partition(options))


def _finish(ds, keys, unreadable: list[dict[str, Any]], schema: pa.Schema, options: JobOptions, job: str,
            started: float, ray_start_s: float, lock: OutputLock, identity: dict[str, Any],
            bad_limit: BadRecordLimit | None = None, skipped: dict[str, str] | None = None,
            derived: Callable[[JobSink], list[str]] | None = None, progress: Any = None) -> dict[str, Any]:
    """Write ``ds`` and the ``unreadable`` error rows into the output staging area, summarise, publish.

    With --resume ``ds`` is checkpointed by ``keys`` and the error rows are written apart from it.
    Past ``bad_limit`` (counted in the written rows) the job fails before anything is published.
    ``skipped`` (listed files not read, with why) goes into the summary and the manifest.
    ``derived`` writes further datasets from the written rows and returns their names.
    ``progress``: the job's progress counter (``progress.job_progress``), also fed by resume's filter.
    """
    from ray.exceptions import GetTimeoutError

    from .resume import checkpoint_config, finish_interrupted_commits

    pipeline_started = time.perf_counter()
    write = dict(schema=schema, partition_cols=_partition(options), min_rows_per_file=options.rows_per_file)
    with job_output(options.out, options.overwrite, options.resume, lock) as sink:
        sink.extra["identity"] = identity_summary(identity)
        sink.extra["skipped_files"] = _skipped_report(skipped or {})
        if options.resume:
            write_identity(identity_location(options.out), identity)
        try:
            if not sink.checkpoint:
                sink.write_ray(_with_unreadable(ds, unreadable, schema), MAIN_DATASET, **write)
            else:
                if ds is not None:  # the dataset's own context: its write plans the checkpointing
                    finished = finish_interrupted_commits(sink.checkpoint)
                    if finished:
                        logger.info("resume: completed %d checkpoint commit(s) the interrupted run left half done",
                                    finished)
                    ds.context.checkpoint_config = checkpoint_config(keys, sink.checkpoint, progress)
                    sink.write_ray(ds, MAIN_DATASET, **write)
                if unreadable:
                    _write_unreadable(unreadable, sink, schema, options)
        except GetTimeoutError as error:
            raise WaitTimeoutError(
                f"the {options.actors.num_actors} annotation actor(s) did not start within "
                f"{options.actor_start_timeout_s:g} s (each needs {options.actors.cpus_per_actor:g} CPU"
                f"{f', {options.actors.gpus_per_actor:g} GPU' if options.actors.gpus_per_actor else ''}); "
                "the cluster may be busy or too small, or loading the model is slow", "actor_start_timeout_s",
            ) from error
        names = derived(sink) if derived is not None else []
        pipeline_s = time.perf_counter() - pipeline_started
        timings = {"pipeline_s": pipeline_s, "ray_start_s": ray_start_s, "wall_s": time.perf_counter() - started}
        summary = summarize(sink.staged(MAIN_DATASET), options.partition_by_task, timings, job)
        if bad_limit is not None:
            bad_limit.check(summary["bad_records"], summary["documents"])
        summary["skipped_files"] = sink.extra["skipped_files"]
        summary["output"] = sink.out
        summary["dataset"] = sink.location(MAIN_DATASET)
        if names:
            summary["datasets"] = {name: sink.location(name) for name in names}
        if "audit" in sink.extra:
            summary["audit"] = sink.extra["audit"]
        write_summary(summary, sink)
    return summary


SKIPPED_LISTED = 1000  # skipped files named in the summary and manifest (all are counted)


def _skipped_report(skipped: dict[str, str]) -> dict[str, Any]:
    """Files left out of the job: how many, per reason, and the first ones with their reason."""
    reasons: dict[str, int] = {}
    for reason in skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    listed = [{"path": filesystem.display(p), "reason": r} for p, r in sorted(skipped.items())[:SKIPPED_LISTED]]
    return {"count": len(skipped), "reasons": reasons, "files": listed}


def _unreadable_message(path: str, reason: str) -> str:
    return f"{filesystem.display(Path(path).name)}: {reason}"


def _metadata(job: str, components: list[dict[str, Any]], inputs: dict[str, Any], options: JobOptions,
              **more: Any) -> dict[str, Any]:
    """The provenance every output records in its schema metadata (``schema.job_metadata``)."""
    return {"package_version": __version__, "job": job, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "components": components, **more, "inputs": inputs, "parameters": options.parameters()}


@contextmanager
def _claimed(options: JobOptions, sources: Sequence[str | None]) -> Iterator[OutputLock]:
    """What can be refused before any slow work (Ray missing, an output that may not be written, another
    job on it), then the output's lock for the whole job (``publish.claim_output``)."""
    require("ray.data", "a batch job")
    with claim_output(options.out, options.overwrite, options.resume, [s for s in sources if s],
                      options.lock_lease_s) as lock:
        yield lock


def _start_identity(options: JobOptions, inputs: Sequence[str], models: Any, settings: dict[str, Any]) -> dict:
    """The job's fingerprint; a resumable run refuses, naming what differs, when the interrupted run's differs."""
    identity = fingerprint(inputs, models, {**settings, "policy": options.policy_knobs, "autocast": options.autocast,
                                            "device": options.actors.device,
                                            "partition_by_task": options.partition_by_task})
    if options.resume:  # recorded once the run stages something (``_finish``)
        check_same_job(read_identity(identity_location(options.out)), identity)
    return identity


def run_notes_job(job: NotesJob) -> dict[str, Any]:
    """Annotate an EHR export with a spaCy/medspaCy EPEE pipeline; returns the run summary."""
    source = job.source
    with _claimed(job.options, [*job.inputs, source.pipeline, source.config, source.checkpoint]) as lock:
        return _run_notes_job(job, lock, time.perf_counter())


def _run_notes_job(job: NotesJob, lock: OutputLock, started: float) -> dict[str, Any]:
    from .resume import NoteKeys, check_resumable_ids
    from .sources import note_passthrough_fields, read_notes, resolve_note_inputs, unreadable_inputs

    options = job.options
    skipped: dict[str, str] = {}
    fmt, listed = resolve_note_inputs(job.inputs, job.fmt, skipped)
    files, unreadable = unreadable_inputs(listed)
    note_nlp = job.note_nlp
    columns = NoteColumns(fmt, job.id_column, job.text_column, tuple(job.keep_columns), note_nlp is not None,
                          note_nlp.note_id_column if note_nlp else None)
    passthrough = note_passthrough_fields(fmt, files, job.id_column, job.text_column, job.keep_columns,
                                          job.read_options)
    concept_map = note_nlp.read_map() if note_nlp else None
    if note_nlp:
        check_note_id_type(fmt, files, columns.note_id_source, job.id_column, job.read_options)
    # The opt-in only when given: None keeps a pipeline config's own setting.
    settings = {**policy_overrides(options.policy_knobs), "batch_size": options.model_batch_size,
                "batch_tokens": options.model_batch_tokens, "device": options.actors.device,
                "autocast": options.autocast, "runtime": options.runtime,
                "trust_unhashed_weights": options.trust_unhashed_weights or None,
                "audit_fraction": job.audit_fraction}
    # Load the pipeline once here (on CPU) to validate it and record checkpoints, labels, policies; an ONNX
    # runtime exports its graphs here once, so the actors find them cached.
    nlp = job.source.load({**settings, "device": "cpu", "autocast": None})
    components = component_info(nlp)
    identity = _start_identity(options, listed, components, {
        "job": "notes", "format": fmt, "id_column": job.id_column, "text_column": job.text_column,
        "keep_columns": list(job.keep_columns), "encoding": job.encoding, "on_bad_record": job.on_bad_record,
        "max_field_lines": job.max_field_lines, "include_text": options.include_text,
        "pipeline": job.source.describe(),
        "note_nlp": None if note_nlp is None else {"note_id_column": columns.note_id_source,
                                                   "concept_map": note_nlp.concept_map}})
    inputs = {"format": fmt, "num_files": len(listed), "files": [filesystem.display(f) for f in listed[:1000]],
              "skipped_files": len(skipped), "unreadable_files": len(unreadable),
              "id_column": job.id_column, "text_column": job.text_column, "keep_columns": list(job.keep_columns),
              "on_bad_record": job.on_bad_record, "max_bad_records": job.max_bad_records,
              "max_field_lines": job.max_field_lines}
    more: dict[str, Any] = {"pipeline": job.source.describe()}
    writer = None
    if note_nlp:
        more["note_nlp"] = {"note_id_column": columns.note_id_source, "concept_map": note_nlp.concept_map,
                            "concepts_mapped": len(concept_map.concepts)}
        writer = NoteNlpWriter({c["task"]: c for c in components}, __version__, concept_map, has_context(nlp),
                               options.include_text)
    audit = any(c["audit_fraction"] > 0 for c in components)
    derived = partial(_write_derived, writer=writer, components=components if audit else None, options=options)
    schema = with_job_metadata(output_schema("notes", passthrough, options.include_text, note_nlp is not None, audit),
                               _metadata("notes", components, inputs, options, **more))
    with _job_on_ray(options) as mode:
        ray_start_s = time.perf_counter() - started
        logger.info("notes job: %d %s file(s), Ray %s", len(files), fmt, mode)
        keys = NoteKeys(columns)
        total = listed_bytes(identity, files)
        if files and options.resume:
            check_resumable_ids(read_notes(fmt, files, columns.read_columns, options=job.read_options), keys,
                                progress=options.progress, total_bytes=total)
        with job_progress(options.progress, total) as counter:
            ds = _annotated_notes(job, files, columns, settings, schema, counter) if files else None
            errors = [input_row({"doc_id": None}, STATUS_ERROR, _unreadable_message(path, reason))
                      for path, reason in unreadable.items()]
            return _finish(ds, keys, errors, schema, options, "notes", started, ray_start_s, lock, identity,
                           bad_limit=job.read_options.max_bad_records, skipped=skipped, derived=derived,
                           progress=counter)


def _write_derived(sink: JobSink, writer: NoteNlpWriter | None, components: list[dict[str, Any]] | None,
                   options: JobOptions) -> list[str]:
    """NOTE_NLP (with a writer) and the audit (with auditing components) from the written annotations."""
    from . import audit, note_nlp

    names = []
    if writer is not None:
        note_nlp.write_note_nlp(sink, writer, options.partition_by_task, MAIN_DATASET)
        names.append(note_nlp.DATASET)
    if components is not None:
        audit.write_audit(sink, components, options.partition_by_task, MAIN_DATASET)
        names.append(audit.DATASET)
    return names


def _annotated_notes(job: NotesJob, files: list[str], columns: NoteColumns, settings: dict[str, Any],
                     schema: pa.Schema, progress: Any = None):
    """The notes read and annotated on the actor pool (a lazy Ray Dataset), each batch counted on ``progress``."""
    from .sources import read_notes

    options = job.options
    if columns.note_nlp:
        from .note_nlp import check_note_ids

        check_note_ids(read_notes(columns.fmt, files, columns.read_columns, options=job.read_options), columns)
    return options.actors.map_batches(
        read_notes(columns.fmt, files, columns.read_columns, options=job.read_options),
        job.annotator,
        fn_constructor_kwargs={
            "source": job.source, "columns": columns, "settings": settings,
            "schema": schema.remove_metadata(), "pipe_batch_size": options.batch_size,
            "include_text": options.include_text, "threads": _threads(options.actors), "progress": progress,
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
    )


def run_images_job(job: ImagesJob) -> dict[str, Any]:
    """Classify DICOM/PNG/JPEG files or an npz split with a multi-exit image model; returns the summary."""
    if job.options.resume and job.npz:
        raise SettingError("resuming needs file inputs; an npz archive is read by the driver in one piece",
                           "resume", "npz")
    with _claimed(job.options, [*job.inputs, job.npz, job.checkpoint]) as lock:
        return _run_images_job(job, lock, time.perf_counter())


def _run_images_job(job: ImagesJob, lock: OutputLock, started: float) -> dict[str, Any]:
    from .images import job_policy, load_image_model
    from ..imaging.classify import DECODE_ERROR_PREFIX
    from .resume import PathKeys
    from .sources import read_image_files, read_npz

    options = job.options
    if not job.npz:  # fail at once, not per DICOM file on the workers
        require("pydicom", "the images job on image files")
    # Validate on the driver (an ONNX runtime exports its graphs once here); actors load their own copy.
    model = load_image_model(job.checkpoint, runtime=options.runtime,
                             trust_unhashed_weights=options.trust_unhashed_weights)
    policy = job_policy(options.policy_knobs, model.default_policy)
    files, unreadable, inputs, skipped = _image_inputs(job)
    identity = _start_identity(options, [job.npz] if job.npz else [*files, *unreadable],
                               {"checkpoint_id": model.checkpoint_id, "labels": list(model.labels)}, {
                                   "job": "images", "policy_config": policy.to_dict(), "frames": job.frames,
                                   "split": job.split if job.npz else None, "task_name": job.task_name})
    with _job_on_ray(options) as mode:
        ray_start_s = time.perf_counter() - started
        ds, passthrough = None, []
        if job.npz:
            ds, label_field = read_npz(job.npz, job.split)  # the driver reads it whole anyway
            passthrough = [label_field]
        elif files:
            ds = read_image_files(files)
        # Image ids are file paths, unique by construction (resolve_image_inputs): nothing to check.
        keys = PathKeys(storage.scheme(files[0]) + "://" if files and storage.is_uri(files[0]) else "")
        logger.info("images job: %s, Ray %s", inputs, mode)
        component = {"task": job.task_name, "checkpoint_id": model.checkpoint_id, **weights_record(model),
                     "checkpoint": str(job.checkpoint),
                     "labels": list(model.labels), "num_layers": model.num_layers, "policy": policy.describe(),
                     "policy_config": policy.to_dict()}
        schema = with_job_metadata(output_schema("images", passthrough),
                                   _metadata("images", [component], inputs, options))
        errors = [{"doc_id": filesystem.display(path), "path": filesystem.display(path), "task": job.task_name,
                   "kind": "image", "status": STATUS_ERROR, "error": f"{DECODE_ERROR_PREFIX}{reason}"}
                  for path, reason in unreadable.items()]
        # An npz archive counts images (rows); image files count their bytes.
        total, unit = (ds.count(), "images") if job.npz else (listed_bytes(identity, files), "B")
        with job_progress(options.progress, total, unit) as counter:
            if ds is not None:
                ds = _annotated_images(job, ds, schema, keys.prefix, counter)
            return _finish(ds, keys, errors, schema, options, "images", started, ray_start_s, lock, identity,
                           skipped=skipped, progress=counter)


def _image_inputs(job: ImagesJob) -> tuple[list[str], dict[str, str], dict[str, Any], dict[str, str]]:
    """(readable files, unreadable file -> reason, inputs metadata, skipped file -> reason); no files for npz."""
    from .sources import resolve_image_inputs, unreadable_inputs

    if job.npz:
        npz = job.npz if storage.is_uri(job.npz) else str(Path(job.npz).resolve())
        return [], {}, {"npz": npz, "split": job.split}, {}
    skipped: dict[str, str] = {}
    listed = resolve_image_inputs(job.inputs, skipped)
    files, unreadable = unreadable_inputs(listed)
    inputs = {"files": len(listed), "unreadable_files": len(unreadable), "skipped_files": len(skipped),
              "frames": job.frames}
    return files, unreadable, inputs, skipped


def _annotated_images(job: ImagesJob, ds, schema: pa.Schema, path_prefix: str, progress: Any = None):
    """``ds`` classified on the actor pool (a lazy Ray Dataset), each batch counted on ``progress``."""
    from .images import ImageAnnotator

    options = job.options
    checkpoint = job.checkpoint if storage.is_uri(job.checkpoint) else str(Path(job.checkpoint).resolve())
    return options.actors.map_batches(
        ds,
        ImageAnnotator,
        fn_constructor_kwargs={
            "checkpoint": checkpoint, "schema": schema.remove_metadata(),
            "task_name": job.task_name, "policy_knobs": options.policy_knobs,
            "device": options.actors.device, "autocast": options.autocast, "runtime": options.runtime,
            "frames": job.frames, "model_batch_size": options.model_batch_size, "threads": _threads(options.actors),
            "path_prefix": path_prefix, "trust_unhashed_weights": options.trust_unhashed_weights,
            "progress": progress,
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
    )
