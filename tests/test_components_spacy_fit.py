"""spaCy fit of the EPEE components: flat policy settings in configs, score/evaluate,
assigns, to_bytes, ConText ordering, multiprocessing, and linear per-note work."""

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import spacy
from spacy.tokens import Doc, Span
from spacy.training import Example

from epee_annotate.components import SUPPLEMENT_STATUS_LABELS, doc_annotations
from epee_annotate.policies import EPEE, BudgetedExit, PatienceExit, setting_keys

REPO = Path(__file__).resolve().parents[1]


def test_component_config_conflict_is_an_error(clinical_checkpoints):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=r"conflicting exit-policy settings: entropy .* and budget"):
        nlp.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"], "budget": 2, "entropy": 0.3})


def test_flat_settings_override_at_spacy_load(clinical_checkpoints, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"], "patience": 2})
    assert nlp.get_pipe("epee_pv_event").policy == PatienceExit(2)
    nlp.to_disk(tmp_path / "pipe")
    loaded = spacy.load(tmp_path / "pipe", config={"components": {"epee_pv_event": {"entropy": 0.3}}})
    assert loaded.get_pipe("epee_pv_event").policy == EPEE(entropy=0.3, patience=2)
    budget = spacy.load(tmp_path / "pipe", config={"components": {"epee_pv_event": {"patience": None, "budget": 1}}})
    assert budget.get_pipe("epee_pv_event").policy == BudgetedExit(1)
    assert doc_annotations(budget("rash after the first dose."))[0]["exit_layer"] == 1


@pytest.mark.parametrize("name, key", [("pv_event", "pv"), ("ddi", "ddi"), ("supplement_status", "sup")])
def test_shipped_configs_resolve_with_every_policy_setting_null(name, key, clinical_checkpoints):
    # The configs need not list every policy setting: the factories' defaults (from the registry) fill them.
    path_key = {"pv": "pv_checkpoint", "ddi": "ddi_checkpoint", "sup": "supplement_checkpoint"}[key]
    config = spacy.util.load_config(REPO / "configs" / f"{name}.cfg",
                                    overrides={f"paths.{path_key}": clinical_checkpoints[key]})
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    section = nlp.config["components"][f"epee_{name}"]
    assert {k: section[k] for k in (*setting_keys(), "policy")} == dict.fromkeys((*setting_keys(), "policy"))


# ----- spaCy integration ------------------------------------------------------------------------------
def test_every_factory_declares_what_it_assigns():
    nlp = spacy.blank("en")
    for factory in ("epee_textcat", "epee_span_classifier", "epee_relation_classifier", "epee_supplement_status",
                    "epee_ddi", "epee_pv_event"):
        meta = nlp.get_factory_meta(factory)
        assert "doc._.epee_annotations" in meta.assigns, factory
    assert "doc.cats" in nlp.get_factory_meta("epee_textcat").assigns
    assert nlp.get_factory_meta("epee_span_classifier").requires == ["doc.ents"]
    assert "doc._.epee_relations" in nlp.get_factory_meta("epee_ddi").assigns


def test_to_bytes_refuses_clearly(clinical_checkpoints):
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"]})
    with pytest.raises(NotImplementedError, match="cannot be serialised to bytes.*nlp.to_disk"):
        nlp.to_bytes()
    assert nlp.to_bytes(exclude=["epee_pv_event"])  # the rest of the pipeline still serialises


# ----- spaCy Pipe: error handlers, score weights, exclude ---------------------------------------------
def test_components_are_spacy_pipes_and_the_error_handler_gets_the_failing_doc(clinical_checkpoints, monkeypatch):
    from spacy.pipeline import Pipe

    nlp = spacy.blank("en")
    component = nlp.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"]})
    assert isinstance(component, Pipe)
    collect = type(component).collect

    def collect_or_fail(self, doc):
        if "poison" in doc.text:
            raise RuntimeError("cannot classify this note")
        return collect(self, doc)

    monkeypatch.setattr(type(component), "collect", collect_or_fail)
    texts = ["rash after the dose.", "a poison note.", "nausea on day two.", "poison again."]
    with pytest.raises(RuntimeError, match="cannot classify"):  # spaCy's default handler re-raises
        list(nlp.pipe(texts, batch_size=4))
    failed = []
    nlp.set_error_handler(lambda name, proc, docs, error: failed.append((name, [d.text for d in docs], str(error))))
    docs = list(nlp.pipe(texts, batch_size=4))  # one batch: the failure is isolated doc by doc
    assert [d.text for d in docs] == ["rash after the dose.", "nausea on day two."]
    assert all(doc_annotations(d) for d in docs)
    assert failed == [("epee_pv_event", ["a poison note."], "cannot classify this note"),
                      ("epee_pv_event", ["poison again."], "cannot classify this note")]
    recorded = []
    component.set_error_handler(lambda name, proc, docs, error: recorded.extend(docs))
    assert len(list(nlp.pipe(texts, batch_size=2))) == 2 and [d.text for d in recorded] == texts[1::2]


def test_factories_declare_score_weights_that_evaluate_reports(clinical_checkpoints):
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"], "scope": "doc"})
    weights = nlp.config["training"]["score_weights"]
    assert weights["epee_pv_event_f"] == 1.0 and weights["epee_pv_event_acc"] == 0.0
    text = "rash after the first dose."
    predicted = nlp(text)
    reference = nlp.make_doc(text)
    reference._.epee_annotations = predicted._.epee_annotations  # gold = prediction: perfect scores
    scores = nlp.evaluate([Example(nlp.make_doc(text), reference)])
    assert {key for key in weights if scores.get(key) is not None} == set(weights)
    nlp.add_pipe("epee_supplement_status", config={"checkpoint": clinical_checkpoints["sup"]})
    combined = nlp.config["training"]["score_weights"]
    assert combined["epee_pv_event_f"] == combined["epee_supplement_status_f"] == 0.5


def test_serialisation_honours_exclude(clinical_checkpoints, tmp_path):
    from epee_annotate.components import build_drug_lexicon, write_rules

    write_rules(build_drug_lexicon(["aspirin", "warfarin"]), tmp_path / "drugs.json")
    nlp = spacy.blank("en")
    ddi = nlp.add_pipe("epee_ddi", config={"checkpoint": clinical_checkpoints["ddi"],
                                           "lexicon": str(tmp_path / "drugs.json")})
    ddi.to_disk(tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["checkpoint", "epee_component.json", "rules.json"]
    ddi.to_disk(tmp_path / "rules_only", exclude=["checkpoint"])
    assert sorted(p.name for p in (tmp_path / "rules_only").iterdir()) == ["rules.json"]
    ddi.to_disk(tmp_path / "weights_only", exclude=["rules"])
    assert "rules.json" not in {p.name for p in (tmp_path / "weights_only").iterdir()}

    other = spacy.blank("en").add_pipe("epee_ddi", config={"checkpoint": clinical_checkpoints["ddi"]})
    other.from_disk(tmp_path / "rules_only", exclude=["checkpoint"])  # no copy there: the configured one stays
    assert other.checkpoint == clinical_checkpoints["ddi"] and other.adds_mentions
    other.from_disk(tmp_path / "full", exclude=["rules"])
    assert other.checkpoint == str(tmp_path / "full" / "checkpoint")
    with pytest.raises(ValueError, match="no saved checkpoint"):
        other.from_disk(tmp_path / "rules_only")

    data = ddi.to_bytes(exclude=["checkpoint"])  # the rules travel, the weights stay where they are
    fresh = spacy.blank("en").add_pipe("epee_ddi", config={"checkpoint": clinical_checkpoints["ddi"]})
    assert not fresh.adds_mentions
    fresh.from_bytes(data, exclude=["checkpoint"])
    assert fresh.adds_mentions and fresh.checkpoint == clinical_checkpoints["ddi"]
    text = "aspirin with warfarin"
    assert doc_annotations(fresh(fresh.nlp.make_doc(text))) == doc_annotations(ddi(nlp.make_doc(text)))
    assert ddi.to_bytes(exclude=["checkpoint", "rules"]) != data
    with pytest.raises(NotImplementedError, match="exclude"):
        fresh.from_bytes(data)


def test_evaluate_scores_doc_cats(clinical_checkpoints):
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_textcat", config={"checkpoint": clinical_checkpoints["pv"], "scope": "doc"})
    texts = ["rash after the first dose", "the drug cleared the infection", "nausea and vomiting"]
    predicted = [max(doc.cats, key=doc.cats.get) for doc in nlp.pipe(texts)]
    labels = nlp.get_pipe("epee_textcat").labels

    def examples(gold_labels):
        out = []
        for text, gold in zip(texts, gold_labels):
            reference = nlp.make_doc(text)
            reference.cats = {label: float(label == gold) for label in labels}
            out.append(Example(nlp.make_doc(text), reference))
        return out

    right = nlp.evaluate(examples(predicted))
    assert right["cats_micro_f"] == 1.0 and "cats_score" in right
    assert right["epee_textcat_acc"] is None  # doc gold lives in cats, not in gold spans or records
    flipped = [labels[1 - labels.index(p)] for p in predicted]
    assert nlp.evaluate(examples(flipped))["cats_micro_f"] == 0.0


def test_evaluate_scores_mention_labels_from_gold_spans(clinical_checkpoints):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("epee_supplement_status", config={"checkpoint": clinical_checkpoints["sup"]})
    text = "she stopped fish oil. melatonin was started."
    doc = nlp(text)
    predicted = {(e.start_char, e.end_char): e._.epee_label for e in doc.ents}
    assert len(predicted) == 2

    def example(labels):
        reference = nlp.make_doc(text)
        reference.spans["epee_supplement_status"] = [
            reference.char_span(s, e, label=label) for (s, e), label in labels.items()]
        return Example(nlp.make_doc(text), reference)

    scores = nlp.evaluate([example(predicted)])
    assert scores["epee_supplement_status_acc"] == 1.0 and scores["epee_supplement_status_f"] == 1.0
    first = next(iter(predicted))
    wrong = {**predicted, first: next(l for l in SUPPLEMENT_STATUS_LABELS if l != predicted[first])}
    scores = nlp.evaluate([example(wrong)])
    assert scores["epee_supplement_status_acc"] == 0.5 and scores["epee_supplement_status_f"] == 0.5


def test_warns_when_a_span_component_runs_after_context(clinical_checkpoints):
    import medspacy

    for before_context, expect_warning in ((True, False), (False, True)):
        nlp = medspacy.load()
        where = {"before": "medspacy_context"} if before_context else {}
        nlp.add_pipe("epee_supplement_status", config={"checkpoint": clinical_checkpoints["sup"]}, **where)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nlp("Patient denies taking fish oil.")
            nlp("Continues CoQ10.")
        messages = [str(w.message) for w in caught if "ConText" in str(w.message)]
        assert len(messages) == int(expect_warning), messages  # once, not per doc
        if expect_warning:
            assert "flags are all False" in messages[0] and "before='medspacy_context'" in messages[0]


# ----- multiprocessing --------------------------------------------------------------------------------
def test_pipe_with_two_processes_after_use_in_the_parent_does_not_hang(clinical_checkpoints):
    # Before the fix, the forked workers hung in torch's OpenMP pool once the parent had used it.
    script = textwrap.dedent(f"""
        import spacy, torch
        torch.set_num_threads(2)
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        nlp.add_pipe("epee_pv_event", config={{"checkpoint": {clinical_checkpoints["pv"]!r}}})
        first = nlp("rash after the first dose.")  # the parent uses the model (and its threads) first
        docs = list(nlp.pipe(["rash after the first dose.", "nausea."] * 6, n_process=2, batch_size=2))
        labels = [d._.epee_annotations[0]["label"] for d in docs]
        assert labels[0] == first._.epee_annotations[0]["label"] and len(labels) == 12
        print("ok", len(docs))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok 12" in result.stdout


# ----- linear work per note ---------------------------------------------------------------------------
def test_doc_text_is_built_once_per_note_not_per_mention(clinical_checkpoints):
    """doc.text is rebuilt from the tokens on every access; reading it per mention made notes quadratic."""
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_span_classifier", config={"checkpoint": clinical_checkpoints["sup"]})
    nlp.add_pipe("epee_relation_classifier", config={"checkpoint": clinical_checkpoints["ddi"],
                                                     "max_pairs_per_doc": 50})
    reads = {"n": 0}
    real_text = Doc.text

    class CountingDoc(Doc):
        @property
        def text(self):
            reads["n"] += 1
            return real_text.__get__(self)

    words = ("she stopped fish oil and melatonin and ginkgo " * 20).split()
    doc = CountingDoc(nlp.vocab, words=words)
    doc.ents = [Span(doc, i, i + 1, label="SUPPLEMENT") for i, w in enumerate(words) if w in ("melatonin", "ginkgo")]
    for _, proc in nlp.pipeline:
        doc = proc(doc)
    rows = doc_annotations(doc, include_text=True)
    mentions = [r for r in rows if r["kind"] == "mention"]
    assert len(mentions) == 40 and {r["text"] for r in mentions} == {"melatonin", "ginkgo"}
    assert len([r for r in rows if r["kind"] == "pair"]) == 50
    # Once per component and once for the rows with text; the old code read it per mention and per pair.
    assert reads["n"] == 3, reads


def test_pickled_component_leaves_the_weights_behind(clinical_checkpoints):
    import pickle

    nlp = spacy.blank("en")
    component = nlp.add_pipe("epee_pv_event", config={"checkpoint": clinical_checkpoints["pv"]})
    expected = doc_annotations(nlp("rash after the first dose."))
    copy = pickle.loads(pickle.dumps(component))  # what a spawned process receives
    assert copy._model is None  # loaded again from the checkpoint on first use
    assert doc_annotations(copy(nlp.make_doc("rash after the first dose."))) == expected


def test_evaluate_scores_pairs_from_gold_records(clinical_checkpoints, tmp_path):
    from epee_annotate.components import build_drug_lexicon, write_rules

    write_rules(build_drug_lexicon(["aspirin", "warfarin", "heparin"]), tmp_path / "drugs.json")
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_ddi", config={"checkpoint": clinical_checkpoints["ddi"], "lexicon": str(tmp_path / "drugs.json")})
    text = "aspirin with warfarin and heparin"
    pairs = [r for r in nlp(text)._.epee_annotations if r["kind"] == "pair"]
    assert len(pairs) == 3
    labels = nlp.get_pipe("epee_ddi").labels

    def example(records):
        reference = nlp.make_doc(text)
        reference._.epee_annotations = records
        return Example(nlp.make_doc(text), reference)

    assert nlp.evaluate([example(pairs)])["epee_ddi_acc"] == 1.0
    wrong = [{**pairs[0], "label": next(l for l in labels if l != pairs[0]["label"])}, *pairs[1:]]
    assert nlp.evaluate([example(wrong)])["epee_ddi_acc"] == pytest.approx(2 / 3)


def test_spacys_protocol_checks_do_not_load_the_checkpoint(tmp_path):
    # spaCy's add_pipe checks components against ListenedToComponent with hasattr on every protocol
    # attribute, in a per-process random order; a lazy ``model`` property used to load the checkpoint
    # there (flaky failures in add_pipe and spacy.load).
    import spacy.ty

    nlp = spacy.blank("en")
    component = nlp.add_pipe("epee_pv_event", config={"checkpoint": str(tmp_path / "not-there-yet")})
    assert not isinstance(component, spacy.ty.ListenedToComponent)
    assert component._model is None
