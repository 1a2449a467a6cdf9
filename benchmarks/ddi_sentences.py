"""A 3-class sentence task built from DDI 2013, for the benchmark's 3-class row.

Each DDI sentence with at least one candidate drug pair becomes one text example:
``mechanism`` when any pair is a pharmacokinetic (mechanism) interaction, else ``interaction``
when any pair is an effect / advise / int interaction, else ``none``. Documents are split
into train and dev (whole documents, deterministic by seed) and written as JSONL for
``epee-annotate train --format jsonl``. A dev sentence whose text also occurs in train (DrugBank
repeats boilerplate sentences across documents) is dropped and counted: ``calibrate`` refuses
calibration data that model selection saw, and the guarantee needs it independent.

    python -m benchmarks.ddi_sentences --ddi ../shared/data/ddi/Train --out /work/runs/ddi3
"""

from __future__ import annotations

import argparse
import json
import random
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from epee_annotate.data.ddi import ddi_files

LABELS = ("none", "interaction", "mechanism")


def sentence_label(sentence: ET.Element) -> str | None:
    """The sentence's class, or None when it has no candidate pair."""
    pairs = list(sentence.iter("pair"))
    if not pairs:
        return None
    types = {(p.get("type") or "").lower() for p in pairs if p.get("ddi") == "true"}
    if "mechanism" in types:
        return "mechanism"
    return "interaction" if types else "none"


def build(ddi: Path, out: Path, dev_fraction: float = 0.25, seed: int = 0) -> tuple[dict[str, Counter], int]:
    """Write train.jsonl and dev.jsonl under ``out``: (label counts per part, dev rows dropped as repeats of train)."""
    documents: dict[str, list[dict]] = {}
    for file in ddi_files(ddi):  # local paths (ET.parse reads files, not URIs)
        root = ET.parse(file).getroot()
        document = root.get("id") or Path(file).stem  # the loader's group: the <document id>
        for sentence in root.iter("sentence"):
            label = sentence_label(sentence)
            if label is None or not sentence.get("text"):
                continue
            documents.setdefault(document, []).append(
                {"id": sentence.get("id"), "group": document, "text": sentence.get("text"), "label": label})
    names = sorted(documents)
    random.Random(seed).shuffle(names)
    cut = int(len(names) * dev_fraction)
    parts = {"dev": names[:cut], "train": names[cut:]}
    out.mkdir(parents=True, exist_ok=True)
    rows_of = {part: [row for name in sorted(docs) for row in documents[name]] for part, docs in parts.items()}
    train_texts = {row["text"] for row in rows_of["train"]}
    kept = [row for row in rows_of["dev"] if row["text"] not in train_texts]
    dropped, rows_of["dev"] = len(rows_of["dev"]) - len(kept), kept
    counts = {}
    for part, rows in rows_of.items():
        with open(out / f"{part}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        counts[part] = Counter(row["label"] for row in rows)
    return counts, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddi", type=Path, required=True, help="DDI 2013 Train directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dev-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts, dropped = build(args.ddi, args.out, args.dev_fraction, args.seed)
    for part, labels in counts.items():
        print(part, sum(labels.values()), dict(labels))
    print(f"dev: dropped {dropped} sentences whose text also occurs in train")


if __name__ == "__main__":
    main()
