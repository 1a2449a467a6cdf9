"""spaCy factories: three generic components and three clinical configurations of them.

The names are also declared as ``spacy_factories`` entry points in pyproject.toml, so configs
resolve without importing epee_annotate first. (No ``from __future__ import annotations`` here:
spaCy validates factory settings from the runtime type hints.)

Every factory takes the same common settings: the checkpoint directory; the exit policy as the
flat settings of the policy registry (``epee_annotate.policies.registry``; all null = the
checkpoint's default; settings of two policies at once are an error) or ``policy``, a saved policy
dict with "name"; the model batch size, device, autocast (null | "bf16" | "fp16", CUDA only), the
runtime (``epee_annotate.runtimes.RUNTIMES``: torch, torch-int8, onnx, onnx-int8), batch_tokens (null,
or a budget of padded tokens per model batch), an optional confidence floor below which the label
becomes ``none_label``, and ``trust_unhashed_weights``, the explicit opt-in to load a checkpoint that
records no weights hash. The signatures are
built from the registry, so a new policy's settings reach every factory without editing this file.
"""

import inspect
from typing import Any, Callable, Dict, List, Optional

from spacy.language import Language

from ..policies import setting_keys, settings
from .clinical import DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_LABEL, SUPPLEMENT_STATUS_LABELS, supplement_rules
from .extensions import RESULT_ATTRS
from .relations import RelationClassifier
from .scoring import score_weights
from .spans import SpanClassifier
from .textcat import TextClassifier

# name: (type hint spaCy validates, default)
COMMON: Dict[str, tuple] = {
    "checkpoint": (Optional[str], None),
    **{s.key: (Optional[s.type], None) for s in settings()},
    "policy": (Optional[Dict[str, Any]], None),
    "batch_size": (int, 32),
    "device": (str, "cpu"),
    "autocast": (Optional[str], None),
    "runtime": (str, "torch"),  # epee_annotate.runtimes.RUNTIMES
    "batch_tokens": (Optional[int], None),  # a budget of padded tokens per model batch; batch_size caps its rows
    "min_confidence": (Optional[float], None),
    "none_label": (str, "none"),
    "trust_unhashed_weights": (bool, False),
    "audit_fraction": (Optional[float], None),
}
SPAN_SOURCE = {"spans_key": (Optional[str], None), "span_labels": (Optional[List[str]], None)}
PAIRS = {"max_pairs_per_doc": (int, 1000), **SPAN_SOURCE}

# What each kind of component writes (spaCy's assigns/requires, shown by nlp.analyze_pipes()).
RECORDS = ["doc._.epee_annotations"]
SPAN_RESULTS = [f"span._.{attr}" for attr in RESULT_ATTRS]
TEXTCAT_ASSIGNS = ["doc.cats", *RECORDS, *SPAN_RESULTS, *(f"doc._.{attr}" for attr in RESULT_ATTRS)]
SPAN_ASSIGNS = ["doc.ents", *RECORDS, *SPAN_RESULTS]  # doc.ents: mentions found by the component's own rules
PAIR_ASSIGNS = ["doc.ents", *RECORDS, "doc._.epee_relations", "doc._.epee_truncated_pairs"]


# The factories of early-exit classifiers: every one takes the COMMON settings (a job sets them all).
CLASSIFIER_FACTORIES: List[str] = []


def _factory(name: str, build: Callable[..., Any], settings_: Dict[str, tuple], doc: str,
             **registration: Any) -> Callable[..., Any]:
    """Register ``name``: a factory taking COMMON + ``settings_`` that calls ``build(nlp, name, **settings)``.

    The policy keys are gathered into ``policy_settings`` for the component.
    """
    spec = {**COMMON, **settings_}
    CLASSIFIER_FACTORIES.append(name)

    def factory(nlp: Language, name: str, **config: Any) -> Any:
        policy_settings = {key: config.pop(key) for key in setting_keys()}
        return build(nlp, name, policy_settings=policy_settings, **config)

    keyword = inspect.Parameter.KEYWORD_ONLY
    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("nlp", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Language),
         inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
         *(inspect.Parameter(key, keyword, annotation=hint) for key, (hint, _) in spec.items())])
    factory.__doc__ = doc
    factory.__name__ = factory.__qualname__ = "make_" + name.removeprefix("epee_")
    defaults = {key: default for key, (_, default) in spec.items()}
    return Language.factory(name, default_config=defaults, default_score_weights=score_weights(name),
                            **registration)(factory)


