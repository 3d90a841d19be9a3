"""glue_metrics equals the scikit-learn / scipy reference; headline metrics; majority baseline.

    pytest tests/test_glue_metrics.py
"""
import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from leankd.data.glue import TASKS, GlueSplit
from leankd.errors import DataError
from leankd.tasks.metrics import glue_metrics, headline_metric, majority_baseline

LABELS = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], dtype=np.int64)
PREDS = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 0], dtype=np.int64)
NLI_LABELS = np.array([0, 1, 2, 2, 1, 0, 1, 2, 0, 1], dtype=np.int64)
NLI_PREDS = np.array([0, 1, 1, 2, 1, 2, 1, 2, 0, 0], dtype=np.int64)
SCORES = np.array([4.8, 0.2, 3.1, 2.5, 1.0, 3.9, 0.6, 2.2], dtype=np.float32)
SCORE_PREDS = np.array([4.1, 0.9, 2.0, 2.9, 1.4, 4.4, 0.1, 1.7], dtype=np.float32)


def test_mrpc_qqp_match_sklearn():
    for task in ("mrpc", "qqp"):
        out = glue_metrics(task, PREDS, LABELS)
        assert set(out) == {"accuracy", "f1", "macro_f1"}
        assert out["accuracy"] == pytest.approx(accuracy_score(LABELS, PREDS)) == pytest.approx(8 / 12)
        assert out["f1"] == pytest.approx(f1_score(LABELS, PREDS))
        assert out["macro_f1"] == pytest.approx(f1_score(LABELS, PREDS, average="macro"))


def test_cola_matthews_matches_sklearn():
    out = glue_metrics("cola", PREDS, LABELS)
    assert set(out) == {"accuracy", "matthews", "macro_f1"}
    assert out["matthews"] == pytest.approx(matthews_corrcoef(LABELS, PREDS))


@pytest.mark.parametrize("task", ["sst2", "rte", "qnli", "wnli"])
def test_binary_accuracy_tasks(task):
    out = glue_metrics(task, PREDS, LABELS)
    assert set(out) == {"accuracy", "macro_f1"}
    assert out["accuracy"] == pytest.approx(accuracy_score(LABELS, PREDS))


def test_mnli_three_classes():
    out = glue_metrics("mnli", NLI_PREDS, NLI_LABELS)
    assert out["accuracy"] == pytest.approx(accuracy_score(NLI_LABELS, NLI_PREDS)) == pytest.approx(0.7)
    assert out["macro_f1"] == pytest.approx(f1_score(NLI_LABELS, NLI_PREDS, average="macro"))


def test_stsb_matches_scipy():
    out = glue_metrics("stsb", SCORE_PREDS, SCORES)
    assert set(out) == {"pearson", "spearman"}
    assert out["pearson"] == pytest.approx(pearsonr(SCORE_PREDS, SCORES).statistic)
    assert out["spearman"] == pytest.approx(spearmanr(SCORE_PREDS, SCORES).statistic)
    constant = glue_metrics("stsb", np.full(8, 2.5, dtype=np.float32), SCORES)
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="argmax"):
        glue_metrics("sst2", np.zeros((12, 2)), LABELS)


@pytest.mark.parametrize("task,headline", [
    ("cola", "matthews"), ("stsb", "pearson"), ("mrpc", "f1"), ("qqp", "f1"), ("sst2", "accuracy"),
    ("mnli", "accuracy"), ("qnli", "accuracy"), ("rte", "accuracy"), ("wnli", "accuracy"), ("STS-B", "pearson"),
])
def test_headline_metric(task, headline):
    assert headline_metric(task) == headline


def test_headline_is_an_official_metric():
    for spec in TASKS.values():
        assert spec.headline in spec.metrics
    with pytest.raises(DataError, match="did you mean 'cola'"):
        headline_metric("coal")


def _split(task, split, labels):
    labels = np.asarray(labels)
    n = len(labels)
    return GlueSplit(task, split, ["a"] * n, None, labels, TASKS[task].label_names)


def test_majority_baseline_classification():
    train = _split("mrpc", "train", np.array([1, 1, 0, 1, 0], dtype=np.int64))  # majority: 1
    dev = _split("mrpc", "dev", np.array([1, 0, 0, 1], dtype=np.int64))
    out = majority_baseline(train, dev)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(f1_score([1, 0, 0, 1], [1, 1, 1, 1]))  # 2/3
    train0 = _split("cola", "train", np.array([0, 0, 1], dtype=np.int64))
    out = majority_baseline(train0, _split("cola", "dev", np.array([0, 1, 1, 1], dtype=np.int64)))
    assert out["accuracy"] == pytest.approx(0.25) and out["matthews"] == 0.0


def test_majority_baseline_stsb_is_nan():
    train = _split("stsb", "train", np.array([1.0, 2.0, 4.5], dtype=np.float32))
    dev = _split("stsb", "dev", np.array([0.5, 3.0, 4.0], dtype=np.float32))
    out = majority_baseline(train, dev)
    assert math.isnan(out["pearson"]) and math.isnan(out["spearman"])


def test_majority_baseline_needs_labels():
    train = _split("rte", "train", np.array([0, 1, 0], dtype=np.int64))
    test = GlueSplit("rte", "test", ["a"], None, None, TASKS["rte"].label_names)
    with pytest.raises(DataError, match="labelled"):
        majority_baseline(train, test)


def test_chance_level_and_min_metric_name_what_is_wrong():
    from leankd.tasks.metrics import below_min, chance_level
    labels = np.array([0, 1, 1, 0])
    assert chance_level(np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9], [0.3, 0.1]]), labels, False) is None
    assert chance_level(np.array([[0.0, 1.0]] * 4), labels, False) == "it predicts class 1 for all 4 eval samples"
    assert chance_level(np.array([[0.0, 1.0]] * 4), np.ones(4), False) is None  # one class in the labels too
    assert "not finite" in chance_level(np.array([[np.nan, 1.0]] * 4), labels, False)
    assert chance_level(np.full(4, 2.5), np.arange(4.0), True) == "it predicts the same value for all 4 eval samples"
    assert chance_level(np.arange(4.0), np.arange(4.0), True) is None
    assert below_min({"accuracy": 0.6, "macro_f1": 0.9}, 0.7) == "its accuracy 0.6000 is below teacher.min_metric 0.7"
    assert below_min({"accuracy": 0.8}, 0.7) is None and below_min({"accuracy": 0.1}, None) is None
    assert below_min({"pearson": float("nan")}, 0.1) is not None  # an undefined metric never passes a minimum
