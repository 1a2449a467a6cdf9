"""Classify image files (DICOM, PNG, JPEG, ...) with a multi-exit ViT, keeping DICOM metadata.

Decoding failures become per-item errors (``"cannot decode image: <reason>"``); every readable
image or frame is classified in one batched early-exit run. Images are downscaled at decode time
towards the model's input side (``reading.read_image(reduce_to=...)``), so a batch never holds
full-resolution pixels, and images above ``max_pixels`` are per-item errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..model import MultiExitModel
from ..policies import ExitPolicy
from ..prediction import Prediction
from ..image_decoding import MAX_PIXELS, DecodedImage, ImageReadError, read_image

DECODE_ERROR_PREFIX = "cannot decode image: "


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
    """Files named, plus every file under named directories (sorted; non-images fail later, per item).

    Dangling symlinks and symlink loops are listed too, so they become error rows, not silent skips.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(p for p in entry.rglob("*")
                            if (p.is_symlink() or p.is_file()) and not p.is_dir() and not p.name.startswith("."))
        else:
            found.append(entry)
    return found


def decode_sources(
    sources: Sequence[str | os.PathLike | bytes],
    frames: str = "middle",
    extra_tags: Sequence[str] = (),
    names: Sequence[str] | None = None,
    reduce_to: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> list[tuple[str, DecodedImage | ImageReadError]]:
    """Decode each source into its images (several for frames="all"), or one error; never raises per item."""
    decoded: list[tuple[str, DecodedImage | ImageReadError]] = []
    for index, source in enumerate(sources):
        name = names[index] if names is not None else f"item-{index}" if isinstance(source, bytes) else str(source)
        try:
            images = read_image(source, frames=frames, extra_tags=extra_tags, reduce_to=reduce_to,
                                max_pixels=max_pixels)
            decoded += [(name, image) for image in images]
        except ImageReadError as error:
            decoded.append((name, error))
        except MemoryError:
            decoded.append((name, ImageReadError("out of memory while decoding (MemoryError)")))
        except Exception as error:  # a decoder bug on one file must not sink the batch
            decoded.append((name, ImageReadError(f"unexpected {type(error).__name__} while decoding")))
    return decoded


def model_input_side(model: MultiExitModel) -> int | None:
    """The side the model's encoder resizes images to (None for non-image models)."""
    side = getattr(model.encoder, "image_size", None)
    return int(side) if side else None


def classify_decoded(
    model: MultiExitModel,
    decoded: Sequence[tuple[str, DecodedImage | ImageReadError]],
    policy: ExitPolicy | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[ImagePrediction]:
    """Predict every decoded image in one batched run and join back, errors in place (input order)."""
    readable = [i for i, (_, item) in enumerate(decoded) if isinstance(item, DecodedImage)]
    predictions = model.predict([decoded[i][1].pixels for i in readable], policy, batch_size, progress)
    by_index = dict(zip(readable, predictions))
    results = []
    for index, (name, item) in enumerate(decoded):
        if isinstance(item, DecodedImage):
            results.append(ImagePrediction(name, item.frame, by_index[index], item.metadata))
        else:
            failed = Prediction.failed(f"{DECODE_ERROR_PREFIX}{item}", model.num_layers)
            results.append(ImagePrediction(name, None, failed))
    return results


def classify_images(
    model: MultiExitModel,
    sources: Sequence[str | os.PathLike | bytes],
    policy: ExitPolicy | None = None,
    batch_size: int = 32,
    frames: str = "middle",
    extra_tags: Sequence[str] = (),
    progress: bool = False,
    names: Sequence[str] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> list[ImagePrediction]:
    """One ImagePrediction per image or frame (per source for unreadable ones), in input order."""
    if model.task != "image":
        raise ValueError(f"classify_images needs an image checkpoint, not a {model.task!r} one")
    decoded = decode_sources(sources, frames, extra_tags, names, model_input_side(model), max_pixels)
    return classify_decoded(model, decoded, policy, batch_size, progress)
