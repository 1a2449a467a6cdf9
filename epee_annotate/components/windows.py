"""Model inputs from doc text: context clipping and mention marking.

A mention is classified from its sentence with the mention wrapped in literal marker strings,
``"... took <e1>fish oil</e1> until ..."``, fed to a ``task="text"`` checkpoint. The strings are
the relation task's head markers, so a future single-span task that adds them as special
tokens reads the same text; for a text checkpoint they are ordinary characters. Train a
mention classifier on text built with ``mark_mention`` so training and inference agree.

Long inputs are cut *before* encoding so the parts that matter survive: the core's text task
keeps only the first tokens, which could drop a mention late in a long sentence. Cut inputs
are flagged ``truncated``.
"""

from __future__ import annotations

from typing import Any, Sequence

MENTION_MARKERS = ("<e1>", "</e1>")
GAP = " ... "  # joins kept pieces of a clipped text
# Characters kept per model token when clipping before tokenisation: tokens rarely cover more
# than a few characters, so this over-keeps; the exact token window is applied afterwards.
CHARS_PER_TOKEN = 16
SLACK_TOKENS = 4  # re-tokenisation at cut points and around markers may add a token or two


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
