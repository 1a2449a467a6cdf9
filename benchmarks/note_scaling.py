"""Per-note cost of the span and relation components: must grow linearly with the note.

    python -m benchmarks.note_scaling [--mentions 4000] [--threads 1] [--out result.json]

A tiny random BERT checkpoint (``epee_annotate.testing.tiny_model``) keeps the model cheap, so
what is measured is the component work around it (collecting mentions, windowing, writing
records, ``doc_annotations(include_text=True)``). Reported, all from one run:

- ``one note / separate notes``: seconds for N supplement mentions in one note (N sentences),
  over seconds for the same N sentences as N notes. Linear per-note cost gives about 1.
- ``one sentence``: the same N mentions in one note without sentence boundaries (every mention's
  context is the whole note), over the separate-notes time.
- ``doubling``: seconds for N mentions over seconds for N/2 in one note; linear gives about 2,
  quadratic about 4.

Ratios within one run only: absolute seconds depend on the (shared) machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import spacy
import torch

from epee_annotate.components import doc_annotations
from epee_annotate.components.clinical import SUPPLEMENT_STATUS_LABELS
from epee_annotate.testing import tiny_model

SENTENCE = "she stopped taking fish oil last week."
CLAUSE = "she stopped taking fish oil last week and"


def pipeline(checkpoint: str, sentencizer: bool = True):
    nlp = spacy.blank("en")
    if sentencizer:
        nlp.add_pipe("sentencizer")
    nlp.add_pipe("epee_supplement_status", config={"checkpoint": checkpoint, "batch_size": 64})
    return nlp


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def annotate(nlp, texts: list[str]) -> int:
    """Run the pipeline and export rows with text (the --include-text path); returns the row count."""
    return sum(len(doc_annotations(doc, include_text=True)) for doc in nlp.pipe(texts, batch_size=64))


def run(mentions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as root:
        tiny_model("bert", root, task="text", labels=SUPPLEMENT_STATUS_LABELS).save_pretrained(root)
        nlp, flat = pipeline(root), pipeline(root, sentencizer=False)
        annotate(nlp, [SENTENCE] * 8)  # load the model and warm up
        annotate(flat, [SENTENCE] * 8)
        half = mentions // 2
        seconds = {
            "separate_notes": timed(lambda: annotate(nlp, [SENTENCE] * mentions)),
            "one_note": timed(lambda: annotate(nlp, [" ".join([SENTENCE] * mentions)])),
            "one_note_half": timed(lambda: annotate(nlp, [" ".join([SENTENCE] * half)])),
            "one_sentence": timed(lambda: annotate(flat, [" ".join([CLAUSE] * mentions)])),
        }
    return {
        "mentions": mentions,
        "note_chars": len(" ".join([SENTENCE] * mentions)),
        "seconds": seconds,
        "one_note_over_separate": seconds["one_note"] / seconds["separate_notes"],
        "one_sentence_over_separate": seconds["one_sentence"] / seconds["separate_notes"],
        "doubling_ratio": seconds["one_note"] / seconds["one_note_half"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentions", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.mentions)
    s = result["seconds"]
    print(f"{result['mentions']} mentions ({result['note_chars']} chars in one note), {result['threads']} thread(s)")
    print(f"  separate notes {s['separate_notes']:.2f} s | one note {s['one_note']:.2f} s | "
          f"one note, no sentences {s['one_sentence']:.2f} s | one note, half the mentions {s['one_note_half']:.2f} s")
    print(f"  one note / separate notes: {result['one_note_over_separate']:.2f}x; "
          f"no sentences / separate: {result['one_sentence_over_separate']:.2f}x; "
          f"doubling the note: {result['doubling_ratio']:.2f}x (linear ~2, quadratic ~4)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
