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

import json
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
from .output import check_output, move_into_place, staged_output

MARKER = "_SUCCESS"
STAGING_DIR = "_staging"
MAIN_DATASET = "annotations"
MANIFEST_VERSION = 2


class DatasetNotReady(FileNotFoundError):
    """The output has no ``_SUCCESS`` marker: the job has not finished (or failed)."""


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
        """The ``_SUCCESS`` manifest of what this run wrote (datasets, their files and rows; side files)."""
        fs, root = storage.resolve(self.root)
        files = _relative_files(fs, root)
        datasets: dict[str, Any] = {}
        for name in sorted({p.split("/", 1)[0] for p, _ in files if "/" in p}):
            parts = [(p[len(name) + 1:], size) for p, size in files if p.startswith(f"{name}/")]
            data = [{"path": p, "bytes": size} for p, size in parts if p.endswith(".parquet")]
            datasets[name] = {"path": name, "location": self.location(name), "format": "parquet",
                              "partitioning": self.partitioning.get(name, []), "files": data,
                              "rows": _count_rows(fs, f"{root}/{name}", [f["path"] for f in data])}
        side = [{"path": p, "bytes": size} for p, size in files if "/" not in p]
        return {"version": MANIFEST_VERSION, "datasets": datasets, "files": side, **self.extra}


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


def check_job_output(out: str, overwrite: bool, resume: bool = False) -> str:
    """Normalised output location; refuses an existing dataset unless ``overwrite`` (before any work)."""
    if not storage.is_uri(out):
        final = check_output(out, overwrite)
        _refuse_interrupted(_resume_root(str(final)), str(final), overwrite, resume)
        return str(final)
    out = str(out).rstrip("/")
    fs, path = storage.resolve(out)
    if fs.get_file_info(path).type == pafs.FileType.File:
        raise SettingError(f"output {out!r} exists and is not a directory prefix", "out")
    if not overwrite and _published_files(fs, path):
        raise OutputExistsError(f"output {out!r} already holds a dataset", "overwrite")
    _refuse_interrupted(_resume_root(out), out, overwrite, resume)
    return out


def _resume_root(out: str) -> str:
    """Where a resumable run of ``out`` keeps its output and checkpoint until it is published."""
    if storage.is_uri(out):
        return storage.join(out, STAGING_DIR, "resume")
    final = Path(out)
    return str(final.parent / f".{final.name}.resume")


def _refuse_interrupted(root: str, out: str, overwrite: bool, resume: bool) -> None:
    if not overwrite and not resume and storage.exists(root):
        raise SettingError(f"output {out!r} has an interrupted resumable run ({root}); resume it, "
                           "or overwrite to start again", "resume", "overwrite")


def _published_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Files under ``path`` outside the staging area (what an earlier run published)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    staging = f"{path.rstrip('/')}/{STAGING_DIR}/"
    return [i.path for i in infos if i.type == pafs.FileType.File and not i.path.startswith(staging)]


def _relative_files(fs: pafs.FileSystem, path: str) -> list[tuple[str, int]]:
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((i.path[len(base):], i.size) for i in infos if i.type == pafs.FileType.File)


@contextmanager
def job_output(out: str, overwrite: bool, resume: bool = False) -> Iterator[JobSink]:
    """Yield the sink of one job; publish everything it wrote on success (see module docstring)."""
    checked = check_job_output(out, overwrite, resume)
    if overwrite and not resume:  # starting again: an interrupted resumable run is dropped
        storage.delete_tree(_resume_root(checked))
    if storage.is_uri(out):
        with _remote_output(out, overwrite, resume) as sink:
            yield sink
    elif resume:
        with _local_resumable_output(out, overwrite) as sink:
            yield sink
    else:
        with staged_output(out, overwrite) as directory:
            sink = JobSink(checked, str(directory))
            yield sink
            _write_marker(sink)


def _write_marker(sink: JobSink) -> None:
    text = json.dumps(sink.manifest(), indent=2, sort_keys=True) + "\n"
    sink.write_file(MARKER, text.encode())


@contextmanager
def _local_resumable_output(out: str, overwrite: bool) -> Iterator[JobSink]:
    final = check_output(out, overwrite)
    root = Path(_resume_root(str(final)))
    (root / "output").mkdir(parents=True, exist_ok=True)
    # A crash leaves ``root`` in place: that is what the next resumable run continues from.
    sink = JobSink(str(final), str(root / "output"), str(root / "checkpoint"))
    yield sink
    _write_marker(sink)
    move_into_place(root / "output", final, overwrite, uuid.uuid4().hex[:8])
    shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _remote_output(out: str, overwrite: bool, resume: bool) -> Iterator[JobSink]:
    out = check_job_output(out, overwrite, resume)
    root = _resume_root(out) if resume else storage.join(out, STAGING_DIR, f"run-{uuid.uuid4().hex[:8]}")
    sink = JobSink(out, storage.join(root, "output"), storage.join(root, "checkpoint") if resume else None)
    try:
        yield sink
    except BaseException:
        if not resume:
            storage.delete_tree(root)
        raise
    publish(sink, overwrite)
    storage.delete_tree(root)
    fs, staging_dir = storage.resolve(storage.join(out, STAGING_DIR))
    if not _relative_files(fs, staging_dir):  # no other run staged here: drop the empty prefix
        storage.delete_tree(storage.join(out, STAGING_DIR))


def publish(sink: JobSink, overwrite: bool) -> None:
    """Copy the staged files next to the staging area, then write ``_SUCCESS`` (object storage)."""
    fs, out_path = storage.resolve(sink.out)
    _, root_path = storage.resolve(sink.root)
    old = _published_files(fs, out_path)
    if old:
        if not overwrite:
            raise OutputExistsError(f"output {sink.out!r} appeared while the job ran; result left in {sink.root}",
                                    "overwrite")
        # The marker goes first: from here on readers see "not ready", never a mix of runs.
        marker = f"{out_path}/{MARKER}"
        if marker in old:
            fs.delete_file(marker)
        for path in old:
            if path != marker:
                fs.delete_file(path)
    manifest = sink.manifest()
    for relative, _ in _relative_files(fs, root_path):
        target = f"{out_path}/{relative}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.copy_file(f"{root_path}/{relative}", target)  # server-side copy on S3/GCS
    with fs.open_output_stream(f"{out_path}/{MARKER}") as handle:  # one PUT: appears whole or not at all
        handle.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


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
