"""Where span and relation components get their mentions: doc.ents or a span group, optionally
filled first by a medSpaCy TargetMatcher that the component runs itself.

Matched spans are added to ``doc.ents`` (existing entities win overlaps, as in medSpaCy) with
the rule's ``literal`` as the entity id (``span.id_``/``span.ent_id_``), which is how the
canonical name (e.g. "Coenzyme Q10" for "CoQ10") is kept. The ``span._.target_rule`` objects
medSpaCy attaches are removed again because DocBin cannot serialise them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from spacy.language import Language
from spacy.tokens import Doc, Span

from ..extras import require

RULES_FILE = "rules.json"


def rules_to_dicts(rules: Sequence[Any]) -> list[dict[str, Any]]:
    """TargetRules as JSON-ready dicts (literal, category, pattern)."""
    return [{k: v for k, v in (("literal", r.literal), ("category", r.category), ("pattern", r.pattern)) if v is not None}
            for r in rules]


def rules_from_dicts(data: Sequence[dict[str, Any]]) -> list[Any]:
    """TargetRules from ``rules_to_dicts`` output (or medSpaCy's own rule JSON entries)."""
    TargetRule = require("medspacy.target_matcher", "mention rules").TargetRule

    return [TargetRule(d["literal"], d["category"], pattern=d.get("pattern")) for d in data]


def read_rules(path: str | Path) -> list[Any]:
    """TargetRules from a JSON file: a list of rule dicts, or medSpaCy's ``{"target_rules": [...]}``."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("target_rules", [])
    if not isinstance(data, list):
        raise ValueError(f"{str(path)!r} holds no list of target rules")
    return rules_from_dicts(data)


def write_rules(rules: Sequence[Any], path: str | Path) -> None:
    """Write TargetRules as JSON (readable by ``read_rules``)."""
    Path(path).write_text(json.dumps(rules_to_dicts(rules), indent=1) + "\n")


def add_entities(doc: Doc, spans: Sequence[Span]) -> list[Span]:
    """Add spans to doc.ents where they overlap neither an existing entity nor each other; returns those added."""
    taken = [False] * len(doc)
    for ent in doc.ents:
        taken[ent.start : ent.end] = [True] * len(ent)
    added = []
    for span in sorted(spans, key=lambda s: (s.start, -len(s))):
        if len(span) and not any(taken[span.start : span.end]):
            taken[span.start : span.end] = [True] * len(span)
            added.append(span)
    if added:
        doc.set_ents(added, default="unmodified")
    return added


class RuleMatcher:
    """A medSpaCy TargetMatcher that writes its matches into doc.ents with the canonical name as entity id."""

    def __init__(self, nlp: Language, name: str, rules: Sequence[Any]):
        TargetMatcher = require("medspacy.target_matcher", "mention rules").TargetMatcher

        self.rules = list(rules)
        self._matcher = TargetMatcher(nlp, name=f"{name}_matcher", result_type=None)
        self._matcher.add(self.rules)

    def __call__(self, doc: Doc) -> list[Span]:
        with warnings.catch_warnings():
            # medSpaCy's inner token Matcher is empty when all rules are phrases/regexes (spaCy W036).
            warnings.filterwarnings("ignore", message=r"\[W036\]")
            matches = self._matcher(doc)
        spans = []
        for match in matches:
            rule = match._.target_rule
            key = ("._.", "target_rule", match.start_char, match.end_char)
            if doc.user_data.get(key) is rule:
                del doc.user_data[key]
            spans.append(Span(doc, match.start, match.end, label=match.label_, span_id=rule.literal))
        return add_entities(doc, spans)


class MentionSource:
    """Mentions from ``doc.ents`` (``spans_key=None``) or ``doc.spans[spans_key]``, filtered by label.

    ``rules`` (TargetRules, or the path of a rules JSON file read on first use) add mentions first.
    """

    def __init__(self, nlp: Language, name: str, spans_key: str | None, span_labels: Sequence[str] | None,
                 rules: Sequence[Any] | str | Path | None = None):
        self.spans_key = spans_key
        self.span_labels = set(span_labels) if span_labels else None
        self._nlp, self._name = nlp, name
        # A rules file is read lazily, like checkpoints: spacy.load passes the original path and
        # then from_disk supplies the saved copy.
        self._rules = rules
        self._matcher: RuleMatcher | None = None

    @property
    def has_rules(self) -> bool:
        """Whether this source adds mentions by rule matching."""
        return bool(self._rules)

    @property
    def matcher(self) -> RuleMatcher | None:
        if self._matcher is None and self._rules:
            rules = read_rules(self._rules) if isinstance(self._rules, (str, Path)) else self._rules
            self._matcher = RuleMatcher(self._nlp, self._name, rules)
        return self._matcher

    def __call__(self, doc: Doc) -> list[Span]:
        """The doc's mentions in text order (after running the rule matcher, if any)."""
        if self.matcher is not None:
            self.matcher(doc)
        if self.spans_key is None:
            source = list(doc.ents)
        else:
            source = list(doc.spans[self.spans_key]) if self.spans_key in doc.spans else []
        spans = [s for s in source if (self.span_labels is None or s.label_ in self.span_labels) and s.text.strip()]
        return sorted(spans, key=lambda s: (s.start_char, s.end_char))

    def to_disk(self, path: Path) -> None:
        if self.matcher is not None:
            write_rules(self.matcher.rules, path / RULES_FILE)

    def from_disk(self, path: Path) -> None:
        if (path / RULES_FILE).is_file():
            self._rules, self._matcher = path / RULES_FILE, None

    def rules_data(self) -> list[dict[str, Any]]:
        """The rules as JSON-ready dicts (empty without rules)."""
        return rules_to_dicts(self.matcher.rules) if self.matcher is not None else []

    def set_rules_data(self, data: Sequence[dict[str, Any]]) -> None:
        self._rules, self._matcher = (rules_from_dicts(data) if data else None), None
