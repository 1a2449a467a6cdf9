"""The job output's storage operations (delete, upload) on local paths or object storage.

Reading, listing and resolving locations is the core layer's ``epee_annotate.filesystem``; its
names are re-exported here for the pipeline modules that use both.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from .filesystem import bounded
from .filesystem import (  # noqa: F401  (re-exported)
    exists, fetch, filesystem_of, is_uri, join, list_files, open_input, ray_paths, resolve, scheme, to_location,
)

__all__ = [
    "delete_tree", "exists", "fetch", "filesystem_of", "is_uri", "join", "list_files", "open_input", "ray_paths",
    "resolve", "scheme", "to_location", "upload_dir",
]


def delete_tree(location: str) -> None:
    """Remove a directory/prefix and everything under it (missing is fine)."""
    fs, path = resolve(location)
    with bounded(location):
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)


def upload_dir(local_dir: str, location: str) -> None:
    """Copy a local directory's files under ``location`` (keeps relative paths)."""
    fs, path = resolve(location)
    with bounded(location):
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
