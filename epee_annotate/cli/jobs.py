"""``annotate-notes`` and ``annotate-images``: Ray Data batch jobs writing Parquet (docs/batch_jobs.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from ..vocab import AUTOCAST_MODES, BAD_RECORD_MODES, DEFAULT_MAX_FIELD_LINES, FRAME_MODES, NOTE_FORMATS
from .common import add_policy_arguments, add_runtime_argument, policy_settings_from_args

# Library setting (SettingError.settings) -> this command line's option.
FLAGS = {
    "out": "--out", "overwrite": "--overwrite", "num_actors": "--num-actors", "cpus_per_actor": "--cpus-per-actor",
    "gpus_per_actor": "--gpus-per-actor", "batch_size": "--batch-size", "model_batch_size": "--model-batch-size",
    "model_batch_tokens": "--model-batch-tokens", "autocast": "--autocast", "runtime": "--runtime",
    "actor_start_timeout_s": "--actor-start-timeout", "fmt": "--format",
    "id_column": "--id-column", "text_column": "--text-column", "keep_columns": "--keep-columns",
    "pipeline": "--pipeline", "config": "--config", "checkpoint": "--checkpoint", "overrides": "--set",
    "scope": "--scope", "inputs": "image files", "npz": "--npz", "frames": "--frames",
    "include_text": "--include-text", "resume": "--resume", "encoding": "--encoding",
    "on_bad_record": "--on-bad-record", "storage_timeout_s": "--storage-timeout",
    "trust_unhashed_weights": "--allow-unhashed-weights", "lock_lease_s": "--lock-lease",
    "max_bad_records": "--max-bad-records", "max_field_lines": "--max-field-lines",
    "note_id_column": "--note-id-column", "concept_map": "--concept-map", "note_nlp": "--note-nlp",
    "audit_fraction": "--audit-fraction",
}


def _add_common(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True,
                     help="output location: a directory or a URI (s3://, gs://, abfs://, hdfs://); published "
                          "whole at the end: the rows in OUT/annotations/, a _SUCCESS manifest and the "
                          "summary beside them")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    out.add_argument("--partition-by-task", action="store_true", help="hive-partition the output by task")
    out.add_argument("--rows-per-file", type=int, default=100_000, help="minimum rows per Parquet file")
    out.add_argument("--resume", action="store_true",
                     help="continue an interrupted --resume run of this job (Ray Data checkpointing by document "
                          "id; needs unique ids); a first run with it is resumable")
    out.add_argument("--lock-lease", type=float, default=60.0, metavar="S",
                     help="the output lock's lease: another job waits for this one to end, or to send no "
                          "heartbeat for S seconds (a dead driver on another host), before it takes --out over")

    parser.add_argument("--allow-unhashed-weights", action="store_true",
                        help="load checkpoints that record no weights_sha256 (their weights cannot be checked); "
                             "recorded in the output metadata")

    run = parser.add_argument_group("execution")
    run.add_argument("--num-actors", type=int, default=1, help="annotation actors (each loads the model once)")
    run.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (= torch threads)")
    run.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor; > 0 puts models on cuda")
    run.add_argument("--autocast", choices=AUTOCAST_MODES, default=None, help="mixed precision on GPU")
    add_runtime_argument(run)
    run.add_argument("--batch-size", type=int, default=64, help="inputs per actor call")
    run.add_argument("--model-batch-size", type=int, default=32, help="model inputs per forward pass")
    run.add_argument("--model-batch-tokens", type=int, default=None, metavar="T",
                     help="notes: form model batches by padded tokens (at most T per forward pass; "
                          "--model-batch-size still caps the rows)")
    run.add_argument("--max-restarts", type=int, default=3, help="times a dead actor is recreated")
    run.add_argument("--max-task-retries", type=int, default=3, help="times a batch of a dead actor is re-run")
    run.add_argument("--actor-start-timeout", type=float, default=600.0, metavar="S",
                     help="fail when the actors have not started (model loaded) after S seconds")
    run.add_argument("--storage-timeout", type=float, default=None, metavar="S",
                     help="bound of each object-store call (S3, GCS) in seconds (default: $EPEE_STORAGE_TIMEOUT_S, "
                          "else 60)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started in-process)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="show Ray Data progress bars")
    run.add_argument("--worker-logs", action="store_true", help="forward worker logs to this terminal")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="Ray start-up messages, per-operator progress and job logs (default: one progress "
                          "bar and the summary)")
    add_policy_arguments(parser, "exit policy (default: each checkpoint's calibrated policy)")


def _options(args: argparse.Namespace):
    from ..pipelines.jobs import JobOptions
    from ..pipelines.runtime import ActorSettings

    _storage_timeout(args.storage_timeout)

    actors = ActorSettings(args.num_actors, args.cpus_per_actor, args.gpus_per_actor, args.max_restarts,
                           args.max_task_retries)
    return JobOptions(
        out=args.out, overwrite=args.overwrite, actors=actors, batch_size=args.batch_size,
        model_batch_size=args.model_batch_size, model_batch_tokens=args.model_batch_tokens, address=args.address,
        policy=policy_settings_from_args(args), autocast=args.autocast, runtime=args.runtime,
        partition_by_task=args.partition_by_task, include_text=getattr(args, "include_text", False),
        progress=args.progress, worker_logs=args.worker_logs, rows_per_file=args.rows_per_file, verbose=args.verbose,
        actor_start_timeout_s=args.actor_start_timeout, resume=args.resume, lock_lease_s=args.lock_lease,
        trust_unhashed_weights=args.allow_unhashed_weights,
    )


def _storage_timeout(seconds: float | None) -> None:
    """--storage-timeout as the process's storage bound; Ray workers get it from ``runtime.ray_session``."""
    import os

    from ..filesystem import TIMEOUT_VARIABLE, storage_timeout_s

    if seconds is not None:
        if not seconds > 0:
            raise ValueError(f"--storage-timeout must be > 0 seconds, got {seconds:g}")
        os.environ[TIMEOUT_VARIABLE] = f"{seconds:g}"
    storage_timeout_s()  # a malformed environment value fails here, before any work


