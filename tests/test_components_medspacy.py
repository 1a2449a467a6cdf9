"""EPEE components inside a medSpaCy pipeline (PyRuSH sentences, TargetMatcher, ConText, DocConsumer)."""

import medspacy
import pytest
from loguru import logger
from spacy.tokens import DocBin

from epee_annotate.components import (
    SUPPLEMENT_STATUS_LABELS, doc_annotations, doc_consumer_attrs, make_docbin_safe, quiet_medspacy,
)

NOTE = ("Patient denies taking fish oil. Mother takes valerian root nightly.\n\n"
        "Continues CoQ10 with warfarin and aspirin.")


@pytest.fixture(scope="module")
def nlp(clinical_checkpoints):
    pipeline = medspacy.load()
    from medspacy.target_matcher import TargetRule

    pipeline.get_pipe("medspacy_target_matcher").add([TargetRule("warfarin", "DRUG"), TargetRule("aspirin", "DRUG")])
    # Before ConText, so ConText sees the supplement mentions the component adds.
    pipeline.add_pipe("epee_supplement_status", config={"checkpoint": clinical_checkpoints["sup"]}, before="medspacy_context")
    pipeline.add_pipe("epee_ddi", config={"checkpoint": clinical_checkpoints["ddi"]})
    pipeline.add_pipe("medspacy_doc_consumer", config={"dtype_attrs": doc_consumer_attrs()})
    return pipeline


def test_context_flags_sit_next_to_epee_labels(nlp):
    doc = nlp(NOTE)
    ents = {e.text: e for e in doc.ents}
    assert set(ents) == {"fish oil", "valerian root", "CoQ10", "warfarin", "aspirin"}
    assert ents["fish oil"]._.is_negated is True and ents["fish oil"]._.epee_label in SUPPLEMENT_STATUS_LABELS
    assert ents["valerian root"]._.is_family is True and ents["valerian root"].id_ == "Valerian"
    assert ents["CoQ10"]._.is_negated is False and ents["CoQ10"]._.epee_confidence is not None
    assert ents["warfarin"]._.epee_label is None  # a DRUG, not classified by the supplement component
    rows = {(r["task"], doc.text[r["start"]:r["end"]]): r for r in doc_annotations(doc)}
    assert rows[("epee_supplement_status", "fish oil")]["context"]["negated"] is True
    assert rows[("epee_supplement_status", "valerian root")]["context"]["family"] is True
    # PyRuSH split the note into sentences: DDI pairs stay inside the last sentence only
    pairs = [(r["head"].text, r["tail"].text) for r in doc._.epee_relations]
    assert pairs == [("CoQ10", "warfarin"), ("CoQ10", "aspirin"), ("warfarin", "aspirin")]


def test_doc_consumer_exports_epee_attributes(nlp):
    doc = nlp(NOTE)
    frame = doc._.to_dataframe()
    assert {"is_negated", "epee_label", "epee_confidence", "epee_exit_layer", "epee_probs"} <= set(frame.columns)
    assert list(frame["epee_label"]) == [e._.epee_label for e in doc.ents]
    assert frame.loc[frame["text"] == "fish oil", "is_negated"].item() is True


def test_docbin_after_making_medspacy_docs_safe(nlp):
    doc = nlp(NOTE)
    with pytest.raises(TypeError):  # medSpaCy's own objects in user_data
        DocBin(docs=[doc], store_user_data=True).to_bytes()
    dropped = make_docbin_safe(doc)
    assert "context_graph" in dropped
    restored = next(DocBin().from_bytes(DocBin(docs=[doc], store_user_data=True).to_bytes()).get_docs(nlp.vocab))
    assert doc_annotations(restored) == doc_annotations(doc)
    fish = next(e for e in restored.ents if e.text == "fish oil")
    assert fish._.is_negated is True and fish._.epee_label == next(e for e in doc.ents if e.text == "fish oil")._.epee_label


def test_pyrush_debug_logging_is_silenced(nlp):
    messages = []
    sink = logger.add(messages.append, level="DEBUG", format="{message}")
    logger.enable("PyRuSH")
    try:
        nlp.get_pipe("medspacy_pyrush")(nlp.make_doc("Zyxwv takes fish oil. Then stops."))
        assert any("Zyxwv" in m for m in messages)  # PyRuSH really logs token text when enabled
        messages.clear()
        quiet_medspacy()
        nlp("Zyxwv takes fish oil. Then stops.")
        assert messages == []
    finally:
        logger.remove(sink)
        quiet_medspacy()


def test_example_script_runs_on_the_synthetic_notes(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "clinical_pipeline.py"
    spec = importlib.util.spec_from_file_location("clinical_pipeline_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main([]) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED DEMO" in captured.err
    lines = captured.out.splitlines()
    assert any("supplement_status" in l and "fish oil" in l for l in lines)
    assert any("ddi" in l and "aspirin + warfarin" in l for l in lines)
    assert any("pv_event" in l and "sentence" in l for l in lines)
    assert any("St. John's Wort" in l and "negated" in l for l in lines)
