"""``--resume``: Ray Data's own checkpointing (``DataContext.checkpoint_config``), keyed by document id.

Ray Data (>= 2.5x, ``ray.data.checkpoint``) records, for every Parquet part it writes, the ids
in that part (pending before the write, committed after it); on the next run it deletes the
parts whose checkpoint was never committed and drops the input rows whose id is committed,
right after the read. Its stock filter needs the id column in the *input* rows, under the
output's name and type. Our inputs carry raw records (``sources.records_block``: an id field of
any name or type), so ``DocIdCheckpointFilter`` derives each input row's ``doc_id`` with the
very code the annotator uses (``notes.extract_notes``; the file path for images) and drops
the committed ones. Everything else (2-phase commit, cleanup, loading) is Ray's.

Keying by id needs every input record to have one, unique: ``check_resumable_ids`` reads the
ids once up front (a Ray Data pass of its own, ``resume_prescan`` in the progress) and refuses
duplicates and records without a usable id with a clear error. Its memory is bounded, whatever
the number of ids: each id becomes a 64-bit hash on the workers, the driver streams the hashes
into bucket files on disk by their top bits and sorts one bucket at a time; equal hashes are
then checked against the ids themselves in a second pass, so a hash collision is never taken
for a duplicate.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .progress import Display, batch_units, report
from .sources import INPUT_BYTES

ID_COLUMN = "doc_id"


class ResumeError(ValueError):
    """The input cannot be resumed by document id (duplicate or missing ids)."""


@dataclass(frozen=True)
class NoteKeys:
    """``doc_id`` of each raw notes input row (None when it has no usable id), plus where it is."""

    columns: "NoteColumns"  # noqa: F821

    def __call__(self, block: pa.Table) -> list[str | None]:
        return self.with_problems(block)[0]

    def with_problems(self, block: pa.Table) -> tuple[list[str | None], list[str | None]]:
        """(ids, why a row has no id or None), one each per row."""
        from .notes import extract_notes

        notes = extract_notes(block, self.columns)
        return [n.doc_id for n in notes], [None if n.doc_id else (n.error or "missing id") for n in notes]


@dataclass(frozen=True)
class PathKeys:
    """``doc_id`` of an image-file input row: its path, with the scheme Ray strips (as the images job writes it)."""

    prefix: str = ""

    def __call__(self, block: pa.Table) -> list[str | None]:
        from .sources import SOURCE_FILE

        return [self.prefix + path for path in block.column(SOURCE_FILE).to_pylist()]

    def with_problems(self, block: pa.Table) -> tuple[list[str | None], list[str | None]]:
        return self(block), [None] * block.num_rows


def _checkpoint_classes():
    from ray.data.checkpoint import CheckpointConfig, NumpyArrayBasedCheckpointFilter

    class DocIdCheckpointConfig(CheckpointConfig):
        """Ray's config plus how to derive ``doc_id`` from an input row."""

        def __init__(self, keys, checkpoint_path: str, filesystem, progress=None) -> None:
            super().__init__(ID_COLUMN, checkpoint_path, delete_checkpoint_on_success=False,
                             override_filesystem=filesystem, checkpoint_filter_cls=DocIdCheckpointFilter)
            self.keys = keys
            self.progress = progress  # the job's progress counter: skipped records count as done

    class DocIdCheckpointFilter(NumpyArrayBasedCheckpointFilter):
        """Drops input rows whose derived ``doc_id`` Ray has committed."""

        def filter_rows_for_block(self, block):
            if self.checkpointed_ids.shape[0] == 0 or block.num_rows == 0:
                return block
            if not hasattr(self, "_done"):  # once per filter actor
                self._done = frozenset(self.checkpointed_ids.tolist())
            keys = self.ckpt_config.keys(block)
            keep = pa.array([key is None or key not in self._done for key in keys])
            report(self.ckpt_config.progress, block.filter(pc.invert(keep)))
            return block.filter(keep)

    return DocIdCheckpointConfig, DocIdCheckpointFilter


_CLASSES: tuple | None = None


PENDING_SUFFIX = ".pending.parquet"  # Ray's pending checkpoint files (ray.data.checkpoint.checkpoint_writer)


def finish_interrupted_commits(checkpoint_path: str) -> int:
    """Complete the checkpoint commits a killed run left half done; how many there were.

    Ray commits a checkpoint by moving ``X.pending.parquet`` to ``X.parquet``. On object storage a
    move is a copy and then a delete, so a driver killed between the two leaves both files. Ray's
    recovery then deletes the data files of every pending checkpoint, although its ids are
    committed and will be skipped: those documents would be lost. A pending file whose committed
    twin exists is a finished commit, so its pending file is deleted first, as Ray's own
    (idempotent) commit would have done.
    """
    from pyarrow.fs import FileSelector, FileType

    from .. import storage

    filesystem, path = storage.resolve(checkpoint_path)
    if filesystem.get_file_info(path).type != FileType.Directory:
        return 0
    names = {info.path for info in filesystem.get_file_info(FileSelector(path)) if info.type == FileType.File}
    finished = [name for name in names if name.endswith(PENDING_SUFFIX)
                and name[: -len(PENDING_SUFFIX)] + ".parquet" in names]
    for name in finished:
        filesystem.delete_file(name)
    return len(finished)


