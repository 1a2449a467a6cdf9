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

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, message: str, num_layers: int) -> "Prediction":
        return cls(None, None, None, num_layers, None, None, [], False, message)

    def to_dict(self) -> dict:
        return asdict(self)
