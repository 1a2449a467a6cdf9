"""Why a listed input path cannot be read as a file (dangling or looping symlink, not a file, no access)."""

from __future__ import annotations

import errno
import os
import stat


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """A one-line reason when ``path`` cannot be opened as a regular file; None when it can."""
    try:
        info = os.stat(path)  # follows symlinks
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            return "dangling symbolic link (its target does not exist)"
        if error.errno == errno.ENOENT:
            return "file not found"
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a directory or device)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None
