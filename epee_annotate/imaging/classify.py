"""Classify image files (DICOM, PNG, JPEG, ...) with a multi-exit ViT, keeping DICOM metadata.

Decoding failures become per-item errors (``"cannot decode image: <reason>"``); every readable
image or frame is classified in one batched early-exit run. Images are downscaled at decode time
towards the model's input side (``reading.read_image(reduce_to=...)``), so a batch never holds
full-resolution pixels, and images above ``max_pixels`` are per-item errors. ``classify_images``
decodes chunk k+1 on a background thread while the model runs on chunk k, so decoding (most of
the time for DICOM) overlaps inference, when a core is left over beside torch's threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from ..cores import usable_cores
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
    for name, source in zip(source_names(sources) if names is None else names, sources):
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


def source_names(sources: Sequence[str | os.PathLike | bytes]) -> list[str]:
    """Each source's name in results: its path, or ``item-<n>`` for in-memory bytes."""
    return [f"item-{i}" if isinstance(source, bytes) else str(source) for i, source in enumerate(sources)]


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
    prefetch_chunk: int = 128,
    prefetch: bool | None = None,
) -> list[ImagePrediction]:
    """One ImagePrediction per image or frame (per source for unreadable ones), in input order.

    Sources are decoded ``prefetch_chunk`` at a time. With ``prefetch`` a background thread decodes
    the next chunk while the model runs on this one; ``None`` (default) prefetches only when this
    process may use more cores than torch's threads (on 2 cores with torch on both it gained
    nothing measurable in ``benchmarks.images_dicom``: 0.93x and 1.02x in two runs).
    """
    if model.task != "image":
        raise ValueError(f"classify_images needs an image checkpoint, not a {model.task!r} one")
    if prefetch_chunk < 1:
        raise ValueError(f"prefetch_chunk must be >= 1, got {prefetch_chunk}")
    names = source_names(sources) if names is None else list(names)
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} sources")
    side = model_input_side(model)
    starts = range(0, len(sources), prefetch_chunk)
    if prefetch is None:
        import torch

        prefetch = usable_cores() > torch.get_num_threads()

    def decode(start: int) -> list[tuple[str, DecodedImage | ImageReadError]]:
        end = start + prefetch_chunk
        return decode_sources(sources[start:end], frames, extra_tags, names[start:end], side, max_pixels)

    results: list[ImagePrediction] = []
    # One decoding thread at most: decoding (pydicom, Pillow, numpy) and torch overlap, and memory
    # stays bounded, since at most two chunks of decoded images exist at once.
    with ThreadPoolExecutor(1, thread_name_prefix="epee-decode") as pool, \
            tqdm(total=len(sources), desc="images", unit="file", disable=not progress) as bar:
        pending = pool.submit(decode, 0) if prefetch and len(sources) else None
        for k, start in enumerate(starts):
            decoded = pending.result() if pending is not None else decode(start)
            pending = pool.submit(decode, starts[k + 1]) if prefetch and k + 1 < len(starts) else None
            results += classify_decoded(model, decoded, policy, batch_size)
            bar.update(min(prefetch_chunk, len(sources) - start))
    return results
