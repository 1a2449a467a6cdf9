"""Bad and extreme notes: nothing may crash nlp.pipe or drop a doc."""

import pytest
import spacy

from epee_annotate.components import (
    DDI_LABELS, MENTION_MARKERS, SUPPLEMENT_STATUS_LABELS, build_drug_lexicon, doc_annotations, write_rules,
)
from epee_annotate.inputs import clip_context, mention_input, mention_room

FILLER = "the patient was seen today and reports no new complaints "


@pytest.fixture(scope="module")
def nlp(clinical_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_rules")
    write_rules(build_drug_lexicon(["aspirin", "warfarin"]), root / "drugs.json")
    pipeline = spacy.blank("en")
    pipeline.add_pipe("sentencizer")
    pipeline.add_pipe("epee_supplement_status", config={"checkpoint": clinical_checkpoints["sup"]})
    pipeline.add_pipe("epee_ddi", config={"checkpoint": clinical_checkpoints["ddi"], "lexicon": str(root / "drugs.json"),
                                          "max_pairs_per_doc": 100})
    pipeline.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"]})
    return pipeline


def rows_of(doc, task=None, kind=None):
    return [r for r in doc_annotations(doc) if (task is None or r["task"] == task) and (kind is None or r["kind"] == kind)]


def test_every_bad_note_comes_back_in_order(nlp):
    texts = [
        "",
        "   \n\t  \n",
        "... --- !!! ??? ;;",
        b"she takes fish oil \xff\xfe\x80 daily with aspirin and warfarin.".decode("utf-8", errors="replace"),
        FILLER * 1800 + "she takes fish oil with aspirin and warfarin",  # 100k+ characters, one sentence
        "aspirin warfarin " * 200 + ".",  # 400 drug mentions in one sentence
        "melatonin was started for insomnia.",
    ]
    assert len(texts[4]) > 100_000
    docs = list(nlp.pipe(texts, batch_size=3))
    assert [d.text for d in docs] == texts
    empty, blank, punct, replaced, long_note, many, ok = docs
    for doc in (empty, blank, punct):
        assert doc_annotations(doc) == [] and doc.cats == {}
    assert "\ufffd" in replaced.text
    assert {r["kind"] for r in doc_annotations(replaced)} == {"mention", "pair", "sentence"}
    assert all(r["label"] is not None for d in docs for r in doc_annotations(d))
    assert rows_of(ok, "epee_supplement_status")[0]["label"] in SUPPLEMENT_STATUS_LABELS

    # The long note: everything found at its end is still classified, flagged truncated.
    [mention] = rows_of(long_note, "epee_supplement_status")
    assert long_note.text[mention["start"]:mention["end"]] == "fish oil" and mention["truncated"] is True
    pairs = rows_of(long_note, "epee_ddi")  # fish oil, aspirin, warfarin (every entity label is paired)
    assert len(pairs) == 3 and all(p["truncated"] and p["label"] in DDI_LABELS for p in pairs)
    [sentence] = rows_of(long_note, "epee_pv_event")
    assert sentence["truncated"] is True

    # Hundreds of drug mentions: capped at max_pairs_per_doc and flagged.
    assert len(rows_of(many, "epee_ddi")) == 100 and many._.epee_truncated_pairs is True
    assert replaced._.epee_truncated_pairs is False


def test_long_sentence_keeps_the_marked_mention(nlp):
    component = nlp.get_pipe("epee_supplement_status")
    text = FILLER * 40 + "she stopped fish oil last week. " + "ginkgo biloba at night " + FILLER * 3
    doc = nlp.make_doc(text)
    for name, proc in nlp.pipeline[:1]:
        doc = proc(doc)
    items = component.collect(doc)
    assert [doc.text[i.start:i.end] for i in items] == ["fish oil", "ginkgo biloba"]
    assert items[0].clipped is True  # a 400-token sentence does not fit 64 tokens
    encoded = component.multi_exit_model.encode([i.input for i in items])
    for item, row in zip(items, encoded):
        assert MENTION_MARKERS[0] in item.input and MENTION_MARKERS[1] in item.input
        assert row.truncated is False  # the window was chosen before encoding: the core cuts nothing


def test_mention_window_unit(nlp):
    tokenizer = nlp.get_pipe("epee_supplement_status").multi_exit_model.preprocessor
    text = "word " * 500 + "fish oil" + " word" * 500
    start = text.index("fish oil")
    marked, cut = mention_input(text, start, start + 8, tokenizer, room=20)
    assert cut and "<e1>fish oil</e1>" in marked
    assert len(tokenizer(marked.replace("<e1>", "").replace("</e1>", ""), add_special_tokens=False)["input_ids"]) <= 20
    # A mention longer than the room keeps its beginning and stays marked.
    long_mention = "fish " * 50
    marked, cut = mention_input("x " + long_mention + "y", 2, 2 + len(long_mention), tokenizer, room=10)
    assert cut and marked.startswith("<e1>fish") and marked.endswith("</e1>")
    # Short inputs are left alone.
    assert mention_input("takes fish oil", 6, 14, tokenizer, room=20) == ("takes <e1>fish oil</e1>", False)
    assert mention_room(tokenizer, 62) < 62


def test_clip_context_keeps_spans():
    text = "a" * 1000 + "HEAD" + "b" * 5000 + "TAIL" + "c" * 1000
    spans = [(1000, 1004), (6004, 6008)]
    clipped, moved, cut = clip_context(text, spans, 200)
    assert cut and len(clipped) < 300
    assert [clipped[s:e] for s, e in moved] == ["HEAD", "TAIL"]
    assert clip_context("short", [(0, 5)], 200) == ("short", [(0, 5)], False)
    assert clip_context("x" * 50, [], 10) == ("x" * 10, [], True)
