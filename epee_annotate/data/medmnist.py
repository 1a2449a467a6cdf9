"""MedMNIST ``.npz`` archives as image classification.

The split is chosen by the array names: ``split="train"`` reads ``train_images`` and
``train_labels`` (likewise ``val``, ``test``). Labels are flattened from (N, 1) to (N,);
multi-label sets (N, K) are refused. Label names are ``"0", "1", ...`` unless
``label_names`` gives them (e.g. ``["normal", "pneumonia"]`` for PneumoniaMNIST).
Inputs are the uint8 image arrays themselves.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import filesystem
from ..formats.npz import NpzError, splits_of
from .examples import DataError, Example, SkipCounter, read_records, require_examples

PNEUMONIAMNIST_LABELS = ["normal", "pneumonia"]


def _read_split(path: str, split: str, encoding: str = "utf-8") -> tuple[list[np.ndarray], np.ndarray]:
    """(images, labels) of one split, read through the format registry (``formats.npz``)."""
    try:
        records = list(read_records(path, "npz", SkipCounter("stop", str(path)), encoding, split=split))
    except NpzError as error:
        raise DataError(f"{path}: {error}") from None
    labels = np.array([r.data["label"] for r in records], dtype=np.int64)
    return [r.data["image"] for r in records], labels


def medmnist_label_names(num_classes: int, label_names: Sequence[str] | None = None) -> list[str]:
    """Names for class ids 0..num_classes-1."""
    if label_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in label_names]
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be distinct, got {names}")
    return names


def load_medmnist(path: str | Path, split: str = "train", label_names: Sequence[str] | None = None,
                  encoding: str = "utf-8") -> list[Example]:
    """Image examples of one split of a MedMNIST archive."""
    source = str(path)
    if not filesystem.is_file(source):
        raise FileNotFoundError(f"npz file {source!r} does not exist")
    images, labels = _read_split(source, split, encoding)
    if labels.ndim == 2:
        raise DataError(f"{source}: split {split!r} is multi-label (labels {labels.shape}); single-label only")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{source}: split {split!r} has negative class ids")
    if label_names is not None and len(labels) and labels.max() >= len(label_names):
        raise DataError(
            f"{source}: split {split!r} has class id {int(labels.max())} but only {len(label_names)} label names"
        )
    names = medmnist_label_names(int(labels.max()) + 1 if len(labels) else 0, label_names)
    examples = [Example(images[i], names[int(labels[i])], f"{split}_{i}") for i in range(len(labels))]
    require_examples(examples, f"{source} split {split!r}")
    return examples


def npz_splits(path: str | Path) -> list[str]:
    """The splits (``<split>_images`` arrays) a MedMNIST-style archive holds."""
    with filesystem.open_input(str(path)) as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as archive:
        return splits_of(archive.files)
