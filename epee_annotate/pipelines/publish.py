"""The job's output sink: named Parquet datasets plus side files, published whole with a ``_SUCCESS`` manifest.

A job writes into one output location (``--out``), laid out as Hadoop/Spark tools expect::

    <out>/_SUCCESS          the manifest (JSON), written last: its presence means "complete"
    <out>/summary.json      side files (run summary, plot)
    <out>/summary.png
    <out>/annotations/      the main dataset: Parquet files only (hive folders with partitioning)
    <out>/<name>/           further datasets written through the same sink (e.g. an export, an audit)

A dataset folder holds nothing but Parquet files, so every reader (pandas, pyarrow, polars,
DuckDB ``<dataset>/*.parquet``) gets exactly its rows without a filter.

Where the job writes while it runs (``JobSink.root``) depends on the storage:

* local, no resume: a hidden sibling ``.<name>.tmp-<id>/`` renamed into place (``output.staged_output``);
* local with ``resume``: a fixed sibling ``.<name>.resume/`` holding ``output/`` and Ray Data's
  ``checkpoint/``; it survives a crash, and on success ``output/`` is renamed into place;
* object storage (no rename there): ``<out>/_staging/`` (a fixed ``resume/`` or a per-run
  ``run-<id>/``); on success the files are copied next to it and ``_SUCCESS`` is written last,
  so a reader that checks the marker (``read_published``) never sees a partial dataset.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from .. import storage
from .errors import OutputExistsError, SettingError
from .identity import IDENTITY_FILE
from .lock import DEFAULT_LEASE_S, LOCK_OBJECT, OutputLock
from .output import check_output, move_into_place, staged_output

logger = logging.getLogger(__name__)

MARKER = "_SUCCESS"
STAGING_DIR = "_staging"
MAIN_DATASET = "annotations"
MANIFEST_VERSION = 2
PRODUCER = "epee-annotate"


class DatasetNotReady(FileNotFoundError):
    """The output has no ``_SUCCESS`` marker: the job has not finished (or failed)."""


class OutputOverlapsInputError(SettingError):
    """The output is an input, lies inside one, or contains one."""


class NotOurOutputError(SettingError):
    """Replacing was asked for an output this tool did not publish (no manifest of ours)."""


@dataclass
class JobSink:
    """One job's output: where this run writes now (``root``) and where it is published (``out``).

    Every dataset and side file of a job goes through here, so the manifest lists them all.
    """

    out: str
    root: str
    checkpoint: str | None = None  # Ray Data's checkpoint location (resume only)
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level manifest fields
    partitioning: dict[str, list[str]] = field(default_factory=dict)  # dataset name -> hive columns

    def staged(self, name: str = MAIN_DATASET) -> str:
        """Where dataset ``name`` is written during the run."""
        return storage.join(self.root, name)

    def location(self, name: str = MAIN_DATASET) -> str:
        """Where dataset ``name`` is once published (what readers open)."""
        return dataset_location(self.out, name)

    def write_ray(self, ds, name: str, schema: pa.Schema, partition_cols: Sequence[str] = (),
                  min_rows_per_file: int | None = None) -> None:
        """Write a Ray Dataset as dataset ``name``; an input with no rows still gets one (empty) file."""
        self.partitioning[name] = list(partition_cols)
        filesystem, path = storage.resolve(self.staged(name))
        ds.write_parquet(path, filesystem=filesystem, schema=schema, partition_cols=list(partition_cols) or None,
                         min_rows_per_file=None if partition_cols else min_rows_per_file)
        if not _relative_files(filesystem, path):
            import pyarrow.parquet as pq

            filesystem.create_dir(path, recursive=True)
            pq.write_table(schema.empty_table(), f"{path}/empty.parquet", filesystem=filesystem)

    def write_table(self, table: pa.Table, name: str, basename_template: str,
                    partition_cols: Sequence[str] = ()) -> None:
        """Write an Arrow table into dataset ``name`` (partitioned as Ray's writer does: hive flavor).

        A fixed ``basename_template`` makes a rerun (resume) replace its file, never add a copy.
        """
        import pyarrow.dataset as pads

        self.partitioning[name] = list(partition_cols)
        filesystem, path = storage.resolve(self.staged(name))
        pads.write_dataset(table, path, format="parquet", filesystem=filesystem,
                           partitioning=list(partition_cols) or None, partitioning_flavor="hive",
                           basename_template=basename_template, existing_data_behavior="overwrite_or_ignore")

    def write_file(self, name: str, data: bytes) -> None:
        """A side file beside the datasets (e.g. ``summary.json``); one write, local or remote."""
        filesystem, path = storage.resolve(storage.join(self.root, name))
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as handle:
            handle.write(data)

    def manifest(self) -> dict[str, Any]:
        """The ``_SUCCESS`` manifest of what this run wrote: every dataset (files with bytes and sha256,
        rows) and side file; ``verify_output`` checks an output against it."""
        fs, root = storage.resolve(self.root)
        files = [(p, size) for p, size in _relative_files(fs, root) if p != MARKER]
        datasets: dict[str, Any] = {}
        for name in sorted({p.split("/", 1)[0] for p, _ in files if "/" in p}):
            parts = [(p[len(name) + 1:], size) for p, size in files if p.startswith(f"{name}/")]
            data = [{"path": p, "bytes": size, "sha256": _sha256(fs, f"{root}/{name}/{p}")}
                    for p, size in parts if p.endswith(".parquet")]
            datasets[name] = {"path": name, "location": self.location(name), "format": "parquet",
                              "partitioning": self.partitioning.get(name, []), "files": data,
                              "rows": _count_rows(fs, f"{root}/{name}", [f["path"] for f in data])}
        side = [{"path": p, "bytes": size, "sha256": _sha256(fs, f"{root}/{p}")} for p, size in files if "/" not in p]
        return {"version": MANIFEST_VERSION, "producer": PRODUCER, "datasets": datasets, "files": side,
                **self.extra}


def dataset_location(out: str, name: str = MAIN_DATASET) -> str:
    """The location of dataset ``name`` inside the job output ``out``."""
    return storage.join(str(out).rstrip("/") if storage.is_uri(out) else str(out), name)


def _count_rows(fs: pafs.FileSystem, base: str, files: list[str]) -> int:
    import pyarrow.parquet as pq

    total = 0
    for relative in files:
        with fs.open_input_file(f"{base}/{relative}") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def normalised_output(out: str) -> str:
    """``out`` as the job records it: a URI without trailing slash, or an absolute local path."""
    text = str(out)
    if storage.is_uri(text):
        return text.rstrip("/")
    text = text[len("file://"):] if text.startswith("file://") else text
    return str(Path(text).expanduser().resolve())


def _segments(location: str) -> tuple[str, tuple[str, ...]]:
    """(scheme, path segments up to the first glob segment), local paths with symlinks resolved."""
    text = str(location)
    if storage.is_uri(text):
        scheme, rest = text.split("://", 1)
        segments: Sequence[str] = [s for s in rest.split("/") if s]
    else:
        scheme = ""
        text = text[len("file://"):] if text.startswith("file://") else text
        segments = Path(os.path.realpath(os.path.expanduser(text))).parts
    cut = next((i for i, s in enumerate(segments) if glob.has_magic(s)), len(segments))
    return scheme, tuple(segments[:cut])


def check_apart(out: str, inputs: Sequence[str]) -> None:
    """Refuse an output equal to, inside, or containing any input (an output is replaced whole)."""
    scheme, target = _segments(out)
    for spec in inputs:
        if not spec:
            continue
        other_scheme, source = _segments(str(spec))
        common = min(len(source), len(target))
        if other_scheme != scheme or source[:common] != target[:common]:
            continue
        relation = ("is" if len(source) == len(target) else
                    "is inside" if len(target) > len(source) else "contains")
        raise OutputOverlapsInputError(f"output {out!r} {relation} input {str(spec)!r}; an output is written "
                                       "and replaced whole, so it must lie apart from every input", "out")


def check_job_output(out: str, overwrite: bool, resume: bool = False, inputs: Sequence[str] = ()) -> str:
    """Normalised output location; refuses (before any work) an output that overlaps an input, an
    existing dataset unless ``overwrite``, and with ``overwrite`` anything but this tool's own output."""
    check_apart(out, inputs)
    if not storage.is_uri(out):
        final = check_output(out, overwrite)
        if final.exists():
            _check_ours(str(final))
        _refuse_interrupted(_resume_root(str(final)), str(final), overwrite, resume)
        return str(final)
    out = str(out).rstrip("/")
    fs, path = storage.resolve(out)
    if fs.get_file_info(path).type == pafs.FileType.File:
        raise SettingError(f"output {out!r} exists and is not a directory prefix", "out")
    if _published_files(fs, path):
        if not overwrite:
            raise OutputExistsError(f"output {out!r} already holds a dataset", "overwrite")
        _check_ours(out)
    _refuse_interrupted(_resume_root(out), out, overwrite, resume)
    return out


def _check_ours(out: str) -> None:
    """``NotOurOutputError`` unless ``out`` is empty or holds this tool's manifest (what overwriting may delete)."""
    fs, path = storage.resolve(out)
    if not _published_files(fs, path):
        return
    try:
        manifest = read_manifest(out)
    except (DatasetNotReady, ValueError, OSError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("version") == MANIFEST_VERSION \
            and isinstance(manifest.get("datasets"), dict):
        return
    raise NotOurOutputError(f"output {out!r} holds files but no manifest of this tool ({MARKER}); replacing "
                            "deletes only an output this tool published, so it is left alone: choose another "
                            "output location", "out")


def _resume_root(out: str) -> str:
    """Where a resumable run of ``out`` keeps its output and checkpoint until it is published."""
    if storage.is_uri(out):
        return storage.join(out, STAGING_DIR, "resume")
    final = Path(out)
    return str(final.parent / f".{final.name}.resume")


def identity_location(out: str) -> str:
    """Where a resumable run of ``out`` keeps its job fingerprint (``identity``)."""
    return storage.join(_resume_root(normalised_output(out)), IDENTITY_FILE)


def _refuse_interrupted(root: str, out: str, overwrite: bool, resume: bool) -> None:
    if not overwrite and not resume and storage.exists(root):
        raise SettingError(f"output {out!r} has an interrupted resumable run ({root}); resume it, "
                           "or overwrite to start again", "resume", "overwrite")


def _published_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Files under ``path`` outside the staging area and the lock (what an earlier run published)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    base = path.rstrip("/")
    staging = f"{base}/{STAGING_DIR}/"
    return [i.path for i in infos if i.type == pafs.FileType.File and not i.path.startswith(staging)
            and i.path != f"{base}/{LOCK_OBJECT}"]


def _relative_files(fs: pafs.FileSystem, path: str) -> list[tuple[str, int]]:
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((i.path[len(base):], i.size) for i in infos if i.type == pafs.FileType.File)


# ----- one job per output, and what killed jobs left behind ----------------------------------
@contextmanager
def claim_output(out: str, overwrite: bool, resume: bool = False, inputs: Sequence[str] = (),
                 lease_s: float = DEFAULT_LEASE_S) -> Iterator[OutputLock]:
    """Hold the output's lock for the block: earlier killed runs recovered, then the output checked.

    ``OutputLockedError`` at once when another job holds it (see ``lock``).
    """
    check_apart(out, inputs)  # before touching anything
    normal = normalised_output(out)
    with OutputLock(normal, lease_s) as lock:
        done = recover(normal)
        for action in done:
            logger.warning("output %s: %s", normal, action)
        try:
            check_job_output(out, overwrite, resume, inputs)
        except OutputExistsError as error:
            if any(action.startswith("finished") for action in done):
                raise OutputExistsError(f"{error}: the interrupted publish of an earlier run was just finished "
                                        "(check it with verify)", *error.settings) from None
            raise
        yield lock


def recover(out: str) -> list[str]:
    """Finish the interrupted publish of a killed run, and remove its debris (call with the lock held).

    Returns what was done, one phrase each.
    """
    return _recover_remote(out) if storage.is_uri(out) else _recover_local(Path(out))


def _recover_local(final: Path) -> list[str]:
    parent, name = final.parent, final.name
    if not parent.is_dir():
        return []
    done: list[str] = []
    olds = sorted(parent.glob(f".{name}.old-*"))
    staged = [*sorted(parent.glob(f".{name}.tmp-*")), parent / f".{name}.resume" / "output"]
    complete = [p for p in staged if (p / MARKER).is_file()]
    if not final.exists() and complete:  # a kill between writing the manifest and the last rename
        newest = max(complete, key=lambda p: (p / MARKER).stat().st_mtime)
        os.replace(newest, final)
        done.append(f"finished the interrupted publish of an earlier run (from {newest.name})")
    elif not final.exists() and olds:  # nothing complete to put in: the replaced output goes back
        os.replace(olds[-1], final)
        done.append("rolled back the interrupted replacement of an earlier run")
    debris = [p for p in [*olds, *parent.glob(f".{name}.tmp-*")] if p.exists()]
    resume_root = parent / f".{name}.resume"
    if resume_root.exists() and not (resume_root / "output").exists():
        debris.append(resume_root)  # published already; only its checkpoint was left
    for path in debris:
        shutil.rmtree(path, ignore_errors=True)
    if debris:
        done.append(f"removed {len(debris)} temporary folder(s) of earlier killed runs")
    return done


def _recover_remote(out: str) -> list[str]:
    fs, path = storage.resolve(out)
    staging = f"{path.rstrip('/')}/{STAGING_DIR}"
    runs = [i.path for i in fs.get_file_info(pafs.FileSelector(staging, allow_not_found=True))
            if i.type == pafs.FileType.Directory]
    done: list[str] = []
    for run in sorted(runs):
        if fs.get_file_info(f"{run}/output/{MARKER}").type == pafs.FileType.File:
            _copy_published(fs, path, f"{run}/output")
            fs.delete_dir(run)
            done.append(f"finished the interrupted publish of an earlier run ({run.rsplit('/', 1)[1]})")
        elif run.rsplit("/", 1)[1].startswith("run-"):
            fs.delete_dir(run)
            done.append(f"removed the staging folder of an earlier killed run ({run.rsplit('/', 1)[1]})")
    _drop_empty_staging(fs, path)
    return done


def _drop_empty_staging(fs: pafs.FileSystem, out_path: str) -> None:
    """Remove ``<out>/_staging`` when no run staged anything there (object stores keep empty "folders")."""
    staging = f"{out_path.rstrip('/')}/{STAGING_DIR}"
    if fs.get_file_info(staging).type == pafs.FileType.Directory and not _relative_files(fs, staging):
        fs.delete_dir(staging)


# ----- the job's output: staged, then published whole ---------------------------------------
@contextmanager
def job_output(out: str, overwrite: bool, resume: bool = False, lock: OutputLock | None = None,
               inputs: Sequence[str] = ()) -> Iterator[JobSink]:
    """Yield the sink of one job; publish everything it wrote on success (see module docstring).

    ``lock``: the job's claim on the output (``claim_output``); without one the output is claimed here.
    """
    if lock is None:
        with claim_output(out, overwrite, resume, inputs) as claimed:
            with job_output(out, overwrite, resume, claimed) as sink:
                yield sink
        return
    checked = check_job_output(out, overwrite, resume, inputs)
    if overwrite and not resume:  # starting again: an interrupted resumable run is dropped
        storage.delete_tree(_resume_root(checked))
    if storage.is_uri(out):
        with _remote_output(checked, overwrite, resume, lock) as sink:
            yield sink
    elif resume:
        with _local_resumable_output(checked, overwrite, lock) as sink:
            yield sink
    else:
        with staged_output(checked, overwrite, before_commit=lock.check) as directory:
            sink = JobSink(checked, str(directory))
            yield sink
            _write_marker(sink)


def _write_marker(sink: JobSink) -> None:
    """The manifest into the staged output: from here on the staged output is complete (the publish intent)."""
    text = json.dumps(sink.manifest(), indent=2, sort_keys=True) + "\n"
    sink.write_file(MARKER, text.encode())


@contextmanager
def _local_resumable_output(out: str, overwrite: bool, lock: OutputLock) -> Iterator[JobSink]:
    final = Path(out)
    root = Path(_resume_root(str(final)))
    (root / "output").mkdir(parents=True, exist_ok=True)
    # A crash leaves ``root`` in place: that is what the next resumable run continues from.
    sink = JobSink(str(final), str(root / "output"), str(root / "checkpoint"))
    yield sink
    lock.check()
    _write_marker(sink)
    move_into_place(root / "output", final, overwrite, uuid.uuid4().hex[:8])
    shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _remote_output(out: str, overwrite: bool, resume: bool, lock: OutputLock) -> Iterator[JobSink]:
    root = _resume_root(out) if resume else storage.join(out, STAGING_DIR, f"run-{uuid.uuid4().hex[:8]}")
    sink = JobSink(out, storage.join(root, "output"), storage.join(root, "checkpoint") if resume else None)
    try:
        yield sink
    except BaseException:
        if not resume:
            storage.delete_tree(root)
        raise
    publish(sink, overwrite, lock)
    storage.delete_tree(root)
    fs, out_path = storage.resolve(out)
    _drop_empty_staging(fs, out_path)


def publish(sink: JobSink, overwrite: bool, lock: OutputLock | None = None) -> None:
    """Object storage: the manifest into the staging area (the intent), the files next to it, ``_SUCCESS`` last.

    A kill after the intent is written is finished by the next job on this output (``recover``).
    """
    fs, out_path = storage.resolve(sink.out)
    _, root_path = storage.resolve(sink.root)
    if _published_files(fs, out_path) and not overwrite:
        raise OutputExistsError(f"output {sink.out!r} appeared while the job ran; result left in {sink.root}",
                                "overwrite")
    if lock is not None:
        lock.check()
    _write_marker(sink)
    _copy_published(fs, out_path, root_path)


def _copy_published(fs: pafs.FileSystem, out_path: str, root_path: str) -> None:
    """Make ``out_path`` hold exactly the staged files of ``root_path``'s manifest; ``_SUCCESS`` goes last.

    Idempotent, so a rerun after a kill at any point finishes the same publish.
    """
    with fs.open_input_stream(f"{root_path}/{MARKER}") as handle:
        manifest = json.loads(handle.read())
    wanted = _manifest_paths(manifest)
    marker = f"{out_path}/{MARKER}"
    old = _published_files(fs, out_path)
    if marker in old:  # first: from here on readers see "not ready", never a mix of runs
        fs.delete_file(marker)
    for path in old:
        if path != marker and path[len(out_path) + 1:] not in wanted:
            fs.delete_file(path)  # an earlier run's file this run does not have
    for relative in wanted:
        target = f"{out_path}/{relative}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.copy_file(f"{root_path}/{relative}", target)  # server-side copy on S3/GCS
    fs.copy_file(f"{root_path}/{MARKER}", marker)  # one object: appears whole or not at all


def _manifest_paths(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every file a manifest lists, by path relative to the output, with its recorded bytes and hash."""
    paths = {f"{entry['path']}/{f['path']}": f for entry in manifest.get("datasets", {}).values()
             for f in entry.get("files", [])}
    paths.update({f["path"]: f for f in manifest.get("files", [])})
    return paths


def verify_output(out: str) -> tuple[dict[str, Any], list[str]]:
    """(manifest, problems): every listed file present with its size and sha256, no unlisted data file, rows."""
    manifest = read_manifest(out)
    fs, path = storage.resolve(out)
    base = path.rstrip("/")
    present = dict(_relative_files(fs, base))
    problems = []
    for relative, entry in sorted(_manifest_paths(manifest).items()):
        if relative not in present:
            problems.append(f"{relative}: missing")
        elif present[relative] != entry.get("bytes"):
            problems.append(f"{relative}: {present[relative]} bytes, the manifest says {entry.get('bytes')}")
        elif not entry.get("sha256"):
            problems.append(f"{relative}: the manifest records no sha256 (written by an older version)")
        elif _sha256(fs, f"{base}/{relative}") != entry["sha256"]:
            problems.append(f"{relative}: sha256 differs from the manifest")
    listed = _manifest_paths(manifest)
    for name, entry in manifest.get("datasets", {}).items():
        folder = f"{entry['path']}/"
        extra = sorted(p for p in present if p.startswith(folder) and p not in listed)
        problems += [f"{p}: a file in dataset {name!r} the manifest does not list" for p in extra]
        files = [f["path"] for f in entry.get("files", []) if f"{folder}{f['path']}" in present]
        if len(files) == len(entry.get("files", [])) and not extra:
            rows = _count_rows(fs, f"{base}/{entry['path']}", files)
            if rows != entry.get("rows"):
                problems.append(f"dataset {name!r}: {rows} rows, the manifest says {entry.get('rows')}")
    return manifest, problems


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(out: str) -> dict[str, Any]:
    """The ``_SUCCESS`` manifest of a finished job output; ``DatasetNotReady`` while there is none."""
    fs, path = storage.resolve(out)
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{MARKER}") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise DatasetNotReady(f"{out!r} has no {MARKER} marker: the job has not finished") from None


def read_published(out: str, columns: list[str] | None = None, dataset: str = MAIN_DATASET) -> pa.Table:
    """Exactly the files the manifest lists for ``dataset``, as one table (the reader-side completeness check)."""
    import pyarrow.dataset as pads

    entry = read_manifest(out)["datasets"].get(dataset)
    if entry is None:
        raise KeyError(f"{out!r} has no dataset {dataset!r}")
    fs, path = storage.resolve(out)
    base = f"{path.rstrip('/')}/{entry['path']}"
    partitioned = bool(entry.get("partitioning"))
    paths = [f"{base}/{f['path']}" for f in entry["files"]]
    dataset_ = pads.dataset(paths, format="parquet", filesystem=fs,
                            partitioning=pads.partitioning(flavor="hive") if partitioned else None,
                            partition_base_dir=base if partitioned else None)
    return dataset_.to_table(columns=columns)
