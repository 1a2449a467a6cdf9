"""Classify image files (DICOM, PNG, JPEG, ...) with a multi-exit ViT, keeping DICOM metadata.

Decoding failures become per-item errors; every readable image or frame is classified in one
batched early-exit run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..model import MultiExitModel
from ..policies import ExitPolicy
from ..prediction import Prediction
from .reading import DecodedImage, ImageReadError, read_image


@dataclass
class ImagePrediction:
    """The prediction for one image or frame, with where it came from."""

    source: str  # path, or "item-<n>" for in-memory inputs
    frame: int | None
    prediction: Prediction
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "frame": self.frame, **self.prediction.to_dict(), **self.metadata}


def find_image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named, plus every regular file under named directories (sorted; non-images fail later, per item)."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            found.append(entry)
    return found


def decode_sources(
    sources: Sequence[str | os.PathLike | bytes],
    frames: str = "middle",
    extra_tags: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> list[tuple[str, DecodedImage | ImageReadError]]:
    """Decode each source into its images (several for frames="all"), or one error; never raises per item."""
    decoded: list[tuple[str, DecodedImage | ImageReadError]] = []
    for index, source in enumerate(sources):
        name = names[index] if names is not None else f"item-{index}" if isinstance(source, bytes) else str(source)
        try:
            decoded += [(name, image) for image in read_image(source, frames=frames, extra_tags=extra_tags)]
        except ImageReadError as error:
            decoded.append((name, error))
        except Exception as error:  # a decoder bug on one file must not sink the batch
            decoded.append((name, ImageReadError(f"unexpected {type(error).__name__} while decoding")))
    return decoded


def classify_images(
    model: MultiExitModel,
    sources: Sequence[str | os.PathLike | bytes],
    policy: ExitPolicy | None = None,
    batch_size: int = 32,
    frames: str = "middle",
    extra_tags: Sequence[str] = (),
    progress: bool = False,
) -> list[ImagePrediction]:
    """One ImagePrediction per image or frame (per source for unreadable ones), in input order."""
    if model.task != "image":
        raise ValueError(f"classify_images needs an image checkpoint, not a {model.task!r} one")
    decoded = decode_sources(sources, frames, extra_tags)
    readable = [i for i, (_, item) in enumerate(decoded) if isinstance(item, DecodedImage)]
    predictions = model.predict([decoded[i][1].pixels for i in readable], policy, batch_size, progress)
    by_index = dict(zip(readable, predictions))
    results = []
    for index, (name, item) in enumerate(decoded):
        if isinstance(item, DecodedImage):
            results.append(ImagePrediction(name, item.frame, by_index[index], item.metadata))
        else:
            results.append(ImagePrediction(name, None, Prediction.failed(str(item), model.num_layers)))
    return results
