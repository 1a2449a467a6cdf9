"""The answer for one input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Prediction:
    """Label, exit layer and confidence for one input, as plain Python values (never tensors)."""

    label: str | None
    label_id: int | None
    exit_layer: int | None  # 1-based layer whose exit answered
    num_layers: int
    confidence: float | None  # max probability at the answering exit
    entropy: float | None  # normalized entropy at the answering exit, in [0, 1]
    probs: list[float] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    full_label: str | None = None  # the last exit's answer, when this input was audited
    rule: str | None = None  # the rule that answered without the model (no layer ran), e.g. a DDI negative rule

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, message: str, num_layers: int) -> "Prediction":
        return cls(None, None, None, num_layers, None, None, [], False, message)

    @classmethod
    def by_rule(cls, rule: str, label: str, label_id: int, num_layers: int) -> "Prediction":
        """An answer a rule gave before the model: no exit answered, so no layer, confidence or probabilities."""
        return cls(label, label_id, None, num_layers, None, None, [], False, None, None, rule)

    def to_dict(self) -> dict:
        return asdict(self)
