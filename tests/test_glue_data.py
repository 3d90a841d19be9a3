"""GLUE TSV parsing against the official counts in the data README (real files from LEANKD_DATA_DIR).

    pytest tests/test_glue_data.py     # parses every available GLUE file once, about 1 s
"""
import sys
from functools import lru_cache

import numpy as np
import pytest

from leankd.data.glue import TASKS, load_glue
from leankd.errors import DataError
from leankd.tasks.metrics import majority_baseline

# Official GLUE split sizes (the same as the Hugging Face `glue` configs).
ROW_COUNTS = [
    ("sst2", "train", 67_349), ("sst2", "dev", 872), ("sst2", "test", 1_821),
    ("mrpc", "train", 3_668), ("mrpc", "dev", 408), ("mrpc", "test", 1_725),
    ("rte", "train", 2_490), ("rte", "dev", 277), ("rte", "test", 3_000),
    ("cola", "train", 8_551), ("cola", "dev", 1_043), ("cola", "test", 1_063),
    ("stsb", "train", 5_749), ("stsb", "dev", 1_500), ("stsb", "test", 1_379),
    ("wnli", "train", 635), ("wnli", "dev", 71), ("wnli", "test", 146),
    ("qnli", "dev", 5_463), ("qnli", "test", 5_463),
    ("ax", "test", 1_104),
]

# Label counts from data README section 2, in class-id order (label_names order).
LABEL_COUNTS = [
    ("sst2", "train", [29_780, 37_569]), ("sst2", "dev", [428, 444]),
    ("cola", "train", [2_528, 6_023]), ("cola", "dev", [322, 721]),
    ("mrpc", "train", [1_194, 2_474]), ("mrpc", "dev", [129, 279]),
    ("rte", "train", [1_249, 1_241]), ("rte", "dev", [146, 131]),      # entailment, not_entailment
    ("qnli", "dev", [2_702, 2_761]),
    ("wnli", "train", [323, 312]), ("wnli", "dev", [40, 31]),
]


@pytest.fixture(scope="module")
def load(data_dir):
    return lru_cache(maxsize=None)(lambda task, split: load_glue(data_dir, task, split))


@pytest.mark.parametrize("task,split,n", ROW_COUNTS)
def test_row_counts(load, task, split, n):
    ds = load(task, split)
    assert len(ds) == n and len(ds.texts_a) == n
    assert (ds.texts_b is None) == (TASKS[task].text_b is None)
    if ds.texts_b is not None:
        assert len(ds.texts_b) == n
    unlabelled = split == "test"
    assert (ds.labels is None) == unlabelled
    if not unlabelled:
        assert len(ds.labels) == n
    assert all(ds.texts_a), f"{task} {split} has empty first sentences"


@pytest.mark.parametrize("task,split,counts", LABEL_COUNTS)
def test_label_counts(load, task, split, counts):
    ds = load(task, split)
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels, minlength=len(ds.label_names)).tolist() == counts


def test_label_names(load):
    assert load("rte", "train").label_names == ("entailment", "not_entailment")
    assert load("qnli", "dev").label_names == ("entailment", "not_entailment")
    assert TASKS["mnli"].label_names == ("contradiction", "entailment", "neutral")
    assert load("sst2", "dev").label_names == ("0", "1")
    assert TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")


def test_stsb_scores(load):
    train, dev = load("stsb", "train"), load("stsb", "dev")
    assert train.labels.dtype == np.float32 and train.label_names is None
    assert train.labels.mean() == pytest.approx(2.701, abs=5e-4)
    assert dev.labels.mean() == pytest.approx(2.364, abs=5e-4)
    assert train.labels.min() >= 0.0 and train.labels.max() <= 5.0
    assert train.texts_a[0] == "A plane is taking off." and train.texts_b[0] == "An air plane is taking off."


