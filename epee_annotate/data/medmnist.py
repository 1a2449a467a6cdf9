"""MedMNIST ``.npz`` archives as image classification.

The split is chosen by the array names: ``split="train"`` reads ``train_images`` and
``train_labels`` (likewise ``val``, ``test``). Labels are flattened from (N, 1) to (N,);
multi-label sets (N, K) are refused. Label names are ``"0", "1", ...`` unless
``label_names`` gives them (e.g. ``["normal", "pneumonia"]`` for PneumoniaMNIST).
Inputs are the uint8 image arrays themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .examples import DataError, Example, require_examples

PNEUMONIAMNIST_LABELS = ["normal", "pneumonia"]


def _read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from ..imaging import load_npz_split
    except ImportError:  # imaging not importable: read the arrays directly
        load_npz_split = None
    if load_npz_split is not None:
        try:
            return load_npz_split(path, split)
        except ValueError as error:  # ImageReadError is a ValueError
            raise DataError(f"{path}: {error}") from None
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
        if f"{split}_images" not in archive.files or f"{split}_labels" not in archive.files:
            splits = sorted(k[: -len("_images")] for k in archive.files if k.endswith("_images"))
            raise DataError(f"{path}: split {split!r} not in npz; available splits: {splits}")
        images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return images, labels.astype(np.int64)


def medmnist_label_names(num_classes: int, label_names: Sequence[str] | None = None) -> list[str]:
    """Names for class ids 0..num_classes-1."""
    if label_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in label_names]
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be distinct, got {names}")
    return names


def load_medmnist(path: str | Path, split: str = "train", label_names: Sequence[str] | None = None) -> list[Example]:
    """Image examples of one split of a MedMNIST archive."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"npz file {str(source)!r} does not exist")
    images, labels = _read_split(source, split)
    if labels.ndim != 1:
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
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
        return sorted(k[: -len("_images")] for k in archive.files if k.endswith("_images"))
