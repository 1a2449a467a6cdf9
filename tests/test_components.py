"""EPEE spaCy components: factories, results, batching, serialization, records."""

import json
import shutil
import subprocess
import sys
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from epee_annotate.components import (
    ANNOTATION_KEYS, DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_STATUS_LABELS, build_drug_lexicon, doc_annotations,
    mark_mention, read_rules, supplement_rules, write_rules,
)
from epee_annotate.policies import EPEE, BudgetedExit

REPO = Path(__file__).resolve().parents[1]
FACTORIES = ["epee_textcat", "epee_span_classifier", "epee_supplement_status", "epee_ddi", "epee_pv_event", "epee_sections"]
NOTES = [
    "the patient takes fish oil and vitamin e daily. she stopped taking ginkgo biloba before surgery.",
    "aspirin increases the anticoagulant effect of warfarin. melatonin was started for insomnia.",
    "rash and nausea developed after the first dose of the drug.",
    "coq10 turmeric garlic",
]
LEXICON = {"aspirin": "drug", "warfarin": "drug", "penicillin": "drug", "amoxicillin": "drug", "coumadin": "brand"}


@pytest.fixture(scope="module")
def ckpt(clinical_checkpoints, tmp_path_factory):
    """The shared tiny clinical checkpoints plus a drug lexicon."""
    lexicon = tmp_path_factory.mktemp("lexicon") / "drugs.json"
    write_rules(build_drug_lexicon(LEXICON), lexicon)
    return {**clinical_checkpoints, "lexicon": str(lexicon)}


def clinical_nlp(ckpt, **policy):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("epee_supplement_status", config={"checkpoint": ckpt["sup"], **policy})
    nlp.add_pipe("epee_ddi", config={"checkpoint": ckpt["ddi"], "lexicon": ckpt["lexicon"], **policy})
    nlp.add_pipe("epee_pv_event", config={"checkpoint": ckpt["pv"], **policy})
    return nlp


def same_annotations(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in ("probs", "confidence", "entropy")} == \
               {k: v for k, v in y.items() if k not in ("probs", "confidence", "entropy")}
        assert x["probs"] == pytest.approx(y["probs"], abs=1e-5)


# ----- factories and configs ------------------------------------------------------------------
def test_entry_points_declare_every_factory():
    names = {ep.name: ep.value for ep in entry_points(group="spacy_factories")}
    for name in FACTORIES:
        assert names[name].startswith("epee_annotate.components:make_")


def test_factories_resolve_without_importing_epee_annotate():
    code = (
        "import sys, spacy\n"
        "assert 'epee_annotate' not in sys.modules\n"
        "nlp = spacy.blank('en')\n"
        f"missing = [n for n in {FACTORIES!r} if not nlp.has_factory(n)]\n"
        "assert not missing, missing\n"
        "spacy.registry.factories.get('epee_ddi')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("cfg,override,component", [
    ("pv_event.cfg", {"paths.pv_checkpoint": "pv"}, "epee_pv_event"),
    ("ddi.cfg", {"paths.ddi_checkpoint": "ddi", "paths.ddi_lexicon": "lexicon"}, "epee_ddi"),
    ("supplement_status.cfg", {"components.epee_supplement_status.checkpoint": "sup"}, "epee_supplement_status"),
])
def test_shipped_configs_resolve(ckpt, cfg, override, component):
    config = spacy.util.load_config(REPO / "configs" / cfg, overrides={k: ckpt[v] for k, v in override.items()})
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    assert nlp.pipe_names == ["sentencizer", component, "epee_sections"]  # sections: shipped switched off
    doc = nlp("aspirin increases the effect of warfarin. she takes fish oil daily.")
    rows = doc_annotations(doc)
    assert rows and {r["task"] for r in rows} == {component}


def test_config_without_checkpoint_fails_clearly():
    config = spacy.util.load_config(REPO / "configs" / "pv_event.cfg")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        spacy.util.load_model_from_config(config, auto_fill=True)


def test_wrong_checkpoint_task_is_refused(ckpt):
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_ddi", config={"checkpoint": ckpt["pv"], "lexicon": ckpt["lexicon"]})
    with pytest.raises(ValueError, match="needs a 'relation' checkpoint"):
        nlp("aspirin and warfarin")


