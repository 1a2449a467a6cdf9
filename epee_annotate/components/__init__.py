"""spaCy / medSpaCy components that annotate clinical text with early-exit (EPEE) models.

Importing this module registers the spaCy factories (``epee_textcat``, ``epee_span_classifier``,
``epee_relation_classifier``, ``epee_supplement_status``, ``epee_ddi``, ``epee_pv_event``);
spaCy also finds them through the package's ``spacy_factories`` entry points. See
docs/components.md.
"""

from .clinical import (
    DDI_ENTITY_LABELS, DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_LABEL, SUPPLEMENT_STATUS_LABELS, SUPPLEMENT_VARIANTS,
    build_drug_lexicon, supplement_rules,
)
from ..inputs import MENTION_MARKERS, mark_mention
from .base import EpeeComponent
from .extensions import RESULT_ATTRS, register_extensions
from .factories import (
    make_ddi, make_pv_event, make_relation_classifier, make_span_classifier, make_supplement_status, make_textcat,
)
from .medspacy_support import doc_consumer_attrs, make_docbin_safe, quiet_medspacy
from .mentions import read_rules, write_rules
from .records import ANNOTATION_KEYS, doc_annotations
from .sections import make_sections
from .relations import RelationClassifier
from .spans import SpanClassifier
from .textcat import TextClassifier

register_extensions()

__all__ = [
    "ANNOTATION_KEYS", "DDI_ENTITY_LABELS", "DDI_LABELS", "MENTION_MARKERS", "PV_EVENT_LABELS", "RESULT_ATTRS",
    "SUPPLEMENT_LABEL", "SUPPLEMENT_STATUS_LABELS", "SUPPLEMENT_VARIANTS", "EpeeComponent", "RelationClassifier",
    "SpanClassifier", "TextClassifier", "build_drug_lexicon", "doc_annotations", "doc_consumer_attrs",
    "make_ddi", "make_docbin_safe", "make_pv_event", "make_relation_classifier", "make_span_classifier",
    "make_sections", "make_supplement_status", "make_textcat", "mark_mention", "quiet_medspacy", "read_rules", "register_extensions",
    "supplement_rules", "write_rules",
]
