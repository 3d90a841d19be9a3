"""Data parallel on CPU (gloo): the same experiment in one process and under `torchrun --nproc_per_node 2`, with
the same global batch (train.batch_size), on a real CIFAR-10 slice. Rank 0 alone writes the rows, the models and
the report; the teacher cache is built once, its samples split over the two ranks; the online teacher (kd_online)
is sharded over them with FSDP (teacher.shard, no effect in one process).

Tolerance, stated: FLOPs are equal (each rank counts its shard; the sum is the one-process count); test accuracy
within 0.05 and each epoch's mean training loss within 5% of the one-process run's. They are not bit-identical:
BatchNorm normalises each rank's half batch by its own statistics, and float sums run in another order.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from leankd.data.cifar10 import VisionLoader
from leankd.data.text import TextLoader
from leankd.errors import ConfigError
from leankd.results.store import ResultsStore

from conftest import REPO

CONFIG = "tests/configs/ddp-cifar10.yaml"
ACCURACY_TOL, LOSS_RTOL = 0.05, 0.05


def _run(cmd: list[str], data_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEANKD_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    _run([sys.executable, "-m", "leankd.cli", "run", CONFIG, "--out", str(one)], data_dir)
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "leankd.cli", "run", CONFIG, "--out", str(two)], data_dir)
    rows = {out: {r["arm"]: r for r in ResultsStore(out / "results.db").rows("ddp-cifar10")} for out in (one, two)}
    return rows[one], rows[two], two, proc


def test_two_processes_write_each_row_once(runs):
    _, rows, out, proc = runs
    all_rows = ResultsStore(out / "results.db").rows("ddp-cifar10")
    assert sorted(r["arm"] for r in all_rows) == ["kd", "kd_online", "plain", "teacher"]  # one per job, not per rank
    for row in all_rows:
        assert row["extra"]["world_size"] == 2
        assert len(row["extra"]["ranks"]["train_s"]) == 2 and len(row["extra"]["rank_peaks_mb"]) == 2
        assert row["peak_mem_mb"] == max(row["extra"]["rank_peaks_mb"])
        assert "2 data parallel processes" in row["sources"]["train_flops"]
        assert "slowest of 2" in row["sources"]["train_s"]
    caches = [p for p in (out / "cache" / "teacher").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(caches) == 1
    assert rows["kd"]["extra"]["cache"]["made_for"] == "ddp-cifar10" and rows["kd"]["cache_share_s"] > 0
    assert proc.stdout.count("# leankd report") == 1  # rank 0 alone prints (and writes) the report
    assert len(list((out / "students").rglob("*.safetensors"))) == 3
    assert rows["kd_online"]["extra"]["teacher_sharded"] == "FSDP fully_shard over 2 ranks"
    assert "teacher_sharded" not in rows["kd"]["extra"]  # cached: no teacher in training


def test_two_processes_match_one_process(runs):
    single, double, _, _ = runs
    for arm in ("teacher", "plain", "kd", "kd_online"):
        a, b = single[arm], double[arm]
        assert a["extra"]["world_size"] == 1
        assert b["train_flops"] == a["train_flops"] and b["total_flops"] == a["total_flops"]
        assert abs(b["metrics"]["accuracy"] - a["metrics"]["accuracy"]) <= ACCURACY_TOL, (arm, a["metrics"],
                                                                                             b["metrics"])
        np.testing.assert_allclose(b["extra"]["epoch_loss"], a["extra"]["epoch_loss"], rtol=LOSS_RTOL)
    assert double["plain"]["metrics"]["accuracy"] > 0.13  # it learned (10 classes: chance is 0.1)


def test_shards_partition_every_global_batch(data_dir):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (300, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 300)
    whole = VisionLoader(images, labels, 64, seed=3, augment=True, shuffle=True)
    ranks = [VisionLoader(images, labels, 64, seed=3, augment=True, shuffle=True).shard(r, 2) for r in range(2)]
    for (x, _, key), *parts in zip(whole.keyed_epoch(1), *(r.keyed_epoch(1) for r in ranks)):
        assert sorted(np.concatenate([p[2]["index"] for p in parts])) == sorted(key["index"])
        for p in parts:  # the same augmented sample as in one process
            pos = np.searchsorted(key["index"], p[2]["index"], sorter=np.argsort(key["index"]))
            np.testing.assert_array_equal(p[0].numpy(), x[np.argsort(key["index"])[pos]].numpy())
    assert sum(r.samples_per_shape(2)[(3, 32, 32)] for r in ranks) == whole.samples_per_shape(2)[(3, 32, 32)]
    assert sum(r.samples_per_shape(1, steps=3)[(3, 32, 32)] for r in ranks) == 3 * 64
    enc = {"input_ids": [np.arange(1, 2 + i % 9) for i in range(96)], "token_type_ids": [np.zeros(1 + i % 9 + 1)
                                                                                       for i in range(96)]}
    text = [TextLoader(enc, np.zeros(96), 16, seed=0, shuffle=True, bucket=True).shard(r, 2) for r in range(2)]
    whole_t = TextLoader(enc, np.zeros(96), 16, seed=0, shuffle=True, bucket=True)
    assert sum(sum(n for n in t.samples_per_shape(1).values()) for t in text) == 96
    assert len(text[0]) == len(whole_t)


def test_a_batch_that_does_not_split_is_a_clear_error():
    images, labels = np.zeros((300, 3, 32, 32), np.uint8), np.zeros(300, np.int64)
    with pytest.raises(ConfigError, match="batch_size=63 does not split evenly over 2 processes"):
        VisionLoader(images, labels, 63).shard(0, 2)
    with pytest.raises(ConfigError, match="last batch of 257 training samples holds 1"):
        VisionLoader(images[:257], labels[:257], 64).shard(0, 2)