def _with_flags(build: Callable[[], Any]) -> Any:
    """Run ``build``; a SettingError (or a storage timeout) gets this command line's option names as advice."""
    from ..checkpoint import UnhashedWeightsError
    from ..filesystem import StorageTimeoutError
    from ..formats import TooManyBadRecords
    from ..pipelines.errors import OutputExistsError, SettingError

    try:
        return build()
    except OutputExistsError as error:
        raise FileExistsError(f"{error}; pass --overwrite to replace it") from None
    except TooManyBadRecords as error:
        raise ValueError(f"{error} (--max-bad-records); nothing was published") from None
    except (SettingError, StorageTimeoutError, UnhashedWeightsError) as error:
        from ..policies import settings

        known = {**FLAGS, **{setting.key: setting.flag for setting in settings()}}
        flags = ", ".join(known.get(name, name) for name in error.settings)
        raise ValueError(f"{error} (see {flags})" if flags else str(error)) from None
    except Exception as error:  # noqa: BLE001 - only a bad record is translated; the rest goes on as it was
        bad = _bad_record(error)
        if bad is None:
            raise
        raise ValueError(f"{bad} (--on-bad-record failfast)") from None


def _bad_record(error: BaseException | None) -> str | None:
    """The message of the ``BadRecordError`` a Ray read task raised, found in the chain Ray wraps it in."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "record_message", None):
            return error.record_message
        cause = getattr(error, "cause", None)  # Ray's task errors keep the original here
        error = cause if isinstance(cause, BaseException) else error.__cause__
    return None


def _split_columns(value: str | None) -> list[str]:
    return [c.strip() for c in (value or "").split(",") if c.strip()]


def _log_level(args: argparse.Namespace) -> None:
    """Job logs (INFO) only with --verbose; warnings always. Ray as quiet as asked (``quiet``)."""
    from .quiet import quiet_ray

    if not args.verbose:
        logging.getLogger("epee_annotate").setLevel(logging.WARNING)
    quiet_ray(args.verbose, args.command)


def run_notes(args: argparse.Namespace) -> int:
    _log_level(args)
    from ..pipelines.jobs import NotesJob, run_notes_job
    from ..pipelines.notes import PipelineSource, parse_overrides

    def run() -> dict[str, Any]:
        source = PipelineSource(pipeline=args.pipeline, config=args.config, checkpoint=args.checkpoint,
                                overrides=parse_overrides(args.set), scope=args.scope, task_name=args.task_name)
        return run_notes_job(NotesJob(inputs=args.inputs, source=source, options=_options(args),
                                      id_column=args.id_column, text_column=args.text_column,
                                      keep_columns=_split_columns(args.keep_columns), fmt=args.format,
                                      encoding=args.encoding, on_bad_record=args.on_bad_record,
                                      max_bad_records=args.max_bad_records, max_field_lines=args.max_field_lines,
                                      note_nlp=_note_nlp(args), audit_fraction=args.audit_fraction))

    summary = _with_flags(run)
    _print_summary(summary)
    from ..pipelines.audit import exceeded

    broken = exceeded(summary)
    if args.audit_strict and not summary.get("audit"):
        print("audit: no component was audited (its checkpoint carries no calibration and no --audit-fraction "
              "was given), so --audit-strict has nothing to check; the output is published", file=sys.stderr)
        return 1
    if broken and args.audit_strict:
        print(f"audit: the early answers of {', '.join(broken)} disagree with full depth more than calibration "
              "promised (--audit-strict); the output is published", file=sys.stderr)
        return 1
    return 0


def _note_nlp(args: argparse.Namespace):
    """``--note-nlp`` options; its companions without it are refused (they would reach nothing)."""
    from ..pipelines.errors import SettingError
    from ..pipelines.note_nlp import NoteNlpOptions

    if not args.note_nlp:
        given = [name for name in ("note_id_column", "concept_map") if getattr(args, name)]
        if given:
            raise SettingError("these options shape the NOTE_NLP dataset; add --note-nlp", *given, "note_nlp")
        return None
    return NoteNlpOptions(args.note_id_column, args.concept_map)


def run_images(args: argparse.Namespace) -> int:
    _log_level(args)
    from ..pipelines.jobs import ImagesJob, run_images_job

    _print_summary(_with_flags(lambda: run_images_job(ImagesJob(
        checkpoint=args.checkpoint, options=_options(args), inputs=args.inputs, npz=args.npz, split=args.split,
        frames=args.frames, task_name=args.task_name))))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    from ..pipelines.summary import format_summary

    print(format_summary(summary), flush=True)


def register(subparsers) -> None:
    """Add the ``annotate-notes`` and ``annotate-images`` subcommands."""
    notes = subparsers.add_parser(
        "annotate-notes", help="annotate an EHR export (CSV/JSONL/Parquet) with an EPEE spaCy pipeline",
        description="Ray Data job: one Parquet row per annotation; every note yields at least one row.",
    )
    notes.add_argument("inputs", nargs="+", help="files, globs or directories (local or URIs) of CSV, TSV, JSON(L) "
                       "(also .gz/.bz2/.zst) or Parquet; with --format also .txt notes, PHEE or DDI XML")
    notes.add_argument("--format", choices=NOTE_FORMATS, default=None,
                       help="input format (default: from the file names)")
    notes.add_argument("--encoding", default="utf-8", help="text encoding of the inputs (default utf-8; a "
                       "byte-order mark is dropped)")
    notes.add_argument("--on-bad-record", choices=BAD_RECORD_MODES, default="permissive",
                       help="a malformed record: one error row (permissive), or stop the job (failfast)")
    notes.add_argument("--max-bad-records", default=None, metavar="N|F%",
                       help="fail the job (non-zero status, nothing published) when more than N records, or more "
                            "than F%% of the records read, are bad (error rows about a whole note or file)")
    notes.add_argument("--max-field-lines", type=int, default=DEFAULT_MAX_FIELD_LINES, metavar="N",
                       help="CSV/TSV: a quoted field spanning more lines is taken for a quote left open: one error "
                            "row, and the lines after it are read again (default %(default)s)")
    notes.add_argument("--id-column", default="id", help="column/field with the note id")
    notes.add_argument("--text-column", default="text", help="column/field with the note text")
    notes.add_argument("--keep-columns", default=None, help="comma-separated columns copied to every output row")
    notes.add_argument("--include-text", action="store_true",
                       help="write the annotated text spans (PHI!) in a 'text' column; off by default")
    omop = notes.add_argument_group("OMOP CDM")
    omop.add_argument("--note-nlp", action="store_true",
                      help="also write an OMOP CDM v5.4 NOTE_NLP dataset in OUT/note_nlp/ (note ids must be integers)")
    omop.add_argument("--note-id-column", default=None,
                      help="--note-nlp: integer column with the OMOP note_id (default: --id-column)")
    omop.add_argument("--concept-map", default=None, metavar="CSV",
                      help="--note-nlp: CSV component,label,concept_id,source_concept_id (component 'section' "
                           "maps section categories); unmapped values get concept 0")
    audit = notes.add_argument_group("audit of the early answers")
    audit.add_argument("--audit-fraction", type=float, default=None, metavar="F",
                       help="share of documents (chosen by a hash of their text: the same ones on every run) also "
                            "run to full depth, to check calibration's disagreement bound on this data; default: "
                            "0.05 for checkpoints that carry a calibration, else off; 0 turns it off")
    audit.add_argument("--audit-strict", action="store_true",
                       help="exit with status 1 when the audit finds the bound exceeded (the output is still "
                            "published)")
    source = notes.add_argument_group("pipeline (exactly one)")
    source.add_argument("--pipeline", default=None, help="directory written by nlp.to_disk")
    source.add_argument("--config", default=None, help="spaCy config file (.cfg)")
    source.add_argument("--checkpoint", default=None,
                        help="shortcut: blank English + sentencizer + epee_textcat on this checkpoint")
    source.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable), e.g. with --config configs/pv_event.cfg: "
                             "paths.pv_checkpoint=runs/demo/pv_event or components.epee_pv_event.entropy=0.3")
    source.add_argument("--scope", choices=["sents", "doc"], default="sents", help="--checkpoint: per sentence or doc")
    source.add_argument("--task-name", default="textcat", help="--checkpoint: component (task) name")
    _add_common(notes)
    notes.set_defaults(func=run_notes)

    images = subparsers.add_parser(
        "annotate-images", help="classify DICOM/PNG/JPEG files or an npz split with a multi-exit ViT",
        description="Ray Data job: one Parquet row per image (or frame); every file yields at least one row.",
    )
    images.add_argument("inputs", nargs="*", help="image files, globs or directories (local or URIs)")
    images.add_argument("--checkpoint", required=True, help="multi-exit image checkpoint directory or URI")
    images.add_argument("--npz", default=None, help="MedMNIST-style .npz archive instead of files")
    images.add_argument("--split", default="val", help="split of the npz archive (train/val/test)")
    images.add_argument("--frames", choices=FRAME_MODES, default="middle",
                        help="multi-frame DICOM: middle frame, every frame (one row each), or max projection")
    images.add_argument("--task-name", default="image", help="value of the task column")
    _add_common(images)
    images.set_defaults(func=run_images)
