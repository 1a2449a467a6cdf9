"""``epee_sections``: medSpaCy's Sectionizer behind one on/off setting, so configs can carry it switched off.

With ``enabled = true`` every token gets ``token._.section_category`` (e.g. ``family_history``),
each annotation row its ``section`` (``records.doc_annotations``) and NOTE_NLP its
``section_concept_id`` through the concept map. medSpaCy applies a section's assertion to the
mentions in it (``span_attrs``; its defaults: family history -> ``is_family``, past medical and
social history -> ``is_historical``, instructions, education and allergy -> ``is_hypothetical``),
so place it after the components that add mentions. Off, it leaves the doc untouched.
"""

from typing import Any, Dict, Optional, Union

from spacy.language import Language
from spacy.tokens import Doc

from ..extras import require


class Sections:
    """A switchable medSpaCy Sectionizer."""

    def __init__(self, nlp: Language, name: str, enabled: bool, rules: Optional[str],
                 span_attrs: Union[str, Dict[str, Dict[str, Any]], None]):
        self.name = name
        self.enabled = enabled
        self.sectionizer = None
        if enabled:
            Sectionizer = require("medspacy.section_detection", "the epee_sections component").Sectionizer
            self.sectionizer = Sectionizer(nlp, name=name, rules=rules, span_attrs=span_attrs)

    def __call__(self, doc: Doc) -> Doc:
        return self.sectionizer(doc) if self.sectionizer is not None else doc


@Language.factory("epee_sections", default_config={"enabled": False, "rules": "default", "span_attrs": "default"})
def make_sections(nlp: Language, name: str, enabled: bool, rules: Optional[str],
                  span_attrs: Union[str, Dict[str, Dict[str, Any]], None]) -> Sections:
    """medSpaCy's Sectionizer when ``enabled`` (rules/span_attrs as medSpaCy's); a no-op otherwise."""
    return Sections(nlp, name, enabled, rules, span_attrs)