def test_policy_settings(ckpt):
    nlp = spacy.blank("en")
    epee = nlp.add_pipe("epee_pv_event", name="a", config={"checkpoint": ckpt["pv"],
                                                           "policy": {"entropy": 0.3, "patience": 2}})
    assert epee.policy == EPEE(entropy=0.3, patience=2)
    default = nlp.add_pipe("epee_pv_event", name="b", config={"checkpoint": ckpt["pv"]})
    assert default.policy == BudgetedExit(0)  # tiny checkpoints have no calibrated default: full depth
    first = nlp.add_pipe("epee_pv_event", name="c", config={"checkpoint": ckpt["pv"], "policy": {"budget": 1}})
    first(nlp.make_doc("rash after the first dose"))
    with pytest.raises(ValueError, match="unknown policy settings"):
        nlp.add_pipe("epee_pv_event", name="d", config={"checkpoint": ckpt["pv"], "policy": {"tau": 0.3}})
    doc = nlp("rash after the first dose")
    layers = {r["task"]: r["exit_layer"] for r in doc_annotations(doc)}
    # "a" exits where the core's EPEE(0.3, 2) run on the same input exits (at most at layer 2: patience 2).
    [expected] = epee.multi_exit_model.predict([doc.text], EPEE(entropy=0.3, patience=2))
    assert expected.exit_layer <= 2
    assert layers == {"a": expected.exit_layer, "b": 4, "c": 1}


# ----- results --------------------------------------------------------------------------------
def test_sentence_results_match_direct_predictions(ckpt):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    component = nlp.add_pipe("epee_pv_event", config={"checkpoint": ckpt["pv"]})
    doc = nlp(NOTES[0])
    sents = list(doc.sents)
    expected = component.multi_exit_model.predict([s.text for s in sents], component.policy)
    assert len(sents) == 2
    for sent, pred in zip(sents, expected):
        assert sent._.epee_label == pred.label in PV_EVENT_LABELS
        assert sent._.epee_exit_layer == pred.exit_layer and sent._.epee_num_layers == 4
        assert sent._.epee_probs == pytest.approx(pred.probs, abs=1e-5)
        assert type(sent._.epee_confidence) is float and type(sent._.epee_probs) is list
        assert sent._.epee_entropy == pytest.approx(pred.entropy, abs=1e-5)
    assert doc.cats == {}  # sentence scope leaves doc.cats alone
    assert [r["kind"] for r in doc_annotations(doc)] == ["sentence", "sentence"]


def test_doc_scope_sets_cats(ckpt):
    nlp = spacy.blank("en")
    component = nlp.add_pipe("epee_textcat", config={"checkpoint": ckpt["pv"], "scope": "doc"})
    doc = nlp(NOTES[1])
    pred = component.multi_exit_model.predict([NOTES[1]], component.policy)[0]
    assert set(doc.cats) == set(PV_EVENT_LABELS)
    assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
    assert doc._.epee_label == pred.label and doc._.epee_exit_layer == pred.exit_layer
    [row] = doc_annotations(doc)
    assert (row["kind"], row["start"], row["end"]) == ("doc", 0, len(NOTES[1]))
    with pytest.raises(ValueError, match="scope"):
        nlp.add_pipe("epee_textcat", name="x", config={"checkpoint": ckpt["pv"], "scope": "paragraph"})


def test_mentions_are_marked_in_their_sentence(ckpt):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    component = nlp.add_pipe("epee_supplement_status", config={"checkpoint": ckpt["sup"]})
    doc = nlp(NOTES[0])
    ents = list(doc.ents)
    assert [(e.text, e.label_, e.id_) for e in ents] == [
        ("fish oil", "SUPPLEMENT", "Fish Oil"), ("vitamin e", "SUPPLEMENT", "Vitamin E"),
        ("ginkgo biloba", "SUPPLEMENT", "Ginkgo")]
    inputs = []
    for ent in ents:
        sent = ent.sent
        inputs.append(mark_mention(sent.text, ent.start_char - sent.start_char, ent.end_char - sent.start_char))
    assert inputs[0] == "the patient takes <e1>fish oil</e1> and vitamin e daily."
    expected = component.multi_exit_model.predict(inputs, component.policy)
    for ent, pred in zip(ents, expected):
        assert ent._.epee_label == pred.label in SUPPLEMENT_STATUS_LABELS
        assert ent._.epee_probs == pytest.approx(pred.probs, abs=1e-5)
        assert ent._.epee_truncated is False
    rows = doc_annotations(doc)
    assert [(r["kind"], r["start"], r["end"]) for r in rows] == [("mention", e.start_char, e.end_char) for e in ents]
    assert "target_rule" not in {k[1] for k in doc.user_data}  # DocBin-safe


