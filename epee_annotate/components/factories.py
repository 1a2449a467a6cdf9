"""spaCy factories: three generic components and three clinical configurations of them.

The names are also declared as ``spacy_factories`` entry points in pyproject.toml, so configs
resolve without importing epee_annotate first. (No ``from __future__ import annotations`` here:
spaCy validates factory settings from the runtime type hints.)
"""

from typing import Any, Dict, List, Optional

from spacy.language import Language

from .clinical import DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_LABEL, SUPPLEMENT_STATUS_LABELS, supplement_rules
from .extensions import RESULT_ATTRS
from .relations import RelationClassifier
from .spans import SpanClassifier
from .textcat import TextClassifier

# Settings every component takes: checkpoint directory; the exit policy as flat settings
# (all null = the checkpoint's default; entropy and/or patience = EPEE; budget = a fixed exit
# layer, 0 = full depth; beem = a BEEM score threshold; policy = a saved policy dict with "name"; settings of two policy
# families at once are an error, see epee_annotate.policy_settings); model batch size, device,
# autocast (null | "bf16" | "fp16", CUDA only), runtime (epee_annotate.runtimes.RUNTIMES: torch, torch-int8,
# onnx, onnx-int8), batch_tokens (null, or a budget of padded tokens per model batch, batch_size capping its
# rows), and an optional confidence floor below which the label becomes ``none_label``.
COMMON = {"checkpoint": None, "entropy": None, "patience": None, "budget": None, "beem": None, "policy": None,
          "batch_size": 32, "device": "cpu", "autocast": None, "runtime": "torch", "batch_tokens": None,
          "min_confidence": None, "none_label": "none"}

# What each kind of component writes (spaCy's assigns/requires, shown by nlp.analyze_pipes()).
RECORDS = ["doc._.epee_annotations"]
SPAN_RESULTS = [f"span._.{attr}" for attr in RESULT_ATTRS]
TEXTCAT_ASSIGNS = ["doc.cats", *RECORDS, *SPAN_RESULTS, *(f"doc._.{attr}" for attr in RESULT_ATTRS)]
SPAN_ASSIGNS = ["doc.ents", *RECORDS, *SPAN_RESULTS]  # doc.ents: mentions found by the component's own rules
PAIR_ASSIGNS = ["doc.ents", *RECORDS, "doc._.epee_relations", "doc._.epee_truncated_pairs"]


def _settings(checkpoint: Optional[str], entropy: Optional[float], patience: Optional[int], budget: Optional[int],
              beem: Optional[float],
              policy: Optional[Dict[str, Any]], batch_size: int, device: str, autocast: Optional[str],
              min_confidence: Optional[float], none_label: str, **extra: Any) -> Dict[str, Any]:
    """The common settings as keyword arguments of ``EpeeComponent`` (``runtime`` comes in ``extra``)."""
    return {"checkpoint": checkpoint, "entropy": entropy, "patience": patience, "budget": budget, "beem": beem, "policy": policy,
            "batch_size": batch_size, "device": device, "autocast": autocast, "min_confidence": min_confidence,
            "none_label": none_label, **extra}


@Language.factory("epee_textcat", default_config={**COMMON, "scope": "sents"}, assigns=TEXTCAT_ASSIGNS)
def make_textcat(nlp: Language, name: str, checkpoint: Optional[str], scope: str, entropy: Optional[float],
                 patience: Optional[int], budget: Optional[int], beem: Optional[float],
                 policy: Optional[Dict[str, Any]], batch_size: int,
                 device: str, autocast: Optional[str], runtime: str, batch_tokens: Optional[int], min_confidence: Optional[float],
                 none_label: str) -> TextClassifier:
    """Classify each sentence (``scope="sents"``) or the whole doc (``"doc"``)."""
    return TextClassifier(nlp, name, scope=scope, **_settings(checkpoint, entropy, patience, budget, beem, policy,
                                                              batch_size, device, autocast, min_confidence, none_label, runtime=runtime, batch_tokens=batch_tokens))


@Language.factory("epee_span_classifier", default_config={**COMMON, "spans_key": None, "span_labels": None,
                                                          "rules": None},
                  assigns=SPAN_ASSIGNS, requires=["doc.ents"])
def make_span_classifier(nlp: Language, name: str, checkpoint: Optional[str], spans_key: Optional[str],
                         span_labels: Optional[List[str]], rules: Optional[str], entropy: Optional[float],
                         patience: Optional[int], budget: Optional[int], beem: Optional[float],
                         policy: Optional[Dict[str, Any]],
                         batch_size: int, device: str, autocast: Optional[str], runtime: str, batch_tokens: Optional[int], min_confidence: Optional[float],
                         none_label: str) -> SpanClassifier:
    """Classify mentions (doc.ents or ``doc.spans[spans_key]``, filtered by ``span_labels``).

    ``rules``: optional JSON file of medSpaCy TargetRules matched first to add mentions.
    """
    return SpanClassifier(nlp, name, spans_key=spans_key, span_labels=span_labels, rules=rules,
                          **_settings(checkpoint, entropy, patience, budget, beem, policy, batch_size, device, autocast,
                                      min_confidence, none_label, runtime=runtime, batch_tokens=batch_tokens))


