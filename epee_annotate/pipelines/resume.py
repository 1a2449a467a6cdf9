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
ids once up front and refuses duplicates and records without a usable id with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

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

        def __init__(self, keys, checkpoint_path: str, filesystem) -> None:
            super().__init__(ID_COLUMN, checkpoint_path, delete_checkpoint_on_success=False,
                             override_filesystem=filesystem, checkpoint_filter_cls=DocIdCheckpointFilter)
            self.keys = keys

    class DocIdCheckpointFilter(NumpyArrayBasedCheckpointFilter):
        """Drops input rows whose derived ``doc_id`` Ray has committed."""

        def filter_rows_for_block(self, block):
            if self.checkpointed_ids.shape[0] == 0 or block.num_rows == 0:
                return block
            if not hasattr(self, "_done"):  # once per filter actor
                self._done = frozenset(self.checkpointed_ids.tolist())
            keys = self.ckpt_config.keys(block)
            return block.filter(pa.array([key is None or key not in self._done for key in keys]))

    return DocIdCheckpointConfig, DocIdCheckpointFilter


_CLASSES: tuple | None = None


def checkpoint_config(keys, checkpoint_path: str):
    """Ray Data checkpointing at ``checkpoint_path``, keyed by ``keys`` (``NoteKeys``/``PathKeys``)."""
    from .. import storage

    global _CLASSES
    if _CLASSES is None:  # Ray is imported only when a job runs
        _CLASSES = _checkpoint_classes()
    filesystem, resolved = storage.resolve(checkpoint_path)
    return _CLASSES[0](keys, checkpoint_path if storage.is_uri(checkpoint_path) else resolved, filesystem)


def check_resumable_ids(ds, keys, limit: int = 5) -> int:
    """Read every input id once; ``ResumeError`` on duplicates or records without one. Returns the count."""
    import pyarrow.compute as pc
    import ray

    def key_table(block: pa.Table) -> pa.Table:
        ids, problems = keys.with_problems(block)
        return pa.table({ID_COLUMN: pa.array(ids, pa.string()), "problem": pa.array(problems, pa.string())})

    tables = ray.get(ds.map_batches(key_table, batch_format="pyarrow", batch_size=None).to_arrow_refs())
    table = pa.concat_tables(tables) if tables else pa.table({ID_COLUMN: pa.array([], pa.string())})
    ids = table.column(ID_COLUMN)
    missing = ids.null_count
    if missing:
        reasons = [p for p in table.column("problem").to_pylist() if p][:limit]
        raise ResumeError(f"resuming keys documents by id, but {missing} input record(s) have no usable id "
                          f"(e.g. {'; '.join(reasons)}); fix them or do not resume")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        examples = _describe(repeated.field("values").to_pylist()[:limit])
        raise ResumeError(f"resuming keys documents by id, but {len(repeated)} id(s) occur more than once "
                          f"in the input (e.g. {examples}); make the ids unique or do not resume")
    return len(ids)


def _describe(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)
