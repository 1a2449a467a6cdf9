"""Loaders for generic JSONL/CSV, PHEE, DDI 2013 XML and MedMNIST npz, on fixtures written here."""

import json
import logging

import numpy as np
import pytest

from epee_annotate.data import (
    DDI_LABELS,
    PHEE_LABELS,
    DataError,
    Example,
    ddi_drug_lexicon,
    label_counts,
    labels_for,
    load_examples,
    phee_labels,
    sorted_labels,
    split_by_group,
    subsample_negatives,
)
from epee_annotate.metrics import accuracy, macro_f1, micro_f1_positive, per_class_f1

SECRET = "Jane Doe"  # stands in for PHI: must never reach a log line or an error message


# ----- PHEE ---------------------------------------------------------------------------------
def _phee_line(ident, text, types):
    events = [{"event_id": f"E{i}", "event_type": t, "Trigger": {"text": [["x"]], "start": [[0]]}}
              for i, t in enumerate(types)]
    return json.dumps({"id": ident, "context": text, "is_mult_event": len(types) > 1,
                       "annotations": [{"events": events}]})


@pytest.fixture
def phee_file(tmp_path):
    path = tmp_path / "phee.json"
    path.write_text("\n".join([
        _phee_line("111_1", "Rash developed after valproate.", ["Adverse_event"]),
        _phee_line("111_2", "Valproate controlled the seizures.", ["Potential_therapeutic_event"]),
        _phee_line("222_1", "Drug X helped but caused nausea.", ["Adverse_event", "Potential_therapeutic_event"]),
        _phee_line("333_1", "Drug Y treated A and B yet caused C.",
                   ["Potential_therapeutic_event", "Potential_therapeutic_event", "Adverse_event"]),
    ]) + "\n")
    return path


def test_phee_labels_and_both_rule(phee_file):
    examples = load_examples(phee_file, "phee", "text")
    assert [e.label for e in examples] == [
        "Adverse_event", "Potential_therapeutic_event",
        "Adverse_event",  # a tie goes to the adverse (safety-relevant) class
        "Potential_therapeutic_event",  # majority of events
    ]
    assert examples[0].input == "Rash developed after valproate."
    assert examples[0].id == "111_1" and examples[0].group == "111" and examples[1].group == "111"
    assert [e.label for e in load_examples(phee_file, "phee", "text", both="adverse")][2:] == ["Adverse_event"] * 2
    assert [e.id for e in load_examples(phee_file, "phee", "text", both="skip")] == ["111_1", "111_2"]
    assert labels_for("phee", examples) == PHEE_LABELS


def test_phee_sentences_without_events(tmp_path):
    path = tmp_path / "phee.json"
    path.write_text(_phee_line("1_1", "Nothing happened.", []) + "\n" + _phee_line("1_2", "Rash.", ["Adverse_event"]))
    assert [e.label for e in load_examples(path, "phee", "text")] == ["Adverse_event"]
    with_none = load_examples(path, "phee", "text", no_event="none")
    assert [e.label for e in with_none] == ["none", "Adverse_event"]
    assert phee_labels(with_none) == PHEE_LABELS + ["none"]


def test_phee_malformed_line_stops_or_skips(phee_file, caplog):
    lines = phee_file.read_text().splitlines()
    lines.insert(1, '{"id": "9_9", "context": "' + SECRET + '", "annotations": [')  # truncated JSON
    lines.insert(3, json.dumps({"id": "9_8", "context": SECRET, "annotations": [{"events": [{"event_type": "X"}]}]}))
    phee_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"phee\.json line 2: not valid JSON") as info:
        load_examples(phee_file, "phee", "text")
    assert SECRET not in str(info.value)
    with caplog.at_level(logging.WARNING):
        examples = load_examples(phee_file, "phee", "text", on_error="skip")
    assert len(examples) == 4
    assert "skipped 2 bad record(s)" in caplog.text and "phee.json line 2, phee.json line 4" in caplog.text
    assert SECRET not in caplog.text


