"""Where a job writes while it runs, and how the finished dataset is published.

* Local output, no resume: ``output.staged_output`` (hidden sibling renamed into place).
* Local output with ``--resume``: a fixed sibling ``.<name>.resume/`` holding ``data/`` and
  Ray Data's ``checkpoint/``; it survives a crash, and on success ``data/`` is renamed into place.
* Object storage (no rename there): the job writes under ``<out>/_staging/`` (a fixed
  ``resume/`` or a per-run ``run-<id>/``), then the parts are copied next to it and the
  ``_SUCCESS`` manifest is written last. Parquet readers skip ``_``-prefixed names, so a
  reader that lists ``<out>`` sees no data files until publishing starts, and a reader that
  checks ``_SUCCESS`` (``read_published``) never sees a partial dataset.

Every published dataset, local or remote, has the ``_SUCCESS`` manifest: one JSON object with
the data files (relative paths, bytes) and the row count.
"""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from . import storage
from .output import check_output, move_into_place, staged_output

MARKER = "_SUCCESS"
STAGING_DIR = "_staging"


class DatasetNotReady(FileNotFoundError):
    """The output has no ``_SUCCESS`` marker: the job has not finished (or failed)."""


@dataclass
class Staging:
    """Where Ray writes now (``data``), its checkpoint (resume only), and what to report."""

    out: str
    data: str
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # goes into the manifest (e.g. rows)


def check_job_output(out: str, overwrite: bool, resume: bool = False) -> str:
    """Normalised output location; refuses an existing dataset unless ``overwrite`` (before any work)."""
    if not storage.is_uri(out):
        final = check_output(out, overwrite)
        _refuse_interrupted(_resume_root(str(final)), str(final), overwrite, resume)
        return str(final)
    out = str(out).rstrip("/")
    fs, path = storage.resolve(out)
    if fs.get_file_info(path).type == pafs.FileType.File:
        raise ValueError(f"output {out!r} exists and is not a directory prefix")
    if not overwrite and _published_files(fs, path):
        raise FileExistsError(f"output {out!r} already holds a dataset; pass --overwrite to replace it")
    _refuse_interrupted(_resume_root(out), out, overwrite, resume)
    return out


def _resume_root(out: str) -> str:
    """Where a ``--resume`` run of ``out`` keeps its data and checkpoint until it is published."""
    if storage.is_uri(out):
        return storage.join(out, STAGING_DIR, "resume")
    final = Path(out)
    return str(final.parent / f".{final.name}.resume")


def _refuse_interrupted(root: str, out: str, overwrite: bool, resume: bool) -> None:
    if not overwrite and not resume and storage.exists(root):
        raise FileExistsError(f"output {out!r} has an interrupted --resume run ({root}); pass --resume to "
                              "continue it or --overwrite to start again")


def _published_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Files under ``path`` outside the staging area (what an earlier run published)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    staging = f"{path.rstrip('/')}/{STAGING_DIR}/"
    return [i.path for i in infos if i.type == pafs.FileType.File and not i.path.startswith(staging)]


def _relative_files(fs: pafs.FileSystem, path: str) -> list[tuple[str, int]]:
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((i.path[len(base):], i.size) for i in infos if i.type == pafs.FileType.File)


def manifest_json(files: list[tuple[str, int]], extra: dict[str, Any]) -> str:
    data_files = [{"path": p, "bytes": size} for p, size in files if p.endswith(".parquet")]
    return json.dumps({"format": "parquet", "files": data_files, **extra}, indent=2, sort_keys=True) + "\n"


@contextmanager
def job_output(out: str, overwrite: bool, resume: bool = False) -> Iterator[Staging]:
    """Yield the staging area for one job; publish on success (see module docstring)."""
    checked = check_job_output(out, overwrite, resume)
    if overwrite and not resume:  # starting again: an interrupted --resume run is dropped
        storage.delete_tree(_resume_root(checked))
    if storage.is_uri(out):
        with _remote_output(out, overwrite, resume) as staging:
            yield staging
    elif resume:
        with _local_resumable_output(out, overwrite) as staging:
            yield staging
    else:
        with staged_output(out, overwrite) as directory:
            staging = Staging(str(out), str(directory))
            yield staging
            _write_marker(staging)


