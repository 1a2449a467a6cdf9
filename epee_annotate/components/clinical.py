"""Clinical vocabularies for the three clinical configurations: supplement rules, DDI drug lexicon, labels.

Supplement rules are case-insensitive regular expressions (medSpaCy's RegexMatcher), so they
match whatever tokenizer the pipeline uses ("CoQ10", "St. John's Wort", "omega-3"). Each
rule's ``literal`` is the canonical supplement name, kept as the entity id of each match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

SUPPLEMENT_LABEL = "SUPPLEMENT"
from ..extras import require
from ..vocab import DDI_ENTITY_LABELS, DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_STATUS_LABELS  # noqa: F401 (re-exported)

_WS = r"[\s-]*"  # optional space or hyphen between word parts
# canonical name -> alternatives (regex, matched case-insensitively with word boundaries)
SUPPLEMENT_VARIANTS: dict[str, list[str]] = {
    "Alfalfa": ["alfalfa", "medicago sativa"],
    "Biotin": ["biotin", "vitamin b7", "vitamin h"],
    "Black Cohosh": [rf"black{_WS}cohosh", "cimicifuga", "actaea racemosa"],
    "Coenzyme Q10": [rf"co{_WS}enzyme{_WS}q{_WS}10", rf"coq{_WS}10", "ubiquinone", "ubiquinol", "ubidecarenone"],
    "Cranberry": ["cranberry", "cranberries", "vaccinium macrocarpon"],
    "Dandelion": ["dandelion", "taraxacum"],
    "Echinacea": ["echinacea"],
    "Fish Oil": [rf"fish{_WS}oils?", rf"omega{_WS}3s?(?:{_WS}fatty{_WS}acids?)?", r"cod\s+liver\s+oil"],
    "Flax Seed": [rf"flax{_WS}seeds?(?:\s+oil)?", "linseed", "flax"],
    "Folic Acid": [r"folic\s+acid", "folate", "vitamin b9"],
    "Garlic": ["garlic", "allium sativum"],
    "Ginger": ["ginger", "zingiber"],
    "Ginkgo": [r"gin(?:kgo|gko)(?:\s+biloba)?"],
    "Ginseng": [r"(?:(?:panax|korean|asian|american|siberian)\s+)?ginseng", "panax"],
    "Glucosamine": ["glucosamine"],
    "Glutamine": [r"(?:l-)?glutamine"],
    "Kava Kava": [rf"kava(?:{_WS}kava)?", "piper methysticum"],
    "Lecithin": ["lecithin"],
    "Melatonin": ["melatonin"],
    "Milk Thistle": [rf"milk{_WS}thistle", "silymarin", "silybum"],
    "Saw Palmetto": [rf"saw{_WS}palmetto", "serenoa"],
    "St. John's Wort": [r"(?:st\.?|saint)\s*john(?:['\u2019]?s)?\s*wort", "hypericum"],
    "Turmeric": ["turmeric", "curcumin"],
    "Valerian": [r"valerian(?:\s+root)?"],
    "Vitamin E": [r"vit(?:amin|\.)?\s*e", "tocopherols?", "tocopheryl"],
}


def supplement_pattern(variants: Iterable[str]) -> str:
    """One regex for a supplement's variants, anchored on word boundaries."""
    return r"(?<![\w-])(?:" + "|".join(variants) + r")(?![\w-])"


def supplement_rules(label: str = SUPPLEMENT_LABEL) -> list[Any]:
    """medSpaCy TargetRules for the 25 supplements, one per canonical name."""
    TargetRule = require("medspacy.target_matcher", "supplement rules").TargetRule

    return [TargetRule(name, label, pattern=supplement_pattern(variants)) for name, variants in SUPPLEMENT_VARIANTS.items()]


def build_drug_lexicon(source: str | Path | Mapping[str, str] | Iterable[str], label: str | None = None) -> list[Any]:
    """medSpaCy TargetRules (phrase matches, case-insensitive) for drug names.

    ``source``: a DDI 2013 corpus directory or XML file (entity texts and types via
    ``epee_annotate.data.ddi.ddi_drug_lexicon``), a mapping name -> entity type, or plain names.
    The category is the entity type upper-cased (DRUG, BRAND, GROUP, DRUG_N) unless ``label`` is given.
    Note the DDI corpus is CC BY-NC: a lexicon built from it inherits that licence.
    """
    TargetRule = require("medspacy.target_matcher", "a drug lexicon").TargetRule

    if isinstance(source, (str, Path)):
        from ..data.ddi import ddi_drug_lexicon  # imported here: the data package is not needed at inference

        entries: Mapping[str, str] = ddi_drug_lexicon(source)
    elif isinstance(source, Mapping):
        entries = source
    else:
        entries = {name: "drug" for name in source}
    rules = []
    for name, kind in sorted(entries.items()):
        name = str(name).strip()
        if name:
            rules.append(TargetRule(name, label or str(kind).upper()))
    return rules