# ----- DDI ----------------------------------------------------------------------------------
DDI_DOC = """<?xml version="1.0" encoding="UTF-8"?>
<document id="DDI-Test.d1">
  <sentence id="DDI-Test.d1.s0" text="Aspirin increases the effect of warfarin.">
    <entity id="DDI-Test.d1.s0.e0" charOffset="0-6" type="drug" text="Aspirin"/>
    <entity id="DDI-Test.d1.s0.e1" charOffset="32-39" type="drug" text="warfarin"/>
    <pair id="DDI-Test.d1.s0.p0" e1="DDI-Test.d1.s0.e0" e2="DDI-Test.d1.s0.e1" ddi="true" type="effect"/>
  </sentence>
  <sentence id="DDI-Test.d1.s1" text="beta- and alpha-blockers with Digoxin are fine.">
    <entity id="DDI-Test.d1.s1.e0" charOffset="0-4;16-23" type="group" text="beta-blockers"/>
    <entity id="DDI-Test.d1.s1.e1" charOffset="10-23" type="group" text="alpha-blockers"/>
    <entity id="DDI-Test.d1.s1.e2" charOffset="30-36" type="brand" text="Digoxin"/>
    <pair id="DDI-Test.d1.s1.p0" e1="DDI-Test.d1.s1.e0" e2="DDI-Test.d1.s1.e1" ddi="false"/>
    <pair id="DDI-Test.d1.s1.p1" e1="DDI-Test.d1.s1.e0" e2="DDI-Test.d1.s1.e2" ddi="true" type="mechanism"/>
  </sentence>
  <sentence id="DDI-Test.d1.s2" text="No interactions."/>
</document>
"""

DDI_DOC2 = """<?xml version="1.0" encoding="UTF-8"?>
<document id="DDI-Test.d2">
  <sentence id="DDI-Test.d2.s0" text="Avoid digoxin with quinidine.">
    <entity id="DDI-Test.d2.s0.e0" charOffset="6-12" type="drug" text="digoxin"/>
    <entity id="DDI-Test.d2.s0.e1" charOffset="19-27" type="drug" text="quinidine"/>
    <pair id="DDI-Test.d2.s0.p0" e1="DDI-Test.d2.s0.e0" e2="DDI-Test.d2.s0.e1" ddi="true" type="advise"/>
  </sentence>
</document>
"""


@pytest.fixture
def ddi_dir(tmp_path):
    root = tmp_path / "ddi"
    (root / "DrugBank").mkdir(parents=True)
    (root / "MedLine").mkdir()
    (root / "DrugBank" / "a_ddi.xml").write_text(DDI_DOC)
    (root / "MedLine" / "b.xml").write_text(DDI_DOC2)
    return root


def test_ddi_pairs_offsets_and_labels(ddi_dir):
    examples = load_examples(ddi_dir, "ddi", "relation")
    assert [e.label for e in examples] == ["effect", "none", "mechanism", "advise"]
    first = examples[0].input
    # Inclusive corpus offsets: "0-6" is text[0:7].
    assert first["text"][slice(*first["head"])] == "Aspirin" and first["text"][slice(*first["tail"])] == "warfarin"
    # Discontinuous "0-4;16-23" overlaps "10-23" when widened, so both fall back to their first fragment.
    overlap = examples[1].input
    assert overlap["head"] == (0, 5) and overlap["tail"] == (10, 24)
    # Without an overlap the discontinuous entity runs from its first start to its last end.
    assert examples[2].input["head"] == (0, 24) and examples[2].input["tail"] == (30, 37)
    assert examples[0].group == "DDI-Test.d1" and examples[3].group == "DDI-Test.d2"
    assert examples[0].id == "DDI-Test.d1.s0.p0"
    assert labels_for("ddi", examples) == DDI_LABELS == ["none", "mechanism", "effect", "advise", "int"]


def test_ddi_malformed_file(ddi_dir, caplog):
    (ddi_dir / "MedLine" / "broken.xml").write_text('<document id="x">\n<sentence text="' + SECRET + '">\n</document>')
    with pytest.raises(DataError, match=r"broken\.xml line 3: malformed XML"):
        load_examples(ddi_dir, "ddi", "relation")
    with caplog.at_level(logging.WARNING):
        assert len(load_examples(ddi_dir, "ddi", "relation", on_error="skip")) == 4
    assert "skipped 1 bad record(s)" in caplog.text and SECRET not in caplog.text