def checkpoint_config(keys, checkpoint_path: str, progress=None):
    """Ray Data checkpointing at ``checkpoint_path``, keyed by ``keys`` (``NoteKeys``/``PathKeys``);
    the records it skips count as done on ``progress`` (the job's counter, or None)."""
    from .. import storage

    global _CLASSES
    if _CLASSES is None:  # Ray is imported only when a job runs
        _CLASSES = _checkpoint_classes()
    filesystem, resolved = storage.resolve(checkpoint_path)
    return _CLASSES[0](keys, checkpoint_path if storage.is_uri(checkpoint_path) else resolved, filesystem, progress)


BUCKET_BITS = 8  # 256 bucket files: 10 million ids make 39,000 hashes (312 KB) per bucket
VERIFIED = 1000  # equal hashes checked against the ids (refusing needs one real duplicate)


def id_hash(doc_id: str) -> int:
    """A 64-bit hash of an id (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def check_resumable_ids(ds, keys, limit: int = 5, hash_id=id_hash, progress: bool = False,
                        total_bytes: int | None = None) -> int:
    """Read every input id once; ``ResumeError`` on duplicates or records without one. Returns the count.

    Bounded memory (module docstring): the driver holds one block of hashes and one bucket at a time.
    With ``progress``, a "resume pre-scan" bar counts the input bytes read of ``total_bytes``.
    """
    def resume_prescan(block: pa.Table) -> pa.Table:  # the name Ray's own progress shows for this pass
        ids, problems = keys.with_problems(block)
        return pa.table({"hash": pa.array([0 if i is None else hash_id(i) for i in ids], pa.uint64()),
                         "missing": pa.array([i is None for i in ids], pa.bool_()),
                         "problem": pa.array(problems, pa.string()),
                         INPUT_BYTES: pa.array([batch_units(block)] + [0] * (block.num_rows - 1)
                                               if block.num_rows else [], pa.int64())})

    display = Display("resume pre-scan", total_bytes, "B") if progress else None
    total, missing, read, reasons = 0, 0, 0, []
    with tempfile.TemporaryDirectory(prefix="epee-resume-ids-") as tmp:
        buckets = [open(os.path.join(tmp, f"{b:03d}"), "wb") for b in range(1 << BUCKET_BITS)]
        try:
            for batch in ds.map_batches(resume_prescan, batch_format="pyarrow", batch_size=None) \
                    .iter_batches(batch_format="pyarrow", batch_size=None):
                absent = batch.column("missing").to_numpy(zero_copy_only=False)
                total += batch.num_rows
                read += batch_units(batch)
                if display is not None:
                    display.show(read, total)
                if absent.any():
                    missing += int(absent.sum())
                    if len(reasons) < limit:
                        reasons += [p for p in batch.column("problem").filter(pa.array(absent)).to_pylist()
                                    if p][: limit - len(reasons)]
                _spill(batch.column("hash").to_numpy(zero_copy_only=False)[~absent], buckets)
        finally:
            for handle in buckets:
                handle.close()
            if display is not None:
                display.close()
        if missing:
            raise ResumeError(f"resuming keys documents by id, but {missing} input record(s) have no usable id "
                              f"(e.g. {'; '.join(reasons)}); fix them or do not resume")
        repeated = _repeated_hashes(tmp)
    if repeated:
        duplicates = _verified_duplicates(ds, keys, repeated[:VERIFIED], hash_id)
        if duplicates:
            count = len(duplicates) if len(repeated) <= VERIFIED else f"at least {len(duplicates)}"
            raise ResumeError(f"resuming keys documents by id, but {count} id(s) occur more than once "
                              f"in the input (e.g. {_describe(sorted(duplicates)[:limit])}); make the ids unique "
                              "or do not resume")
    return total


def _spill(hashes, buckets) -> None:
    """Append each hash to the bucket file its top bits name."""
    import numpy as np

    hashes = np.sort(hashes)  # sorted by value is sorted by bucket
    bounds = np.searchsorted(hashes >> np.uint64(64 - BUCKET_BITS), np.arange(len(buckets) + 1, dtype=np.uint64))
    for b in np.flatnonzero(np.diff(bounds)):
        buckets[b].write(hashes[bounds[b]:bounds[b + 1]].tobytes())


def _repeated_hashes(directory: str) -> list[int]:
    """The hashes found more than once, one bucket file in memory at a time."""
    import numpy as np

    repeated: list[int] = []
    for name in sorted(os.listdir(directory)):
        hashes = np.sort(np.fromfile(os.path.join(directory, name), dtype=np.uint64))
        same = hashes[1:][hashes[1:] == hashes[:-1]]
        repeated += [int(h) for h in np.unique(same)]
    return repeated


def _verified_duplicates(ds, keys, hashes: list[int], hash_id=id_hash) -> list[str]:
    """The ids, among those with one of ``hashes``, that really occur more than once (a second pass)."""
    wanted = set(hashes)

    def resume_verify(block: pa.Table) -> pa.Table:
        ids = [i for i in keys.with_problems(block)[0] if i is not None and hash_id(i) in wanted]
        return pa.table({ID_COLUMN: pa.array(ids, pa.string())})

    seen: dict[str, int] = {}
    for batch in ds.map_batches(resume_verify, batch_format="pyarrow", batch_size=None) \
            .iter_batches(batch_format="pyarrow", batch_size=None):
        for doc_id in batch.column(ID_COLUMN).to_pylist():
            seen[doc_id] = seen.get(doc_id, 0) + 1
    return [doc_id for doc_id, count in seen.items() if count > 1]


def _describe(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)
