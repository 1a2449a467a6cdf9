"""Clinical pipeline demo: medSpaCy + EPEE supplement status, drug-drug interactions and PV events.

    python examples/clinical_pipeline.py --pv runs/phee_minilm --ddi runs/ddi_minilm [--supplement DIR]
        [--notes examples/notes] [--drug-lexicon rules.json | DDI_DIR] [--policy-entropy 0.3 --policy-patience 2]

Checkpoints not given are replaced by tiny random ones: their labels are meaningless (the demo
says so loudly). The notes in examples/notes are synthetic; the table prints the mention text
only, never whole sentences (do the same with real notes: clinical text is PHI).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from epee_annotate.components import (
    DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_STATUS_LABELS, build_drug_lexicon, doc_annotations, write_rules,
)

HERE = Path(__file__).resolve().parent
# A few common drug names for the demo's drug matcher (written here, not taken from any corpus).
DEMO_DRUGS = ["amiodarone", "amoxicillin", "aspirin", "digoxin", "ibuprofen", "lisinopril", "metformin",
              "sertraline", "simvastatin", "tramadol", "warfarin"]
TASKS = {"supplement": ("text", SUPPLEMENT_STATUS_LABELS), "ddi": ("relation", DDI_LABELS),
         "pv": ("text", PV_EVENT_LABELS)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supplement", help="supplement-status checkpoint (text task)")
    parser.add_argument("--ddi", help="DDI checkpoint (relation task)")
    parser.add_argument("--pv", help="PV event checkpoint (text task, PHEE labels)")
    parser.add_argument("--notes", default=str(HERE / "notes"), help="directory of .txt notes")
    parser.add_argument("--drug-lexicon", help="rules JSON or a DDI 2013 XML directory (default: a small demo list)")
    parser.add_argument("--policy-entropy", type=float, help="exit policy entropy threshold (default: checkpoint's)")
    parser.add_argument("--policy-patience", type=int, help="exit policy patience (default: checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def demo_checkpoints(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """The given checkpoints; tiny random stand-ins for the missing ones."""
    out = {}
    for key, (task, labels) in TASKS.items():
        given = getattr(args, key)
        if given:
            out[key] = given
            continue
        from epee_annotate.testing import tiny_model

        print(f"!!! UNTRAINED DEMO: no --{key} checkpoint, using a tiny RANDOM model; its labels mean nothing !!!",
              file=sys.stderr)
        tiny_model("bert", workdir / key, task=task, labels=labels).save_pretrained(workdir / key)
        out[key] = str(workdir / key)
    return out


def build_pipeline(checkpoints: dict[str, str], lexicon: Path, policy: dict | None, batch_size: int):
    """medspacy.load() (tokenizer, PyRuSH, TargetMatcher, ConText) plus the three EPEE components."""
    import medspacy

    nlp = medspacy.load()
    common = {"policy": policy, "batch_size": batch_size}
    # Before ConText, so negation/history/family flags are set on the supplement mentions it adds.
    nlp.add_pipe("epee_supplement_status", config={"checkpoint": checkpoints["supplement"], **common},
                 before="medspacy_context")
    nlp.add_pipe("epee_ddi", config={"checkpoint": checkpoints["ddi"], "lexicon": str(lexicon), **common})
    nlp.add_pipe("epee_pv_event", config={"checkpoint": checkpoints["pv"], **common})
    return nlp


def table(rows: list[tuple]) -> str:
    header = ("note", "task", "kind", "where", "label", "exit", "conf", "flags")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def annotation_rows(name: str, doc) -> list[tuple]:
    rows = []
    for a in doc_annotations(doc):
        if a["kind"] == "mention":
            where = doc.text[a["start"]:a["end"]]  # the mention only: fine for synthetic notes
        elif a["kind"] == "pair":
            where = f"{doc.text[a['head_start']:a['head_end']]} + {doc.text[a['tail_start']:a['tail_end']]}"
        else:
            where = f"chars {a['start']}-{a['end']}"
        flags = ",".join(k for k, v in (a["context"] or {}).items() if v) + (" truncated" if a["truncated"] else "")
        conf = "-" if a["confidence"] is None else f"{a['confidence']:.2f}"
        rows.append((name, a["task"].removeprefix("epee_"), a["kind"], where, a["label"],
                     f"{a['exit_layer']}/{a['num_layers']}", conf, flags))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes = sorted(Path(args.notes).glob("*.txt"))
    if not notes:
        print(f"no .txt notes under {args.notes}", file=sys.stderr)
        return 2
    policy = None
    if args.policy_entropy is not None or args.policy_patience is not None:
        policy = {"entropy": args.policy_entropy, "patience": args.policy_patience}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoints = demo_checkpoints(args, workdir)
        lexicon = workdir / "drugs.json"
        source = args.drug_lexicon
        if source and source.endswith(".json"):
            lexicon = Path(source)
        else:
            write_rules(build_drug_lexicon(source if source else DEMO_DRUGS, label=None if source else "DRUG"), lexicon)
        nlp = build_pipeline(checkpoints, lexicon, policy, args.batch_size)
        texts = [p.read_bytes().decode("utf-8", errors="replace") for p in notes]
        rows = []
        for path, doc in zip(notes, nlp.pipe(texts)):
            rows += annotation_rows(path.stem, doc)
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