def test_ddi_bad_offsets_name_the_sentence(tmp_path):
    (tmp_path / "bad.xml").write_text(DDI_DOC.replace('charOffset="32-39"', 'charOffset="32-99"'))
    with pytest.raises(DataError, match=r"bad\.xml sentence DDI-Test\.d1\.s0: .*past the sentence end"):
        load_examples(tmp_path / "bad.xml", "ddi", "relation")


def test_ddi_lexicon_and_negative_subsampling(ddi_dir):
    lexicon = ddi_drug_lexicon(ddi_dir)
    assert lexicon["aspirin"] == "drug" and lexicon["beta-blockers"] == "group"
    # "digoxin" is a brand once and a drug once: ties go to "drug".
    assert lexicon["digoxin"] == "drug"
    examples = [Example("x", "none", str(i)) for i in range(10)] + [Example("y", "effect", "p")]
    kept = subsample_negatives(examples, 3.0, seed=1)
    assert label_counts(kept) == {"effect": 1, "none": 3}
    assert kept == subsample_negatives(examples, 3.0, seed=1)  # deterministic
    assert subsample_negatives(examples, None) == examples
    assert len(load_examples(ddi_dir, "ddi", "relation", negative_ratio=0.0)) == 3


def test_split_by_group_keeps_documents_whole():
    examples = [Example(str(i), "a", group=f"doc{i // 3}") for i in range(30)]
    train, dev = split_by_group(examples, 0.2, seed=3)
    assert len(dev) == 6 and len(train) == 24
    assert not {e.group for e in train} & {e.group for e in dev}
    assert (train, dev) == split_by_group(examples, 0.2, seed=3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_by_group(examples, 1.5)


# ----- generic JSONL / CSV ------------------------------------------------------------------
def test_jsonl_text_and_malformed_line(tmp_path, caplog):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"text": "fish oil daily", "label": "supplement"}\n\n'
                    '{"text": "' + SECRET + '", "label": \n'
                    '{"text": "aspirin", "label": 3, "id": "n4"}\n'
                    '{"text": "no label here"}\n')
    with pytest.raises(DataError, match=r"notes\.jsonl line 3: not valid JSON"):
        load_examples(path, "jsonl", "text")
    with caplog.at_level(logging.WARNING):
        examples = load_examples(path, "jsonl", "text", on_error="skip")
    assert [(e.input, e.label, e.id) for e in examples] == [("fish oil daily", "supplement", None), ("aspirin", "3", "n4")]
    assert "notes.jsonl line 3, notes.jsonl line 5" in caplog.text and SECRET not in caplog.text


def test_jsonl_missing_field_names_it(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"txt": "fish oil", "label": "a"}\n')
    with pytest.raises(DataError, match=r"line 1: missing field\(s\) \['text'\]"):
        load_examples(path, "jsonl", "text")