def test_span_classifier_reads_span_groups_and_filters_labels(ckpt):
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_span_classifier", config={"checkpoint": ckpt["sup"], "spans_key": "meds",
                                                 "span_labels": ["MED"]})
    doc = nlp.make_doc("aspirin and warfarin daily")
    doc.spans["meds"] = [doc.char_span(0, 7, label="MED"), doc.char_span(12, 20, label="OTHER")]
    doc = nlp(doc)
    assert [(r["start"], r["end"]) for r in doc_annotations(doc)] == [(0, 7)]
    assert doc.spans["meds"][0]._.epee_label in SUPPLEMENT_STATUS_LABELS
    assert doc.spans["meds"][1]._.epee_label is None


def test_relations_pair_mentions_within_sentences(ckpt):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    component = nlp.add_pipe("epee_ddi", config={"checkpoint": ckpt["ddi"], "lexicon": ckpt["lexicon"]})
    text = "aspirin increases the effect of warfarin and coumadin. penicillin alone. amoxicillin. aspirin, Aspirin."
    doc = nlp(text)
    assert [e.label_ for e in doc.ents] == ["DRUG", "DRUG", "BRAND", "DRUG", "DRUG", "DRUG", "DRUG"]
    # three mentions in the first sentence -> three pairs; none across sentences; a drug named twice
    # is answered "none" by the same_drug rule (epee_ddi's negative_rules), without the model
    *relations, same = doc._.epee_relations
    assert (same["head"].text, same["tail"].text, same["label"], same["rule"]) == ("aspirin", "Aspirin", "none",
                                                                                   "same_drug")
    assert same["exit_layer"] is None and same["probs"] == [] and same["error"] is None
    assert [(r["head"].text, r["tail"].text) for r in relations] == [
        ("aspirin", "warfarin"), ("aspirin", "coumadin"), ("warfarin", "coumadin")]
    assert all(r["rule"] is None for r in relations)
    sent = text[: text.index(".") + 1]
    expected = component.multi_exit_model.predict(
        [{"text": sent, "head": (r["head_start"], r["head_end"]), "tail": (r["tail_start"], r["tail_end"])}
         for r in relations], component.policy)
    for record, pred in zip(relations, expected):
        assert record["label"] == pred.label in DDI_LABELS
        assert record["probs"] == pytest.approx(pred.probs, abs=1e-5)
        assert (record["start"], record["end"]) == (record["head_start"], record["tail_end"])
    assert doc._.epee_truncated_pairs is False


def test_ddi_negative_rules_answer_none_before_the_model_as_training_marks_them(ckpt, tmp_path):
    """The component and the DDI loader (training's --filter-negatives) mark sure negatives with one function."""
    from epee_annotate.data import load_examples
    from epee_annotate.data.ddi import filter_rule

    text = "Aspirin (ASA), warfarin, heparin and aspirin; digoxin increases the effect of quinidine."
    words = ["Aspirin", "ASA", "warfarin", "heparin", "aspirin", "digoxin", "quinidine"]
    at = [(text.index(w), text.index(w) + len(w)) for w in words]
    at[4] = (text.index("aspirin"), text.index("aspirin") + 7)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    component = nlp.add_pipe("epee_ddi", config={"checkpoint": ckpt["ddi"], "spans_key": "drugs"})
    doc = nlp.make_doc(text)
    doc.spans["drugs"] = [doc.char_span(s, e, label="DRUG") for s, e in at]
    records = nlp(doc)._.epee_annotations
    assert len(records) == 21  # every pair of the 7 mentions: ruled pairs are records too
    by_pair = {((r["head_start"], r["head_end"]), (r["tail_start"], r["tail_end"])): r for r in records}
    ruled = {pair: filter_rule(text, *pair, at) for pair in by_pair}
    assert Counter(ruled.values()) == {"coordination": 12, None: 7, "abbreviation": 1, "same_drug": 1}
    for pair, record in by_pair.items():
        assert record["rule"] == ruled[pair]
        if ruled[pair]:
            assert (record["label"], record["exit_layer"], record["confidence"]) == ("none", None, None)
        else:
            assert record["exit_layer"] >= 1 and len(record["probs"]) == len(DDI_LABELS)
    # The loader marks the same pairs of the same sentence (its ``filter_rule`` meta).
    entities = "".join(f'<entity id="d.s0.e{i}" charOffset="{s}-{e - 1}" type="drug" text="{text[s:e]}"/>'
                       for i, (s, e) in enumerate(at))
    pairs = "".join(f'<pair id="d.s0.p{n}" e1="d.s0.e{i}" e2="d.s0.e{j}" ddi="false"/>'
                    for n, (i, j) in enumerate((i, j) for i in range(7) for j in range(i + 1, 7)))
    (tmp_path / "d.xml").write_text(f'<document id="d"><sentence id="d.s0" text="{text}">{entities}{pairs}'
                                    "</sentence></document>")
    loaded = {(e.input["head"], e.input["tail"]): (e.meta or {}).get("filter_rule")
              for e in load_examples(tmp_path, "ddi", "relation")}
    assert loaded == ruled
    # Off (the generic relation classifier's default): the model answers every pair but a same-text one.
    component.negative_rules = False
    records = nlp(doc)._.epee_annotations
    assert len(records) == 20 and all(r["rule"] is None and r["exit_layer"] >= 1 for r in records)
    component.negative_rules, component.none_label = True, "no_interaction"
    with pytest.raises(ValueError, match="negative_rules answer none_label 'no_interaction', which is not a label"):
        nlp(doc)


