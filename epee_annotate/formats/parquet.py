"""Parquet: one record per row, values as Python objects of the file's own types.

Only ``options.columns`` are read (column projection). A row group that cannot be read is one error
record naming it, and reading goes on with the next; a file whose footer cannot be read is one error
record.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from .records import ReadOptions, Record, bad

BATCH_ROWS = 4096


def read_parquet(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as error:
        yield bad(source, "", f"not a readable Parquet file ({type(error).__name__})")
        return
    names = parquet.schema_arrow.names
    columns = None if options.columns is None else [c for c in options.columns if c in names]
    row = 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        try:
            batches = [b.to_pylist() for b in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=columns)]
        except (pa.ArrowException, OSError) as error:  # messages may quote values: the type only
            yield bad(source, f"row group {group} (rows {row + 1}-{row + size})",
                      f"cannot be read ({type(error).__name__})")
            row += size
            continue
        for batch in batches:
            for data in batch:
                row += 1
                yield Record(source, f"row {row}", data)
