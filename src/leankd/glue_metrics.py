"""GLUE metrics from scikit-learn and scipy, on final predictions (no best-epoch picking).

    scores = glue_metrics("mrpc", logits.argmax(-1), dev.labels)   # {'f1', 'accuracy', 'macro_f1'}
    scores[headline_metric("mrpc")]                                # 'f1', the official headline

Classification predictions are class ids (the caller takes the argmax); STS-B predictions are float scores.
Every classification task gets `accuracy` and `macro_f1` besides its official metrics (`TASKS[task].metrics`):
`f1` (binary, positive class 1) for MRPC/QQP, `matthews` for CoLA (and AX, whose labels GLUE withholds).
STS-B gets `pearson` and `spearman`; both are nan when either side is constant (the correlation is undefined).
MNLI is scored once per dev split (dev_matched, dev_mismatched), each giving `accuracy`.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from leankd.data.glue import get_task


def headline_metric(task: str) -> str:
    """The official headline metric: cola -> matthews, stsb -> pearson, mrpc/qqp -> f1, others -> accuracy."""
    return get_task(task).headline


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """predictions (N,) class ids or float scores, labels (N,) -> metric name -> value (fractions, not %)."""
    spec = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"{spec.name}: predictions {predictions.shape} and labels {labels.shape} must both be (N,); "
                         "take the argmax of the logits before scoring")
    if spec.is_regression:
        x, y = predictions.astype(np.float64), labels.astype(np.float64)
        if np.ptp(x) == 0 or np.ptp(y) == 0:  # scipy would warn and return nan; say it once, here
            return {"pearson": float("nan"), "spearman": float("nan")}
        return {"pearson": float(pearsonr(x, y).statistic), "spearman": float(spearmanr(x, y).statistic)}
    out = {"accuracy": float(accuracy_score(labels, predictions))}
    if "f1" in spec.metrics:
        out["f1"] = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))
    if "matthews" in spec.metrics:
        out["matthews"] = float(matthews_corrcoef(labels, predictions))
    # macro over the classes present in labels or predictions, as leankd.metrics.classification_metrics
    out["macro_f1"] = float(f1_score(labels, predictions, average="macro", zero_division=0.0))
    return out