@Language.factory("epee_relation_classifier", default_config={**COMMON, "max_pairs_per_doc": 1000, "spans_key": None,
                                                              "span_labels": None, "rules": None},
                  assigns=PAIR_ASSIGNS, requires=["doc.ents"])
def make_relation_classifier(nlp: Language, name: str, checkpoint: Optional[str], max_pairs_per_doc: int,
                             spans_key: Optional[str], span_labels: Optional[List[str]], rules: Optional[str],
                             entropy: Optional[float], patience: Optional[int], budget: Optional[int],
                             beem: Optional[float],
                             policy: Optional[Dict[str, Any]], batch_size: int, device: str, autocast: Optional[str], runtime: str, batch_tokens: Optional[int],
                             min_confidence: Optional[float], none_label: str) -> RelationClassifier:
    """Classify every pair of mentions within a sentence (at most ``max_pairs_per_doc`` per doc)."""
    return RelationClassifier(nlp, name, max_pairs_per_doc=max_pairs_per_doc, spans_key=spans_key,
                              span_labels=span_labels, rules=rules,
                              **_settings(checkpoint, entropy, patience, budget, beem, policy, batch_size, device, autocast,
                                          min_confidence, none_label, runtime=runtime, batch_tokens=batch_tokens))


@Language.factory("epee_supplement_status", default_config={**COMMON, "match_rules": True, "spans_key": None,
                                                            "span_labels": [SUPPLEMENT_LABEL]},
                  assigns=SPAN_ASSIGNS)
def make_supplement_status(nlp: Language, name: str, checkpoint: Optional[str], match_rules: bool,
                           spans_key: Optional[str], span_labels: Optional[List[str]], entropy: Optional[float],
                           patience: Optional[int], budget: Optional[int], beem: Optional[float],
                           policy: Optional[Dict[str, Any]],
                           batch_size: int, device: str, autocast: Optional[str], runtime: str, batch_tokens: Optional[int], min_confidence: Optional[float],
                           none_label: str) -> SpanClassifier:
    """Supplement use status (Continuing / Discontinued / Started / Uncertain) of SUPPLEMENT mentions.

    With ``match_rules`` the component first finds the 25 supplements itself (``supplement_rules``).
    In a medSpaCy pipeline add it before "medspacy_context" so ConText sees the new mentions.
    """
    return SpanClassifier(nlp, name, spans_key=spans_key, span_labels=span_labels,
                          rules=supplement_rules() if match_rules else None,
                          **_settings(checkpoint, entropy, patience, budget, beem, policy, batch_size, device, autocast,
                                      min_confidence, none_label, expected_labels=SUPPLEMENT_STATUS_LABELS, runtime=runtime, batch_tokens=batch_tokens))


@Language.factory("epee_ddi", default_config={**COMMON, "max_pairs_per_doc": 1000, "spans_key": None,
                                              "span_labels": None, "lexicon": None},
                  assigns=PAIR_ASSIGNS)
def make_ddi(nlp: Language, name: str, checkpoint: Optional[str], max_pairs_per_doc: int, spans_key: Optional[str],
             span_labels: Optional[List[str]], lexicon: Optional[str], entropy: Optional[float],
             patience: Optional[int], budget: Optional[int], beem: Optional[float],
             policy: Optional[Dict[str, Any]], batch_size: int,
             device: str, autocast: Optional[str], runtime: str, batch_tokens: Optional[int], min_confidence: Optional[float],
             none_label: str) -> RelationClassifier:
    """Drug-drug interaction type (none / mechanism / effect / advise / int) of drug mention pairs.

    Drug mentions come from doc.ents (all labels, or ``span_labels``) and, with ``lexicon`` (a
    rules JSON, e.g. written by ``write_rules(build_drug_lexicon(...), path)``), from a matcher.
    """
    return RelationClassifier(nlp, name, max_pairs_per_doc=max_pairs_per_doc, spans_key=spans_key,
                              span_labels=span_labels, rules=lexicon,
                              **_settings(checkpoint, entropy, patience, budget, beem, policy, batch_size, device, autocast,
                                          min_confidence, none_label, expected_labels=DDI_LABELS, runtime=runtime, batch_tokens=batch_tokens))


@Language.factory("epee_pv_event", default_config={**COMMON, "scope": "sents"}, assigns=TEXTCAT_ASSIGNS)
def make_pv_event(nlp: Language, name: str, checkpoint: Optional[str], scope: str, entropy: Optional[float],
                  patience: Optional[int], budget: Optional[int], beem: Optional[float],
                  policy: Optional[Dict[str, Any]], batch_size: int,
                  device: str, autocast: Optional[str], runtime: str, batch_tokens: Optional[int], min_confidence: Optional[float],
                  none_label: str) -> TextClassifier:
    """Pharmacovigilance event type per sentence (PHEE): Adverse_event / Potential_therapeutic_event.

    PHEE sentences all carry an event, so the model always picks one of the two; set
    ``min_confidence`` to call low-confidence sentences ``none_label`` instead.
    """
    return TextClassifier(nlp, name, scope=scope,
                          **_settings(checkpoint, entropy, patience, budget, beem, policy, batch_size, device, autocast,
                                      min_confidence, none_label, expected_labels=PV_EVENT_LABELS, runtime=runtime, batch_tokens=batch_tokens))