def test_min_confidence_gives_none_label(ckpt):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("epee_pv_event", config={"checkpoint": ckpt["pv"], "min_confidence": 1.0, "none_label": "none"})
    doc = nlp(NOTES[0])
    assert {s._.epee_label for s in doc.sents} == {"none"}
    assert all(len(r["probs"]) == 2 for r in doc_annotations(doc))


def test_pipe_equals_one_doc_at_a_time(ckpt):
    nlp = clinical_nlp(ckpt, policy={"entropy": 0.5, "patience": 2})
    piped = [doc_annotations(d) for d in nlp.pipe(NOTES * 3, batch_size=5)]
    single = [doc_annotations(nlp(text)) for text in NOTES * 3]
    assert len(piped) == 12 and any(piped)
    for a, b in zip(piped, single):
        same_annotations(a, b)


def test_pipe_makes_one_model_call_per_batch(ckpt, monkeypatch):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    component = nlp.add_pipe("epee_pv_event", config={"checkpoint": ckpt["pv"]})
    calls = []
    original = component.multi_exit_model.predict
    monkeypatch.setattr(component.multi_exit_model, "predict", lambda inputs, *a, **k: calls.append(len(inputs)) or
                        original(inputs, *a, **k))
    docs = list(nlp.pipe(NOTES * 2, batch_size=8))
    assert len(docs) == 8 and calls == [12]  # 8 docs, 12 sentences, one call


# ----- records --------------------------------------------------------------------------------
def test_doc_annotations_keys_and_text(ckpt):
    nlp = clinical_nlp(ckpt)
    doc = nlp(NOTES[0] + " aspirin and warfarin.")
    rows = doc_annotations(doc)
    assert {r["kind"] for r in rows} == {"mention", "pair", "sentence"}
    for row in rows:
        assert tuple(row) == ANNOTATION_KEYS
        if row["kind"] == "pair":
            assert None not in (row["head_start"], row["head_end"], row["tail_start"], row["tail_end"])
        else:
            assert row["head_start"] is row["tail_end"] is None
        assert (row["context"] is None) == (row["kind"] != "mention")
    mention = next(r for r in rows if r["kind"] == "mention")
    assert mention["context"] == {"negated": False, "historical": False, "hypothetical": False, "family": False}
    with_text = doc_annotations(doc, include_text=True)
    assert with_text[0]["text"] == doc.text[with_text[0]["start"] : with_text[0]["end"]]
    assert doc_annotations(spacy.blank("en")("nothing to see")) == []
    json.dumps(rows)  # plain values only


def test_rerunning_a_component_replaces_its_records(ckpt):
    nlp = clinical_nlp(ckpt)
    doc = nlp(NOTES[0])
    before = doc_annotations(doc)
    doc = nlp.get_pipe("epee_pv_event")(doc)
    same_annotations(doc_annotations(doc), before)


