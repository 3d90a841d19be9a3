"""Text on the same spine: students from teacher layers, FLOPs with attention, bucketing, end to end."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from leankd.data.text import TextLoader
from leankd.metering.flops import count_flops
from leankd.models.text import build_text_model, student_from_teacher
from leankd.results.store import ResultsStore

from conftest import REPO
from test_end_to_end import LEDGER, leankd


def test_student_from_teacher_layers_has_teacher_weights():
    torch.manual_seed(0)
    teacher = build_text_model("minilm-l6", 2)  # the offline pretrained 6-layer checkpoint
    student = student_from_teacher(teacher, [1, 3, 5])
    assert len(student.bert.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    for j, i in enumerate([1, 3, 5]):
        s, t = student.bert.encoder.layer[j].state_dict(), teacher.bert.encoder.layer[i].state_dict()
        assert all(torch.equal(s[k], t[k]) for k in t)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert len(teacher.bert.encoder.layer) == 6  # the teacher is left whole
    assert student.bert.encoder.layer[0] is not teacher.bert.encoder.layer[1]  # a copy, not shared
    with pytest.raises(ValueError, match="0-based indices"):
        student_from_teacher(teacher, [6])


def test_bert_flops_with_sdpa_equal_eager_and_include_attention():
    torch.manual_seed(0)
    sdpa = build_text_model("bert-tiny", 2, attn_implementation="sdpa").eval()
    eager = build_text_model("bert-tiny", 2, attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = torch.randint(1000, 2000, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, 30:] = 0
    with torch.no_grad():
        f_sdpa = count_flops(lambda: sdpa(input_ids=ids, attention_mask=mask), sdpa)
        f_eager = count_flops(lambda: eager(input_ids=ids, attention_mask=mask), eager)
    assert f_sdpa == f_eager
    # attention matmuls: 2 layers x (QK^T + PV) x 2 FLOP x B x L x L x hidden
    attention = 2 * 2 * 2 * 3 * 40 * 40 * 128
    linear_only = f_eager - attention
    assert linear_only > 0 and f_sdpa > linear_only


def test_bucketing_cuts_padding_and_is_a_pure_function():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 2000)
    enc = {"input_ids": [np.ones(n, np.int32) for n in lengths],
           "token_type_ids": [np.zeros(n, np.int8) for n in lengths]}
    plain = TextLoader(enc, np.zeros(2000), 32, seed=0, shuffle=True, bucket=False)
    bucketed = TextLoader(enc, np.zeros(2000), 32, seed=0, shuffle=True, bucket=True)
    tokens = lambda loader: sum(len(i) * loader.lengths[i].max() for i in loader.batches(0))
    assert tokens(bucketed) < 0.7 * tokens(plain)
    b1, b2 = bucketed.batches(1), bucketed.batches(1)
    assert all(np.array_equal(a, b) for a, b in zip(b1, b2))
    assert sorted(np.concatenate(b1).tolist()) == list(range(2000))
    assert not all(np.array_equal(a, b) for a, b in zip(b1, bucketed.batches(2)))
    counts = bucketed.samples_per_shape(2)
    assert sum(counts.values()) == 4000


def _check_text_rows(rows, task, isolated):
    assert sorted(r["arm"] for r in rows) == ["kd", "plain", "teacher"]
    for r in rows:
        for field in LEDGER:
            assert r[field] is not None or (field == "peak_mem_mb" and not isolated), (r["arm"], field)
        assert r["task"] == f"glue-{task}" and r["split"] == "dev" and r["train_flops"] > 0
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["kd"]["extra"]["layers"] == [1, 3] and by_arm["kd"]["teacher_s"] > 0
    assert by_arm["kd"]["train_flops"] > by_arm["plain"]["train_flops"]
    headline = {"sst2": "accuracy", "stsb": "pearson", "mrpc": "f1"}[task]
    assert headline in by_arm["kd"]["metrics"]


def test_text_end_to_end_cli_sst2(tmp_path, data_dir):
    leankd("run", "tests/configs/tiny-sst2.yaml", "--out", str(tmp_path), data_dir=data_dir)
    _check_text_rows(ResultsStore(tmp_path / "results.db").rows("tiny-sst2"), "sst2", isolated=True)
    # the saved student is a Hugging Face folder that transformers alone can load
    folder = tmp_path / "students" / "tiny-sst2" / "kd-seed0"
    code = ("import sys; from transformers import AutoModelForSequenceClassification as A, AutoTokenizer as T; "
            "m = A.from_pretrained(sys.argv[1]); t = T.from_pretrained(sys.argv[1]); "
            "print(m.config.num_hidden_layers, m(**t(['a fine film'], return_tensors='pt')).logits.shape[-1])")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["2", "2"], out.stderr[-2000:]
    text = leankd("eval", str(folder), data_dir=data_dir).stdout
    assert "glue-sst2 dev (96 samples" in text


@pytest.mark.parametrize("task", ["stsb", "mrpc"])  # a regression task and a sentence-pair task
def test_text_end_to_end_regression_and_pairs(tmp_path, data_dir, task):
    from leankd.config import load_config
    from leankd.experiment import run_experiment

    arms = ["arms={plain: {method: plain}, kd: {method: kd, alpha: 0.5}}"] if task == "stsb" else []
    cfg = load_config("tests/configs/tiny-sst2.yaml", [f"data.task={task}", f"name=tiny-{task}",
                                                       "metering.isolate_arms=false", *arms])
    run_experiment(cfg, data_dir, tmp_path)  # in-process: faster; peak memory then reads "unavailable"
    rows = ResultsStore(tmp_path / "results.db").rows(f"tiny-{task}")
    _check_text_rows(rows, task, isolated=False)
    if task == "stsb":
        assert rows[1]["params"] == rows[2]["params"] and "agreement" not in rows[2]["metrics"]
        assert rows[2]["extra"]["arm_config"]["temperature"] is None  # kd is an MSE there: no temperature used


def test_mnli_reports_matched_and_mismatched(tmp_path):
    """MNLI is absent here, so a tiny stand-in with the official file names and columns is written."""
    from leankd.config import load_config
    from leankd.experiment import run_experiment

    words = ["good", "bad", "a cat", "the dog", "it rains", "nobody came"]
    labels = ["contradiction", "entailment", "neutral"]
    folder = tmp_path / "data" / "glue" / "MNLI"
    folder.mkdir(parents=True)
    for split in ("train", "dev_matched", "dev_mismatched"):
        lines = ["index\tsentence1\tsentence2\tgold_label"]
        lines += [f"{i}\t{words[i % 6]}\t{words[(i * 5) % 6]}\t{labels[i % 3]}" for i in range(24)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    cfg = load_config("tests/configs/tiny-sst2.yaml", [
        "data.task=mnli", "name=tiny-mnli", "arms={plain: {method: plain}}", "metering.isolate_arms=false",
        "student.model=bert-tiny", "student.layers=null", "teacher.model=bert-tiny"])
    rows = run_experiment(cfg, tmp_path / "data", tmp_path / "runs")
    for row in rows:
        assert {"accuracy", "accuracy_dev_mismatched", "macro_f1_dev_mismatched"} <= set(row["metrics"])