def test_csv_text_missing_columns_and_bad_rows(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text('text,label\n"fish oil, daily",supplement\naspirin,drug,extra\nmelatonin\n"ginkgo",supplement\n')
    with pytest.raises(DataError, match=r"notes\.csv line 3: wrong number of fields \(expected 2, found 3\)"):
        load_examples(path, "csv", "text")
    examples = load_examples(path, "csv", "text", on_error="skip")
    assert [(e.input, e.label) for e in examples] == [("fish oil, daily", "supplement"), ("ginkgo", "supplement")]
    path.write_text("note,label\nx,y\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]; found \['note', 'label'\]"):
        load_examples(path, "csv", "text")


def test_relation_csv_and_jsonl(tmp_path):
    text = "aspirin increases the effect of warfarin"
    csv_path = tmp_path / "rel.csv"
    csv_path.write_text(f"text,head_start,head_end,tail_start,tail_end,label\n{text},0,7,32,40,effect\n")
    jsonl_path = tmp_path / "rel.jsonl"
    jsonl_path.write_text(json.dumps({"text": text, "head": [0, 7], "tail": [32, 40], "label": "effect"}) + "\n")
    for path, fmt in ((csv_path, "csv"), (jsonl_path, "jsonl")):
        [example] = load_examples(path, fmt, "relation")
        assert example.input == {"text": text, "head": (0, 7), "tail": (32, 40)} and example.label == "effect"
    jsonl_path.write_text(json.dumps({"text": text, "head": [0, 7], "tail": [32, 99], "label": "effect"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: tail span \(32, 99\) is outside the text"):
        load_examples(jsonl_path, "jsonl", "relation")
    csv_path.write_text("text,head_start,head_end,label\nx,0,1,a\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['tail_start', 'tail_end'\]"):
        load_examples(csv_path, "csv", "relation")


def test_image_list(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / "a.png")
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nimg/a.png,normal\nimg/missing.png,pneumonia\n")
    with pytest.raises(DataError, match=r"line 3: image file does not exist"):
        load_examples(listing, "images", "image")
    [example] = load_examples(listing, "images", "image", on_error="skip")
    assert example.input == str(tmp_path / "img" / "a.png") and example.label == "normal"


def test_empty_and_wrong_inputs(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl: empty file \(no records\)"):  # a bad record: stop
        load_examples(path, "jsonl", "text")
    with pytest.raises(DataError, match=r"holds no examples \(1 bad record\(s\) were skipped\)"):
        load_examples(path, "jsonl", "text", on_error="skip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl", "jsonl", "text")
    with pytest.raises(ValueError, match="gives relation data, not 'text'"):
        load_examples(path, "ddi", "text")
    with pytest.raises(ValueError, match="unsupported training data format 'xml'; supported: jsonl, csv, tsv, parquet, phee"):
        load_examples(path, "xml", "text")
    with pytest.raises(TypeError, match="takes no option"):
        load_examples(path, "jsonl", "text", both="skip")


# ----- MedMNIST npz -------------------------------------------------------------------------
def test_npz_splits_and_label_names(tmp_path):
    path = tmp_path / "mini.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [1], [0], [1]]),
             val_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8), val_labels=np.array([[1], [0]]),
             test_images=np.zeros((0, 28, 28), np.uint8), test_labels=np.zeros((0, 1), np.int64))
    train = load_examples(path, "npz", "image")
    assert [e.label for e in train] == ["0", "1", "1", "0", "1"]
    assert train[0].input.dtype == np.uint8 and train[0].input.shape == (28, 28)
    val = load_examples(path, "npz", "image", split="val", label_names=["normal", "pneumonia"])
    assert [e.label for e in val] == ["pneumonia", "normal"]
    assert labels_for("npz", train) == ["0", "1"]
    assert labels_for("npz", val, ["normal", "pneumonia"]) == ["normal", "pneumonia"]
    with pytest.raises(DataError, match="holds no examples"):
        load_examples(path, "npz", "image", split="test")
    with pytest.raises(DataError, match=r"split 'dev' not in npz; available splits: \['test', 'train', 'val'\]"):
        load_examples(path, "npz", "image", split="dev")
    with pytest.raises(DataError, match="class id 1 but only 1 label names"):
        load_examples(path, "npz", "image", label_names=["normal"])


# ----- labels and metrics -------------------------------------------------------------------
def test_sorted_labels_is_natural():
    assert sorted_labels(["10", "2", "b", "a", "2"]) == ["2", "10", "a", "b"]


def test_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2, 2, 0]
    y_pred = [0, 1, 1, 1, 0, 2, 0]
    assert accuracy(y_true, y_pred) == pytest.approx(5 / 7)
    # class 0: tp 2, fp 1, fn 1 -> 2/3; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 1, fp 0, fn 1 -> 2/3
    assert per_class_f1(y_true, y_pred) == pytest.approx([2 / 3, 0.8, 2 / 3])
    assert macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3)
    # positive classes 1, 2: tp 3; fp: pred 1 at index 1 -> 1; fn: true 2 predicted 0 -> 1
    assert micro_f1_positive(y_true, y_pred, negative=0) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert micro_f1_positive([0, 0], [0, 0]) == 0.0


def test_ddi_negative_filter_rules(tmp_path, caplog):
    from epee_annotate.data.ddi import filter_negatives, filter_rule

    text = "Aspirin (ASA), warfarin, heparin and aspirin; digoxin increases the effect of quinidine."
    at = {w: (text.index(w), text.index(w) + len(w)) for w in ("Aspirin", "ASA", "warfarin", "heparin", "digoxin",
                                                               "quinidine")}
    at["aspirin"] = (text.index("aspirin"), text.index("aspirin") + 7)
    others = list(at.values())
    assert filter_rule(text, at["Aspirin"], at["aspirin"], others) == "same_drug"
    assert filter_rule(text, at["Aspirin"], at["ASA"], others) == "abbreviation"
    # One list: commas and other entities between them; "X and Y" alone is not a list.
    assert filter_rule(text, at["warfarin"], at["aspirin"], others) == "coordination"
    assert filter_rule(text, at["ASA"], at["warfarin"], others) == "coordination"
    assert filter_rule("warfarin and heparin interact", (0, 8), (13, 20)) is None
    assert filter_rule(text, at["digoxin"], at["quinidine"], others) is None

    doc = DDI_DOC2.replace("Avoid digoxin with quinidine.", "Avoid digoxin, quinidine.").replace(
        'charOffset="19-27"', 'charOffset="15-23"')
    (tmp_path / "a.xml").write_text(doc)
    (tmp_path / "b.xml").write_text(doc.replace('ddi="true" type="advise"', 'ddi="false"').replace("d2", "d3"))
    examples = load_examples(tmp_path, "ddi", "relation")
    assert [(e.label, e.meta) for e in examples] == [("advise", {"filter_rule": "coordination"}),
                                                      ("none", {"filter_rule": "coordination"})]
    with caplog.at_level(logging.INFO, logger="epee_annotate.data.ddi"):
        kept = filter_negatives(examples)
    assert [e.label for e in kept] == ["advise"]  # positives are never dropped, only counted
    assert "dropped {'coordination': 1} negatives" in caplog.text and "(kept): {'coordination': 1}" in caplog.text


def test_ddi_sentence_task_groups_by_document_like_the_loader(ddi_dir, tmp_path):
    """benchmarks.ddi_sentences (the benchmark's 3-class task): one row per sentence with a pair."""
    from benchmarks.ddi_sentences import build

    counts, dropped = build(ddi_dir, tmp_path / "ddi3", dev_fraction=0.5, seed=0)
    rows = [json.loads(line) for part in ("train", "dev") for line in (tmp_path / "ddi3" / f"{part}.jsonl").open()]
    assert {r["id"]: r["label"] for r in rows} == {"DDI-Test.d1.s0": "interaction", "DDI-Test.d1.s1": "mechanism",
                                                   "DDI-Test.d2.s0": "interaction"}
    groups = {e.group for e in load_examples(ddi_dir, "ddi", "relation")}
    assert {r["group"] for r in rows} == groups and sum(sum(c.values()) for c in counts.values()) == 3
    assert dropped == 0


def test_ddi_sentence_task_drops_dev_sentences_that_train_also_has(ddi_dir, tmp_path):
    """A sentence repeated in another document must not reach dev when train has it (calibrate refuses the overlap)."""
    from benchmarks.ddi_sentences import build

    (ddi_dir / "DrugBank" / "c_ddi.xml").write_text(DDI_DOC.replace("DDI-Test.d1", "DDI-Test.d3"))
    seen = set()
    for seed in range(12):
        out = tmp_path / f"s{seed}"
        counts, dropped = build(ddi_dir, out, dev_fraction=0.34, seed=seed)
        parts = {part: [json.loads(line) for line in (out / f"{part}.jsonl").open()] for part in ("train", "dev")}
        assert not {r["text"] for r in parts["dev"]} & {r["text"] for r in parts["train"]}
        assert len(parts["train"]) + len(parts["dev"]) + dropped == 5
        assert sum(counts["dev"].values()) == len(parts["dev"])
        seen.add(dropped)
    assert seen == {0, 2}  # d2 in dev drops nothing; d1 or d3 in dev drops its two sentences
