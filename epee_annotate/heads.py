"""Exit heads: one small classifier after every transformer layer."""

from __future__ import annotations

import torch
from torch import nn


class ExitHead(nn.Module):
    """Dense + tanh + dropout + linear over the pooled features (the usual sequence-classification head)."""

    def __init__(self, in_features: int, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.dense(self.dropout(features)))
        return self.classifier(self.dropout(hidden))


def make_exit_heads(num_layers: int, in_features: int, hidden_size: int, num_labels: int, dropout: float = 0.1) -> nn.ModuleList:
    return nn.ModuleList(ExitHead(in_features, hidden_size, num_labels, dropout) for _ in range(num_layers))
