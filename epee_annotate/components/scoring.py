"""``score`` for the EPEE components, so ``nlp.evaluate(examples)`` reports them next to spaCy's own.

Gold annotations live on ``Example.reference``:

- doc classification (``scope="doc"``): ``reference.cats`` (one 1.0 per doc); scored with spaCy's
  ``Scorer.score_cats`` (single label), keys ``cats_score``, ``cats_macro_f``, ...
- mentions and sentences: ``reference.spans[<component name>]``, one span per item with the gold
  class as its label (``Span(doc, start, end, label="Discontinued")``);
- mention pairs (and any kind): gold records ``reference._.epee_annotations`` of the component's
  task (``label`` = gold class; pairs keyed by head and tail offsets).

Items are matched by character offsets. Keys, prefixed with the component name:
``{name}_acc`` (gold items whose predicted label is right, over all gold items; an item never
classified counts as wrong), ``{name}_p`` / ``_r`` / ``_f`` (micro over labels other than
``none_label``, the negative class) and ``{name}_f_per_type``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from spacy.scorer import PRFScore, Scorer
from spacy.tokens import Doc

Key = tuple[Any, ...]


def record_key(record: dict[str, Any]) -> Key:
    """Identity of a classified item: offsets (pairs: head and tail), never the label."""
    if record.get("kind") == "pair":
        return ("pair", record["head_start"], record["head_end"], record["tail_start"], record["tail_end"])
    if record.get("kind") == "doc":
        return ("doc",)
    return ("span", record["start"], record["end"])


def predicted_items(doc: Doc, task: str) -> dict[Key, str]:
    """Key -> predicted label of the component ``task`` on ``doc`` (unclassified items left out)."""
    records = doc._.epee_annotations if Doc.has_extension("epee_annotations") else None
    return {record_key(r): r["label"] for r in records or [] if r["task"] == task and r.get("label") is not None}


def gold_items(doc: Doc, task: str) -> dict[Key, str]:
    """Key -> gold label: spans of ``doc.spans[task]`` and gold records of ``task``."""
    gold = {("span", s.start_char, s.end_char): s.label_ for s in doc.spans.get(task, [])} if task in doc.spans else {}
    gold.update(predicted_items(doc, task))  # gold records have the same form as predicted ones
    return gold


def score_weights(name: str) -> dict[str, float]:
    """A factory's ``default_score_weights``: F counts, the rest is reported.

    Keys carry the component name, as its scores do; spaCy keys factory weights by the factory
    name (as spancat's ``spans_sc_f``), so they match a component added under its factory's name.
    A component under another name sets ``[training.score_weights]`` itself.
    """
    return {f"{name}_f": 1.0, f"{name}_p": 0.0, f"{name}_r": 0.0, f"{name}_acc": 0.0}


def score_component(examples: Iterable[Any], task: str, labels: Sequence[str], none_label: str,
                    doc_level: bool = False) -> dict[str, Any]:
    """Scores of one component over ``examples`` (see the module docstring)."""
    examples = list(examples)
    overall, per_label = PRFScore(), {label: PRFScore() for label in labels if label != none_label}
    right = total = 0
    for example in examples:
        gold = gold_items(example.reference, task)
        predicted = predicted_items(example.predicted, task)
        total += len(gold)
        right += sum(predicted.get(key) == label for key, label in gold.items())
        positive_gold = {(k, v) for k, v in gold.items() if v != none_label}
        positive_predicted = {(k, v) for k, v in predicted.items() if v != none_label}
        overall.score_set(positive_predicted, positive_gold)
        for label, prf in per_label.items():
            prf.score_set({p for p in positive_predicted if p[1] == label}, {g for g in positive_gold if g[1] == label})
    scores: dict[str, Any] = {
        f"{task}_acc": right / total if total else None,
        f"{task}_p": overall.precision if total or overall.fp else None,
        f"{task}_r": overall.recall if total else None,
        f"{task}_f": overall.fscore if total or overall.fp else None,
        f"{task}_f_per_type": {label: prf.to_dict() for label, prf in per_label.items()},
    }
    if doc_level and any(example.reference.cats for example in examples):
        scores.update(Scorer.score_cats(examples, "cats", labels=list(labels), multi_label=False))
    return scores
