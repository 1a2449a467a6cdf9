"""One entry point for every training-data format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..formats import UnsupportedFormat, format_of
from .ddi import DDI_LABELS, ENTITY_TYPE_ORDER, load_ddi, load_ddi_entities, subsample_negatives
from .examples import Example, sorted_labels
from .generic import TABLE_FORMATS, load_records
from .medmnist import load_medmnist, medmnist_label_names
from .phee import load_phee, phee_labels
from .spans import load_docbin, load_span_records

# Training formats: the registry's labelled formats (``formats.FORMATS``), plus "images", a CSV or
# JSONL list of image paths and labels, and the span formats: "spans" (JSONL records with labelled
# spans), "docbin" (spaCy) and "ddi-entities" (DDI 2013 entity types).
_TASKS = {
    "jsonl": ("text", "relation"),
    "csv": ("text", "relation"),
    "tsv": ("text", "relation"),
    "parquet": ("text", "relation"),
    "phee": ("text",),
    "ddi": ("relation",),
    "npz": ("image",),
    "images": ("image",),
    "spans": ("span",),
    "docbin": ("span",),
    "ddi-entities": ("span",),
}
FORMATS = tuple(_TASKS)


def check_format(fmt: str, task: str) -> None:
    """A clear error when a format cannot feed a task."""
    if fmt not in FORMATS:
        raise UnsupportedFormat(f"unsupported training data format {fmt!r}; supported: {', '.join(FORMATS)}")
    if task not in _TASKS[fmt]:
        raise ValueError(f"format {fmt!r} gives {'/'.join(_TASKS[fmt])} data, not {task!r}")


def load_examples(
    path: str | Path,
    format: str,
    task: str,
    split: str | None = None,
    on_error: str = "stop",
    encoding: str = "utf-8",
    **options: Any,
) -> list[Example]:
    """Examples from ``path`` in ``format`` for ``task``.

    ``split`` picks the npz arrays (default "train"). ``options`` go to the format's loader:
    ``both``/``no_event`` (phee), ``negative_ratio``/``seed`` (ddi: subsample negatives),
    ``label_names`` (npz), ``columns`` (jsonl, csv, tsv, parquet, images: standard name -> the file's
    column), ``spans_key`` (docbin: the span group; None reads ``doc.ents``). For "images", ``path``
    is a CSV, TSV or JSONL list (by extension). ``encoding`` is the text
    encoding of text formats (refused by the others). Files are read through ``epee_annotate.formats``.
    """
    check_format(format, task)
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    if format in TABLE_FORMATS:
        _no_options(format, options, ("columns",))
        return load_records(path, format, task, on_error, options.get("columns"), encoding)
    if format == "images":
        _no_options(format, options, ("columns",))
        fmt = format_of(str(path), ("csv", "tsv")) or "jsonl"
        return load_records(path, fmt, "image", on_error, options.get("columns"), encoding)
    if format == "phee":
        _no_options(format, options, ("both", "no_event"))
        return load_phee(path, on_error=on_error, encoding=encoding, **options)
    if format == "ddi":
        _no_options(format, options, ("negative_ratio", "seed"))
        examples = load_ddi(path, on_error, encoding)
        return subsample_negatives(examples, options.get("negative_ratio"), options.get("seed", 0))
    if format == "spans":
        _no_options(format, options)
        return load_span_records(path, on_error, encoding)
    if format == "docbin":
        _no_options(format, options, ("spans_key",))
        return load_docbin(path, options.get("spans_key"), on_error)
    if format == "ddi-entities":
        _no_options(format, options)
        return load_ddi_entities(path, on_error, encoding)
    _no_options(format, options, ("label_names",))
    return load_medmnist(path, split or "train", options.get("label_names"), encoding)


def _no_options(fmt: str, options: dict[str, Any], allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"format {fmt!r} takes no option(s) {unknown}")


def labels_for(format: str, examples: Sequence[Example], label_names: Sequence[str] | None = None) -> list[str]:
    """The model's label list: fixed by the format (ddi, phee, named npz) or sorted from the data."""
    if format == "ddi":
        return list(DDI_LABELS)
    if format == "ddi-entities":
        return list(ENTITY_TYPE_ORDER)
    if format == "phee":
        return phee_labels(examples)
    if format == "npz":
        if label_names is not None:
            return medmnist_label_names(len(label_names), label_names)
        return medmnist_label_names(max(int(e.label) for e in examples) + 1)
    return sorted_labels(e.label for e in examples)
