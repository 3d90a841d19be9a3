"""Task metrics, from scikit-learn and scipy, on the final model's predictions (no best-epoch picking).

    classification_metrics(logits.argmax(-1), labels)   # {'accuracy', 'macro_f1'}
    glue_metrics("mrpc", logits.argmax(-1), dev.labels)  # + the task's official metrics ('f1' here)
    agreement(student_logits, teacher_logits)            # top-1 agreement of two models

Every classification task gets `accuracy` and `macro_f1`; GLUE adds its official metrics (`TASKS[task].metrics`):
`f1` (binary, positive class 1) for MRPC/QQP, `matthews` for CoLA (and AX). STS-B gets `pearson` and
`spearman`; both are nan when either side is constant (the correlation is undefined). Values are fractions.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from leankd.data.glue import GlueSplit, get_task
from leankd.errors import DataError


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Class ids (N,) and labels (N,) -> accuracy and macro-F1 (over classes present in either)."""
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0.0))}


def chance_level(logits: np.ndarray, labels: np.ndarray | None, regression: bool) -> str | None:
    """Why a model's eval outputs are no better than a constant guess (chance level), or None: outputs that are
    not finite, one class for every sample while the labels hold several, or one value for every sample."""
    if not np.isfinite(logits).all():
        return "its outputs are not finite (nan or inf)"
    if regression:
        return f"it predicts the same value for all {len(logits)} eval samples" if np.ptp(logits) == 0 else None
    pred = logits.argmax(-1)
    if labels is not None and len(np.unique(labels)) > 1 and len(np.unique(pred)) == 1:
        return f"it predicts class {pred[0]} for all {len(pred)} eval samples"
    return None


def below_min(metrics: dict[str, float], min_metric: float | None) -> str | None:
    """Why `metrics` fail `min_metric` (compared with the first metric), or None."""
    if min_metric is None or not metrics:
        return None
    name, value = next(iter(metrics.items()))
    return f"its {name} {value:.4f} is below teacher.min_metric {min_metric}" if not value >= min_metric else None


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Top-1 agreement of two models on the same inputs, in [0, 1]."""
    return float((logits_a.argmax(-1) == logits_b.argmax(-1)).mean())


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
    base = classification_metrics(predictions, labels)
    out = {"accuracy": base["accuracy"]}
    if "f1" in spec.metrics:
        out["f1"] = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))
    if "matthews" in spec.metrics:
        out["matthews"] = float(matthews_corrcoef(labels, predictions))
    return {**out, "macro_f1": base["macro_f1"]}


def majority_baseline(train: GlueSplit, dev: GlueSplit) -> dict[str, float]:
    """glue_metrics of a constant prediction: the most frequent train label (ties: the lowest class id).
    For STS-B the constant is the train mean; a constant has no correlation, so pearson and spearman are
    nan (undefined), not 0.0."""
    if train.labels is None or dev.labels is None:
        raise DataError(f"data error: majority baseline needs labelled splits; got {train.task} "
                        f"{train.split} / {dev.split} with labels withheld")
    if get_task(train.task).is_regression:
        predictions = np.full(len(dev), train.labels.mean(), dtype=np.float32)
    else:
        predictions = np.full(len(dev), np.bincount(train.labels).argmax(), dtype=np.int64)
    return glue_metrics(dev.task, predictions, dev.labels)
