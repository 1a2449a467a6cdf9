"""Test-only fault injection: a notes actor that dies once, hard, on a chosen document.

Lives with the tests, not in the package; the Ray tests pickle this module by value so the
workers need not import it.
"""

from __future__ import annotations

import os
from typing import Sequence


def crash_once(marker: str, doc_id: str | None, doc_ids: Sequence[str | None]) -> None:
    """The first caller that sees ``doc_id`` (any doc when None) creates ``marker`` and exits at once."""
    if doc_id is not None and doc_id not in doc_ids:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # already crashed once: this is the retry
    os.close(fd)
    os._exit(1)  # a hard death, like an OOM kill: no exception, no cleanup


def crashing_annotator(marker: str, doc_id: str | None) -> type:
    """A NoteAnnotator subclass whose first batch holding ``doc_id`` kills its worker process."""
    from epee_annotate.pipelines.notes import NoteAnnotator, extract_notes

    class CrashOnceNoteAnnotator(NoteAnnotator):
        def __call__(self, batch):
            crash_once(marker, doc_id, [note.doc_id for note in extract_notes(batch, self.columns)])
            return super().__call__(batch)

    return CrashOnceNoteAnnotator