# ----- serialization --------------------------------------------------------------------------
def test_to_disk_and_spacy_load_use_the_saved_checkpoints(ckpt, tmp_path):
    # Copies, so the originals can be deleted before loading (offline / other machine).
    local = {k: shutil.copytree(ckpt[k], tmp_path / k) if k != "lexicon" else shutil.copy(ckpt[k], tmp_path / "d.json")
             for k in ckpt}
    nlp = clinical_nlp({k: str(v) for k, v in local.items()}, policy={"entropy": 0.4, "patience": 2})
    text = NOTES[0] + " aspirin and warfarin and coumadin."
    expected = doc_annotations(nlp(text))
    nlp.to_disk(tmp_path / "pipeline")
    for key in ("sup", "ddi", "pv"):
        shutil.rmtree(tmp_path / key)
    (tmp_path / "d.json").unlink()
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("epee_ddi").policy == EPEE(entropy=0.4, patience=2)
    assert loaded.get_pipe("epee_ddi").labels == DDI_LABELS
    same_annotations(doc_annotations(loaded(text)), expected)
    assert (tmp_path / "pipeline" / "epee_ddi" / "checkpoint" / "model.safetensors").is_file()


def test_docbin_round_trip_keeps_results(ckpt):
    nlp = clinical_nlp(ckpt)
    docs = list(nlp.pipe([NOTES[0] + " aspirin and warfarin.", NOTES[2], ""]))
    data = DocBin(docs=docs, store_user_data=True).to_bytes()
    restored = list(DocBin().from_bytes(data).get_docs(nlp.vocab))
    for before, after in zip(docs, restored):
        assert doc_annotations(after) == doc_annotations(before)
    first = restored[0]
    assert [(e.text, e.id_, e._.epee_label) for e in first.ents] == \
           [(e.text, e.id_, e._.epee_label) for e in docs[0].ents]
    # spaCy's msgpack gives lists back as tuples
    assert [list(s._.epee_probs) for s in first.sents] == [s._.epee_probs for s in docs[0].sents]
    assert [r["head"].text for r in first._.epee_relations] == [r["head"].text for r in docs[0]._.epee_relations]
    assert first._.epee_relations[-1]["head"].text == "aspirin"


# ----- vocabularies ---------------------------------------------------------------------------
def test_supplement_rules_match_common_variants():
    nlp = spacy.blank("en")
    from epee_annotate.components.mentions import RuleMatcher

    matcher = RuleMatcher(nlp, "t", supplement_rules())
    cases = {
        "CoQ10": "Coenzyme Q10", "coenzyme q10": "Coenzyme Q10", "omega-3": "Fish Oil", "Fish Oil": "Fish Oil",
        "St John's wort": "St. John's Wort", "St. John's Wort": "St. John's Wort", "Hypericum": "St. John's Wort",
        "flaxseed": "Flax Seed", "folate": "Folic Acid", "tocopherol": "Vitamin E", "Vitamin E": "Vitamin E",
        "gingko": "Ginkgo", "ginkgo biloba": "Ginkgo", "Kava Kava": "Kava Kava", "saw palmetto": "Saw Palmetto",
        "black cohosh": "Black Cohosh", "l-glutamine": "Glutamine", "milk thistle": "Milk Thistle",
    }
    for text, canonical in cases.items():
        doc = nlp.make_doc(f"pt reports {text} use.")
        [span] = matcher(doc)
        assert (span.text, span.id_, span.label_) == (text, canonical, "SUPPLEMENT"), text
    assert len(supplement_rules()) == 25
    assert matcher(nlp.make_doc("vitamins every day; evening primrose")) == []


def test_drug_lexicon_from_ddi_xml_and_rules_file(tmp_path):
    xml = ('<document id="d1"><sentence id="d1.s0" text="Aspirin and warfarin.">'
           '<entity id="d1.s0.e0" charOffset="0-6" type="drug" text="Aspirin"/>'
           '<entity id="d1.s0.e1" charOffset="12-19" type="brand" text="warfarin"/></sentence></document>')
    (tmp_path / "a.xml").write_text(xml)
    rules = build_drug_lexicon(tmp_path)
    assert sorted((r.literal, r.category) for r in rules) == [("aspirin", "DRUG"), ("warfarin", "BRAND")]
    write_rules(rules, tmp_path / "rules.json")
    again = read_rules(tmp_path / "rules.json")
    assert [(r.literal, r.category) for r in again] == [(r.literal, r.category) for r in rules]
    assert [r.category for r in build_drug_lexicon(["Metformin"], label="DRUG")] == ["DRUG"]