def _write_marker(staging: Staging) -> None:
    fs, path = storage.resolve(staging.data)
    text = manifest_json(_relative_files(fs, path), staging.extra)
    with fs.open_output_stream(f"{path}/{MARKER}") as handle:
        handle.write(text.encode())


@contextmanager
def _local_resumable_output(out: str, overwrite: bool) -> Iterator[Staging]:
    final = check_output(out, overwrite)
    root = Path(_resume_root(str(final)))
    (root / "data").mkdir(parents=True, exist_ok=True)
    # A crash leaves ``root`` in place: that is what the next --resume continues from.
    staging = Staging(str(final), str(root / "data"), str(root / "checkpoint"))
    yield staging
    _write_marker(staging)
    move_into_place(root / "data", final, overwrite, uuid.uuid4().hex[:8])
    shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _remote_output(out: str, overwrite: bool, resume: bool) -> Iterator[Staging]:
    out = check_job_output(out, overwrite, resume)
    root = _resume_root(out) if resume else storage.join(out, STAGING_DIR, f"run-{uuid.uuid4().hex[:8]}")
    staging = Staging(out, storage.join(root, "data"), storage.join(root, "checkpoint") if resume else None)
    try:
        yield staging
    except BaseException:
        if not resume:
            storage.delete_tree(root)
        raise
    publish(staging, overwrite)
    storage.delete_tree(root)
    fs, staging_dir = storage.resolve(storage.join(out, STAGING_DIR))
    if not _relative_files(fs, staging_dir):  # no other run staged here: drop the empty prefix
        storage.delete_tree(storage.join(out, STAGING_DIR))


def publish(staging: Staging, overwrite: bool) -> None:
    """Copy the staged parts next to the staging area, then write ``_SUCCESS`` (object storage)."""
    fs, out_path = storage.resolve(staging.out)
    _, data_path = storage.resolve(staging.data)
    old = _published_files(fs, out_path)
    if old:
        if not overwrite:
            raise FileExistsError(f"output {staging.out!r} appeared while the job ran; result left in {staging.data}")
        # The marker goes first: from here on readers see "not ready", never a mix of runs.
        marker = f"{out_path}/{MARKER}"
        if marker in old:
            fs.delete_file(marker)
        for path in old:
            if path != marker:
                fs.delete_file(path)
    files = _relative_files(fs, data_path)
    for relative, _ in files:
        target = f"{out_path}/{relative}"
        parent = target.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        fs.copy_file(f"{data_path}/{relative}", target)  # server-side copy on S3/GCS
    with fs.open_output_stream(f"{out_path}/{MARKER}") as handle:  # one PUT: appears whole or not at all
        handle.write(manifest_json(files, staging.extra).encode())


def read_manifest(out: str) -> dict[str, Any]:
    """The ``_SUCCESS`` manifest of a finished dataset; ``DatasetNotReady`` while there is none."""
    fs, path = storage.resolve(out)
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{MARKER}") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise DatasetNotReady(f"{out!r} has no {MARKER} marker: the job has not finished") from None


def read_published(out: str, columns: list[str] | None = None, partitioned: bool = False) -> pa.Table:
    """Exactly the files the manifest lists, as one table (the reader-side check of completeness)."""
    import pyarrow.dataset as pads

    manifest = read_manifest(out)
    fs, path = storage.resolve(out)
    base = path.rstrip("/")
    paths = [f"{base}/{f['path']}" for f in manifest["files"]]
    partitioning = pads.partitioning(flavor="hive") if partitioned else None
    dataset = pads.dataset(paths, format="parquet", filesystem=fs, partitioning=partitioning,
                           partition_base_dir=base if partitioned else None)
    return dataset.to_table(columns=columns)