def _with(cls: type, **fixed: Any) -> Callable[..., Any]:
    """A component class with some settings fixed by the clinical configuration."""
    return lambda nlp, name, **config: cls(nlp, name, **config, **fixed)


make_textcat = _factory(
    "epee_textcat", TextClassifier, {"scope": (str, "sents")},
    "Classify each sentence (scope='sents') or the whole doc ('doc').", assigns=TEXTCAT_ASSIGNS)

make_span_classifier = _factory(
    "epee_span_classifier", SpanClassifier, {**SPAN_SOURCE, "rules": (Optional[str], None)},
    "Classify mentions (doc.ents or doc.spans[spans_key], filtered by span_labels); rules: an optional "
    "JSON file of medSpaCy TargetRules matched first to add mentions.",
    assigns=SPAN_ASSIGNS, requires=["doc.ents"])

make_relation_classifier = _factory(
    "epee_relation_classifier", RelationClassifier,
    {**PAIRS, "rules": (Optional[str], None), "negative_rules": (bool, False)},
    "Classify every pair of mentions within a sentence (at most max_pairs_per_doc per doc); negative_rules: "
    "the DDI 2013 negative-instance rules answer none_label first.",
    assigns=PAIR_ASSIGNS, requires=["doc.ents"])


def _supplement_status(nlp: Language, name: str, match_rules: bool, **config: Any) -> SpanClassifier:
    return SpanClassifier(nlp, name, rules=supplement_rules() if match_rules else None,
                          expected_labels=SUPPLEMENT_STATUS_LABELS, **config)


make_supplement_status = _factory(
    "epee_supplement_status", _supplement_status,
    {"match_rules": (bool, True), "spans_key": (Optional[str], None),
     "span_labels": (Optional[List[str]], [SUPPLEMENT_LABEL])},
    "Supplement use status (Continuing / Discontinued / Started / Uncertain) of SUPPLEMENT mentions. With "
    "match_rules the component first finds the 25 supplements itself (supplement_rules). In a medSpaCy "
    "pipeline add it before 'medspacy_context' so ConText sees the new mentions.",
    assigns=SPAN_ASSIGNS)


def _ddi(nlp: Language, name: str, lexicon: Optional[str], **config: Any) -> RelationClassifier:
    return RelationClassifier(nlp, name, rules=lexicon, expected_labels=DDI_LABELS, **config)


make_ddi = _factory(
    "epee_ddi", _ddi, {**PAIRS, "lexicon": (Optional[str], None), "negative_rules": (bool, True)},
    "Drug-drug interaction type (none / mechanism / effect / advise / int) of drug mention pairs. Drug "
    "mentions come from doc.ents (all labels, or span_labels) and, with lexicon (a rules JSON, e.g. written "
    "by write_rules(build_drug_lexicon(...), path)), from a matcher. negative_rules (on): the DDI 2013 "
    "negative-instance rules (same drug, abbreviation, coordinate list) answer none before the model.",
    assigns=PAIR_ASSIGNS)

make_pv_event = _factory(
    "epee_pv_event", _with(TextClassifier, expected_labels=PV_EVENT_LABELS), {"scope": (str, "sents")},
    "Pharmacovigilance event type per sentence (PHEE): Adverse_event / Potential_therapeutic_event. PHEE "
    "sentences all carry an event, so the model always picks one of the two; set min_confidence to call "
    "low-confidence sentences none_label instead.",
    assigns=TEXTCAT_ASSIGNS)
