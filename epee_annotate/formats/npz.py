"""MedMNIST-style ``.npz`` archives: one record per image of a split, ``{"id", "image", "label"}``.

The split is chosen by array names: ``split="val"`` reads ``val_images`` (uint8 (N,H,W) or
(N,H,W,3)) and ``val_labels``. Labels (N, 1) are flattened to ints; multi-label sets (N, K) give
lists. The id is ``"<split>-<index>"`` zero-padded. An archive is read whole, so it is all or
nothing: any fault (corrupt archive, missing split, wrong arrays) raises ``NpzError``.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from typing import BinaryIO, Iterator

import numpy as np

from .records import ReadOptions, Record, select


class NpzError(ValueError):
    """The archive or the split cannot be read (one line, no data)."""


def load_split(stream: BinaryIO, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,H,W[,3]), labels int64 (N,) or (N, K)) of one split."""
    try:
        data = io.BytesIO(stream.read())  # zip needs random access; the archive is read whole anyway
        with np.load(data, allow_pickle=False) as npz:
            keys = set(npz.files)
            found = f"{split}_images" in keys and f"{split}_labels" in keys
            if found:
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise NpzError(f"cannot read npz archive ({type(exc).__name__})") from exc
    if not found:
        raise NpzError(f"split {split!r} not in npz; available splits: {splits_of(keys)}")
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise NpzError(f"expected uint8 (N,H,W) or (N,H,W,3) images, got {images.dtype} {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or len(labels) != len(images):
        raise NpzError(f"labels shape {labels.shape} does not match {len(images)} images")
    return images, labels.astype(np.int64)


def splits_of(names) -> list[str]:
    """The splits (``<split>_images`` arrays) among an archive's array names."""
    return sorted(k[: -len("_images")] for k in names if k.endswith("_images"))


def read_npz(stream: BinaryIO, source: str, options: ReadOptions, split: str = "train") -> Iterator[Record]:
    images, labels = load_split(stream, split)
    width = len(str(max(len(images) - 1, 0)))
    for i in range(len(images)):
        label = int(labels[i]) if labels.ndim == 1 else [int(x) for x in labels[i]]
        yield Record(source, f"image {i}", select({"id": f"{split}-{i:0{width}d}", "image": images[i], "label": label},
                                                  options.columns))
