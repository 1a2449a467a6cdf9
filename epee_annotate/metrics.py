"""Classification metrics over label ids (lists, numpy arrays or tensors).

``micro_f1_positive`` is the standard DDI 2013 score: micro-averaged F1 over every class
except the negative one, so predicting "none" for a true interaction is a false negative,
predicting a wrong interaction type is both a false positive and a false negative.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _ids(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    true, pred = _ids(y_true), _ids(y_pred)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} items but y_pred has {pred.size}")
    return true, pred


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of exact matches (0.0 for no items)."""
    true, pred = _pair(y_true, y_pred)
    return float((true == pred).mean()) if true.size else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def per_class_f1(y_true: Any, y_pred: Any, num_labels: int | None = None) -> list[float]:
    """F1 of each class id 0..K-1."""
    true, pred = _pair(y_true, y_pred)
    k = num_labels if num_labels is not None else int(max(true.max(initial=-1), pred.max(initial=-1)) + 1)
    return [
        _f1(int(((pred == c) & (true == c)).sum()), int(((pred == c) & (true != c)).sum()),
            int(((pred != c) & (true == c)).sum()))
        for c in range(k)
    ]


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean F1 over ``labels`` (default: classes present in y_true or y_pred, as scikit-learn)."""
    true, pred = _pair(y_true, y_pred)
    classes = sorted(set(true.tolist()) | set(pred.tolist())) if labels is None else list(labels)
    if not classes:
        return 0.0
    scores = per_class_f1(true, pred, max(classes) + 1)
    return float(np.mean([scores[c] for c in classes]))


def micro_f1_positive(y_true: Any, y_pred: Any, negative: int = 0) -> float:
    """Micro-F1 over the positive classes (every class but ``negative``): the DDI 2013 metric."""
    true, pred = _pair(y_true, y_pred)
    tp = int(((pred == true) & (true != negative)).sum())
    fp = int(((pred != negative) & (pred != true)).sum())
    fn = int(((true != negative) & (pred != true)).sum())
    return _f1(tp, fp, fn)


def classification_metrics(y_true: Any, y_pred: Any, negative: int | None = None,
                           num_labels: int | None = None) -> dict[str, float]:
    """accuracy, macro_f1 and (when a negative class id is given) micro_f1_positive.

    With ``num_labels`` macro-F1 averages over the fixed label set 0..K-1 (the model's labels);
    without it, over the classes present.
    """
    labels = range(num_labels) if num_labels is not None else None
    scores = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, labels)}
    if negative is not None:
        scores["micro_f1_positive"] = micro_f1_positive(y_true, y_pred, negative)
    return scores
