"""Sections: the switchable Sectionizer, each row's section, ConText by section, NOTE_NLP section concepts."""

from pathlib import Path

import pytest
from spacy.util import load_config, load_model_from_config

import epee_annotate.components  # noqa: F401  (factories)
from epee_annotate.components import doc_annotations
from epee_annotate.omop import ConceptMap, note_nlp_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOTE = ("History of Present Illness: Patient takes fish oil daily.\n"
        "Family History: Mother takes valerian root.\n"
        "Past Medical History: melatonin for insomnia.\n")


def build(name: str, checkpoint: str, **overrides):
    config = load_config(CONFIGS / name, overrides={"paths.supplement_checkpoint": checkpoint, **overrides})
    return load_model_from_config(config, auto_fill=True)


def test_shipped_configs_carry_the_sectionizer_switched_off(clinical_checkpoints):
    for name in ("pv_event.cfg", "supplement_status.cfg", "ddi.cfg"):
        assert load_config(CONFIGS / name)["components"]["epee_sections"]["enabled"] is False
    nlp = build("supplement_status.cfg", clinical_checkpoints["sup"])
    rows = doc_annotations(nlp(NOTE))
    assert rows and all(r["section"] is None for r in rows)


@pytest.fixture(scope="module")
def sectioned(clinical_checkpoints):
    return build("supplement_status_sections.cfg", clinical_checkpoints["sup"])


def test_rows_get_their_section_and_context_follows_it(sectioned):
    doc = sectioned(NOTE)
    rows = {doc.text[r["start"]:r["end"]]: r for r in doc_annotations(doc)}
    assert rows["fish oil"]["section"] == "history_of_present_illness"
    assert rows["valerian root"]["section"] == "family_history"
    assert rows["melatonin"]["section"] == "past_medical_history"
    assert rows["valerian root"]["context"]["family"] is True and rows["fish oil"]["context"]["family"] is False
    assert rows["melatonin"]["context"]["historical"] is True


def test_note_nlp_section_concepts_through_the_map(sectioned, tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("component,label,concept_id,source_concept_id\nsection,family_history,2000000001,\n")
    rows = note_nlp_table(sectioned, [sectioned(NOTE)], [9], ConceptMap.read(path)).to_pylist()
    by_offset = {int(r["offset"]): r for r in rows}
    valerian = by_offset[NOTE.index("valerian root")]
    assert valerian["section_concept_id"] == 2000000001 and valerian["term_exists"] == "N"
    assert "section=family_history" in valerian["term_modifiers"]
    assert by_offset[NOTE.index("fish oil")]["section_concept_id"] == 0  # a section the map does not name
    assert by_offset[NOTE.index("melatonin")]["term_temporal"] == "past"
