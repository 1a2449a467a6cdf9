"""Datasets derived from the written annotations (NOTE_NLP, the audit), file by file, through the job's sink.

Each annotation Parquet file gives one derived file of the same name, so a derived dataset always
matches the rows it came from, a resumed run rebuilds it whole, and the sink's manifest and
publish step cover it like the annotations.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pyarrow as pa

from .. import storage


def staged_files(sink, dataset: str, partitioned: bool, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """(file name without folders, ``columns`` that exist) of every Parquet file of the staged ``dataset``."""
    import pyarrow.dataset as pads

    filesystem, path = storage.resolve(sink.staged(dataset))
    data = pads.dataset(path, format="parquet", filesystem=filesystem, partitioning="hive" if partitioned else None)
    present = [c for c in columns if c in data.schema.names]
    for fragment in data.get_fragments():
        relative = fragment.path[len(path.rstrip("/")) + 1:].removesuffix(".parquet")
        yield relative.replace("/", "-").replace("=", "_"), fragment.to_table(schema=data.schema, columns=present)


def write_derived(sink, name: str, source: str, partitioned: bool, columns: list[str],
                  derive: Callable[[pa.Table], pa.Table], schema: pa.Schema) -> int:
    """Dataset ``name`` = ``derive`` of each file of ``source``; an empty dataset still gets one file. Returns rows."""
    import pyarrow.parquet as pq

    storage.delete_tree(sink.staged(name))  # a crashed earlier attempt: rebuilt whole below
    written = 0
    for file_name, table in staged_files(sink, source, partitioned, columns):
        derived = derive(table)
        if derived.num_rows:
            sink.write_table(derived, name, file_name + "-{i}.parquet")
            written += derived.num_rows
    if not written:  # readers still find the dataset, with its schema
        filesystem, path = storage.resolve(sink.staged(name))
        filesystem.create_dir(path, recursive=True)
        pq.write_table(schema.empty_table(), f"{path}/empty.parquet", filesystem=filesystem)
    return written
