"""Task metrics from scikit-learn, on the final model's predictions (no best-epoch picking)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """logits (N, C), labels (N,) -> accuracy and macro-F1 in [0, 1]."""
    pred = logits.argmax(-1)
    return {"accuracy": float(accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, average="macro"))}


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Top-1 agreement of two models on the same inputs, in [0, 1]."""
    return float((logits_a.argmax(-1) == logits_b.argmax(-1)).mean())
