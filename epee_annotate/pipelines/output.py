"""All-or-nothing local output directories: write into a hidden sibling, move into place at the end.

Object storage has no rename: see ``publish`` for its staging prefix and ``_SUCCESS`` manifest.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputExistsError, SettingError


def check_output(out: str | Path, overwrite: bool) -> Path:
    """Resolve ``out``; refuse an existing path unless ``overwrite`` (checked before any work)."""
    text = str(out)
    if "://" in text and not text.startswith("file://"):  # object storage: see publish.check_job_output
        raise SettingError(f"{text!r} is a URI; object-storage outputs go through publish.check_job_output", "out")
    path = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser().resolve()
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {str(path)!r} already exists", "overwrite")
    if path.exists() and not path.is_dir():
        raise SettingError(f"output {str(path)!r} exists and is not a directory", "out")
    # The parent may be missing (it is created when the job writes); but not a file in the way.
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise SettingError(f"output {str(path)!r} cannot be created: {str(blocker)!r} is a file", "out")
    return path


@contextmanager
def staged_output(out: Path, overwrite: bool, before_commit: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out``, on failure it is removed.

    The sibling lives in the same parent so the final move is a rename on one filesystem:
    readers see either no dataset or a complete one, never a half-written one. ``before_commit``
    runs right before the rename (the job's last chance to refuse, e.g. a lost lock).
    """
    out = check_output(out, overwrite)
    tag = uuid.uuid4().hex[:8]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{tag}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        if before_commit is not None:
            before_commit()
        move_into_place(staging, out, overwrite, tag)
    except FileExistsError:
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def move_into_place(staging: Path, out: Path, overwrite: bool, tag: str) -> None:
    """Rename ``staging`` to ``out`` (replacing it when ``overwrite``); same filesystem, so atomic.

    Replacing takes two renames (``out`` aside to ``.<name>.old-<tag>``, then ``staging`` in); a
    kill between them leaves no ``out``, which the next job's ``recover_local`` completes.
    """
    if out.exists():
        if not overwrite:  # someone else created it while we ran
            raise OutputExistsError(f"output {str(out)!r} appeared while the job ran; result left in {staging}",
                                    "overwrite")
        old = out.parent / f".{out.name}.old-{tag}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