def test_quirks(load):
    # CoLA train/dev are header-less: the first row is data, and the sentence is column 4.
    assert load("cola", "train").texts_a[0].startswith("Our friends won't buy this analysis")
    assert load("cola", "test").texts_a[0] == "Bill whistled past the house."
    # MRPC starts with a BOM (else the 'Quality' column would not be found) and holds bare quotes.
    mrpc = load("mrpc", "dev")
    assert mrpc.labels[0] == 1 and mrpc.texts_b[0].startswith('" The foodservice pie business')
    assert load("mrpc", "test").texts_a[0].startswith("PCCW 's chief operating officer")
    ax = load("ax", "test")
    assert ax.texts_a[0] == "The cat sat on the mat." and ax.texts_b[0] == "The cat did not sit on the mat."


def test_majority_baseline_on_real_dev(load):
    # Majority class of train on dev: the well-known floor numbers.
    assert majority_baseline(load("rte", "train"), load("rte", "dev"))["accuracy"] == pytest.approx(146 / 277)
    assert majority_baseline(load("wnli", "train"), load("wnli", "dev"))["accuracy"] == pytest.approx(40 / 71)
    assert majority_baseline(load("cola", "train"), load("cola", "dev"))["matthews"] == 0.0


def test_qnli_train_is_evaluation_only(data_dir):
    with pytest.raises(DataError, match="QNLI is evaluation-only") as err:
        load_glue(data_dir, "qnli", "train")
    assert "QNLI/train.tsv" in str(err.value)


@pytest.mark.parametrize("task,missing", [("mnli", "MNLI/dev_matched.tsv"), ("qqp", "QQP/dev.tsv")])
def test_absent_task_names_file(data_dir, task, missing):
    split = TASKS[task].dev_splits[0]
    with pytest.raises(DataError, match="absent from the data directory") as err:
        load_glue(data_dir, task, split)
    assert missing in str(err.value) and "expected <data_dir>/glue/" in str(err.value)


def test_unknown_task_and_split(data_dir):
    with pytest.raises(DataError, match="did you mean 'sst2'"):
        load_glue(data_dir, "sst", "train")
    assert load_glue(data_dir, "STS-B", "dev").task == "stsb"  # folder spelling is accepted
    with pytest.raises(DataError, match="no split 'validation'.*train, dev, test"):
        load_glue(data_dir, "rte", "validation")


def test_malformed_row_names_file_and_line(tmp_path):
    path = tmp_path / "glue" / "RTE" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.tsv' line 3 has 3 tab-separated fields, expected 4"):
        load_glue(tmp_path, "rte", "dev")
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailed\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 has label 'entailed'"):
        load_glue(tmp_path, "rte", "dev")
    cola = tmp_path / "glue" / "CoLA" / "train.tsv"  # header-less: the bad row is on line 2
    cola.parent.mkdir(parents=True)
    cola.write_text("gj04\t1\t\tGood .\ngj04\t1\tBad .\n", encoding="utf-8")
    with pytest.raises(DataError, match="train.tsv' line 2 has 3"):
        load_glue(tmp_path, "cola", "train")


def test_empty_files_and_sentences_and_one_class_training_sets_are_refused(tmp_path):
    from leankd.data.files import check_classes

    cola = tmp_path / "glue" / "CoLA" / "train.tsv"  # header-less: no header line to report
    cola.parent.mkdir(parents=True)
    cola.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.tsv' holds no examples; expected one per line"):
        load_glue(tmp_path, "cola", "train")
    rte = tmp_path / "glue" / "RTE" / "dev.tsv"  # a pair task: the second sentence is checked too
    rte.parent.mkdir(parents=True)
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\t \tentailment\n")
    with pytest.raises(DataError, match=r"dev.tsv' line 3 has an empty 'sentence2'"):
        load_glue(tmp_path, "rte", "dev")
    with pytest.raises(DataError, match=r"every training target in 'f.tsv' is 2.5; a regression needs targets"):
        check_classes(np.full(4, 2.5, np.float32), "f.tsv", regression=True)
    check_classes(np.array([0, 1, 1]), "f.tsv")  # two classes: fine


def test_missing_file_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # any attempt to import the hub client would fail loudly
    with pytest.raises(DataError, match="SST-2/train.tsv' not found"):
        load_glue(tmp_path, "sst2", "train")
