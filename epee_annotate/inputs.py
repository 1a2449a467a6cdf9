"""Turn user inputs (text, relation dicts, images) into model-ready rows and batches.

Relation inputs are marked with typed marker tokens added to the tokenizer as special tokens:
``<e1>head</e1>`` and ``<e2>tail</e2>``. Encoders pool the hidden states of the two start
markers (entity-start pooling); decoders (GPT-2) pool the last real token, which has seen both
marked entities. When a relation input is too long, the token window is cut around the markers
so they are always kept, and the row is flagged ``truncated``.

Mention windowing (``TextEncoder.mention_input``): a mention is classified from its sentence
with the mention wrapped in literal marker strings, ``"... took <e1>fish oil</e1> until ..."``.
A ``task="span"`` checkpoint takes ``{"text", "span": (start, end), "context": (lo, hi)}``
(context optional: default the whole text) and marks it here, in ``encode``, for training,
evaluation and the spaCy component alike; its markers are special tokens and its heads pool the
start marker's hidden state, as the relation task does for each entity. An older ``task="text"`` checkpoint trained on
``mark_mention`` text gets the same marked text from the component. Long inputs are cut
*before* encoding so the parts that matter survive (the text task keeps only the first tokens,
which could drop a mention late in a long sentence); cut inputs are flagged ``truncated``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

RELATION_MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")
TASKS = ("text", "relation", "image", "span")
# A mention is marked with the relation task's head markers. A span checkpoint adds them to its
# vocabulary as special tokens and pools at the start marker (entity-start pooling, as relations do);
# for an older text checkpoint trained on mark_mention text they are plain characters.
MENTION_MARKERS = RELATION_MARKERS[:2]
TASK_MARKERS = {"relation": RELATION_MARKERS, "span": MENTION_MARKERS}  # added to the tokenizer as special tokens
GAP = " ... "  # joins kept pieces of a clipped text
# Characters kept per model token when clipping before tokenisation: tokens rarely cover more
# than a few characters, so this over-keeps; the exact token window is applied afterwards.
CHARS_PER_TOKEN = 16
SLACK_TOKENS = 4  # re-tokenisation at cut points and around markers may add a token or two


class InputError(ValueError):
    """One input cannot be processed; the message says why (never quoting note text)."""


@dataclass
class EncodedRow:
    """One input ready for batching."""

    length: int  # sort key for length bucketing (tokens; 0 for images)
    truncated: bool
    input_ids: list[int] | None = None
    pool_index: list[int] | None = None
    pixel_values: torch.Tensor | None = None


def pooling_width(task: str, is_causal: bool) -> int:
    """How many token positions the exit heads read."""
    return 2 if task == "relation" and not is_causal else 1


class TextEncoder:
    """Tokenise text and relation inputs with the backbone's tokenizer."""

    def __init__(self, tokenizer, task: str, max_length: int, is_causal: bool):
        if task not in ("text", "relation", "span"):
            raise ValueError(f"TextEncoder handles 'text', 'relation' and 'span', not {task!r}")
        self.tokenizer = tokenizer
        self.task = task
        self.is_causal = is_causal
        self.max_length = min(max_length, _model_max_length(tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if task in TASK_MARKERS:
            self.marker_ids = tokenizer.convert_tokens_to_ids(list(TASK_MARKERS[task]))
        self.prefix, self.suffix = _special_affixes(tokenizer)
        self.num_special = len(self.prefix) + len(self.suffix)
        self._mention_room: int | None = None

    @property
    def max_chars(self) -> int:
        """Characters worth keeping of one input before tokenisation (see ``CHARS_PER_TOKEN``)."""
        return self.max_length * CHARS_PER_TOKEN

    @property
    def mention_room(self) -> int:
        """Tokens left for the text around a marked mention (``mention_room`` of the token budget)."""
        if self._mention_room is None:
            self._mention_room = mention_room(self.tokenizer, self.max_length - self.num_special)
        return self._mention_room

    def text_input(self, text: str, lo: int = 0, hi: int | None = None) -> tuple[str, bool]:
        """``text[lo:hi]`` cut to ``max_chars`` (cheap on huge texts); returns (text, cut?)."""
        hi = len(text) if hi is None else hi
        return text[lo : min(hi, lo + self.max_chars)], hi - lo > self.max_chars

    def mention_input(self, text: str, start: int, end: int, lo: int = 0, hi: int | None = None) -> tuple[str, bool]:
        """Marked context ``text[lo:hi]`` of the mention ``text[start:end]``, windowed to fit; (text, cut?).

        Only characters near the mention are copied, so a note's cost grows with its mentions, not
        with mentions x note length.
        """
        hi = len(text) if hi is None else hi
        reach = self.mention_room * CHARS_PER_TOKEN
        near_lo, near_hi = max(lo, start - reach), min(hi, end + reach)
        marked, cut = mention_input(text[near_lo:near_hi], start - near_lo, end - near_lo, self.tokenizer,
                                    self.mention_room)
        return marked, cut or near_lo > lo or near_hi < hi

    def relation_input(self, text: str, head: tuple[int, int], tail: tuple[int, int], lo: int = 0,
                       hi: int | None = None) -> tuple[dict[str, Any], bool]:
        """Relation input for spans ``head``/``tail`` of ``text`` within the context ``text[lo:hi]``; (input, cut?)."""
        hi = len(text) if hi is None else hi
        reach = self.max_chars
        near_lo, near_hi = max(lo, head[0] - reach), min(hi, tail[1] + reach)
        spans = [(head[0] - near_lo, head[1] - near_lo), (tail[0] - near_lo, tail[1] - near_lo)]
        clipped, (h, t), cut = clip_context(text[near_lo:near_hi], spans, self.max_chars)
        return {"text": clipped, "head": h, "tail": t}, cut or near_lo > lo or near_hi < hi

    def encode(self, item: Any) -> EncodedRow:
        text, cut = self._mention_text(item) if self.task == "span" else (self._marked_text(item), False)
        tokens = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        budget = self.max_length - self.num_special
        truncated = cut or len(tokens) > budget
        if len(tokens) > budget:
            tokens = self._window(tokens, budget)
        input_ids = self.prefix + tokens + self.suffix
        return EncodedRow(len(input_ids), truncated, input_ids, self._pool_index(input_ids))

    def _mention_text(self, item: Any) -> tuple[str, bool]:
        """A span input marked by ``mention_input`` within its context; (text, cut?)."""
        if not isinstance(item, dict):
            raise InputError(f"span input must be a dict with 'text' and 'span'; got {type(item).__name__}")
        text = _check_text(item.get("text"))
        start, end = _check_span(item.get("span"), len(text), "span")
        lo, hi = (0, len(text)) if item.get("context") is None else _check_span(item["context"], len(text), "context")
        if not lo <= start < end <= hi:
            raise InputError(f"span ({start}, {end}) is outside its context ({lo}, {hi})")
        return self.mention_input(text, start, end, lo, hi)

    def _marked_text(self, item: Any) -> str:
        if self.task == "text":
            return _check_text(item)
        if not isinstance(item, dict):
            raise InputError(f"relation input must be a dict with 'text', 'head', 'tail'; got {type(item).__name__}")
        text = _check_text(item.get("text"))
        head, tail = (_check_span(item.get(key), len(text), key) for key in ("head", "tail"))
        if head[0] < tail[1] and tail[0] < head[1]:
            raise InputError(f"head span {head} and tail span {tail} overlap")
        inserts = sorted(
            [(head[0], 0, "<e1>"), (head[1], 1, "</e1>"), (tail[0], 0, "<e2>"), (tail[1], 1, "</e2>")],
            key=lambda x: (x[0], -x[1]),
        )
        pieces, last = [], 0
        for offset, _, marker in inserts:
            pieces += [text[last:offset], marker]
            last = offset
        pieces.append(text[last:])
        return "".join(pieces)

    def _window(self, tokens: list[int], budget: int) -> list[int]:
        """Cut to ``budget`` tokens; relation and span rows keep their marked entities."""
        if self.task == "text":
            return tokens[:budget]
        positions = [i for i, t in enumerate(tokens) if t in self.marker_ids]
        lo, hi = positions[0], positions[-1] + 1
        if hi - lo <= budget:
            start = max(0, min(lo - (budget - (hi - lo)) // 2, len(tokens) - budget))
            return tokens[start : start + budget]
        # The marked span alone is too long: keep its beginning and its end.
        half = budget // 2
        return tokens[lo : lo + half] + tokens[hi - (budget - half) : hi]

    def _pool_index(self, input_ids: list[int]) -> list[int]:
        if self.is_causal:
            return [len(input_ids) - 1]
        if self.task == "text":
            return [0]
        starts = self.marker_ids[::2]  # the start marker of each entity
        return [input_ids.index(m) if m in input_ids else 0 for m in starts]

    def collate(self, rows: Sequence[EncodedRow], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad rows to a batch. Pool positions follow the padding."""
        width = max(r.length for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        pool = torch.zeros((len(rows), len(rows[0].pool_index)), dtype=torch.long)
        for i, row in enumerate(rows):
            offset = width - row.length if padding_side == "left" else 0
            ids[i, offset : offset + row.length] = torch.tensor(row.input_ids)
            mask[i, offset : offset + row.length] = 1
            pool[i] = torch.tensor(row.pool_index) + offset
        return {"input_ids": ids, "attention_mask": mask, "pool_index": pool}


def mark_mention(text: str, start: int, end: int, markers: Sequence[str] = MENTION_MARKERS) -> str:
    """``text`` with ``text[start:end]`` wrapped in the mention markers."""
    return f"{text[:start]}{markers[0]}{text[start:end]}{markers[1]}{text[end:]}"


def clip_context(
    text: str, spans: Sequence[tuple[int, int]], max_chars: int
) -> tuple[str, list[tuple[int, int]], bool]:
    """Cut ``text`` to about ``max_chars`` characters, keeping every span and text around it.

    Returns (text, spans shifted into it, clipped?). With no spans the beginning is kept. Pieces
    around spans that lie far apart are joined with ``GAP``.
    """
    if len(text) <= max_chars:
        return text, list(spans), False
    if not spans:
        return text[:max_chars], [], True
    pad = max(0, (max_chars - sum(e - s for s, e in spans)) // (2 * len(spans)))
    pieces: list[list[int]] = []
    for s, e in sorted(spans):
        lo, hi = max(0, s - pad), min(len(text), e + pad)
        if pieces and lo <= pieces[-1][1] + len(GAP):
            pieces[-1][1] = max(pieces[-1][1], hi)
        else:
            pieces.append([lo, hi])
    out, shifts, position = [], [], 0
    for lo, hi in pieces:
        if out:
            out.append(GAP)
            position += len(GAP)
        shifts.append((lo, hi, position - lo))
        out.append(text[lo:hi])
        position += hi - lo
    moved = []
    for s, e in spans:
        shift = next(d for lo, hi, d in shifts if lo <= s and e <= hi)
        moved.append((s + shift, e + shift))
    return "".join(out), moved, True


def mention_room(tokenizer: Any, budget: int) -> int:
    """Tokens left for the sentence around a mention once the markers and some slack are paid for."""
    markers = len(tokenizer(" ".join(MENTION_MARKERS), add_special_tokens=False, verbose=False)["input_ids"])
    return max(1, budget - markers - SLACK_TOKENS)


def mention_input(text: str, start: int, end: int, tokenizer: Any, room: int) -> tuple[str, bool]:
    """Marked text whose unmarked tokens fit ``room`` (see ``mention_room``); returns (text, cut?).

    The token window is centred on the mention; a mention longer than ``room`` keeps its beginning.
    """
    text, [(start, end)], clipped = clip_context(text, [(start, end)], room * CHARS_PER_TOKEN)
    offsets = _offsets(tokenizer, text)
    if offsets is None or len(offsets) <= room:
        return mark_mention(text, start, end), clipped
    inside = [i for i, (s, e) in enumerate(offsets) if s < end and e > start and e > s] or [0]
    first, last = inside[0], inside[-1]
    if last - first + 1 > room:
        end = max(start + 1, offsets[first + room - 1][1])
        lo, hi = min(offsets[first][0], start), end
    else:
        extra = room - (last - first + 1)
        lo_token = max(0, min(first - extra // 2, len(offsets) - room))
        hi_token = min(len(offsets), lo_token + room) - 1
        lo, hi = min(offsets[lo_token][0], start), max(offsets[hi_token][1], end)
    return mark_mention(text[lo:hi], start - lo, end - lo), True


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]] | None:
    """Character offsets of each token (fast tokenizers); None when the tokenizer cannot give them."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    except (NotImplementedError, TypeError, ValueError):
        return None
    return [tuple(pair) for pair in encoded["offset_mapping"]]


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] ... [SEP] for BERT)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def _model_max_length(tokenizer) -> int:
    value = getattr(tokenizer, "model_max_length", None) or 512
    return int(value) if value < 1_000_000 else 512


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"expected text as str, got {type(value).__name__}")
    if not value.strip():
        raise InputError("empty text")
    return value


def _check_span(span: Any, text_length: int, name: str) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in span)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a (start, end) pair of character offsets") from None
    if not 0 <= start < end <= text_length:
        raise InputError(f"{name} span ({start}, {end}) is outside the text of length {text_length}")
    return start, end


class ImageEncoder:
    """Images (arrays, PIL images, file paths or bytes) -> normalised pixel tensors for a ViT."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], num_channels: int = 3):
        self.image_size = int(image_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.num_channels = num_channels

    @classmethod
    def from_processor(cls, processor, num_channels: int = 3) -> "ImageEncoder":
        size = processor.size
        side = size if isinstance(size, int) else (size.get("height") or size.get("shortest_edge"))
        return cls(side, processor.image_mean, processor.image_std, num_channels)

    def encode(self, item: Any) -> EncodedRow:
        return EncodedRow(0, False, pixel_values=self.preprocess(to_unit_array(item)))

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W) or (H, W, C) floats in [0, 1] -> (C, S, S) normalised tensor."""
        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        if tensor.size(0) == 1 and self.num_channels == 3:
            tensor = tensor.expand(3, -1, -1)
        if tuple(tensor.shape[1:]) != (self.image_size, self.image_size):
            # Same-size bilinear sampling is the identity; skipping it is most of a small image's encode time.
            tensor = F.interpolate(
                tensor.unsqueeze(0), size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                align_corners=False,
            )[0]
        return (tensor - self.mean) / self.std

    def collate(self, rows: Sequence[EncodedRow], padding_side: str = "right") -> dict[str, torch.Tensor]:
        pixels = torch.stack([r.pixel_values for r in rows])
        return {"pixel_values": pixels, "pool_index": torch.zeros(len(rows), 1, dtype=torch.long)}


def to_unit_array(item: Any) -> np.ndarray:
    """An image as float32 in [0, 1], (H, W) or (H, W, 3). Files go through the imaging readers."""
    if isinstance(item, (str, os.PathLike, bytes)):
        from .image_decoding import read_image

        return read_image(item)[0].pixels
    if type(item).__module__.startswith("PIL."):
        from .image_decoding import pil_to_unit_array

        return pil_to_unit_array(item)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise InputError(f"expected an image (array, PIL image, path or bytes), got {type(item).__name__}")
    return array_to_unit(item)


def array_to_unit(array: np.ndarray) -> np.ndarray:
    """Scale a numeric image array into [0, 1] float32, checking shape and dtype."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise InputError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image array is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("image array contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise InputError("float image arrays must be scaled to [0, 1]")
        return array.astype(np.float32)
    raise InputError(f"unsupported image dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]")
