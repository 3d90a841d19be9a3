"""The device data path (issue 25): batches planned per epoch and gathered where the data lives give exactly the
views of leankd's earlier per-batch host path, on CPU bit for bit; the host-gathered and the resident paths agree;
a teacher cache read from device tables equals the memory-mapped reads; `data.on_device` states its memory check.
On a CUDA machine one more test checks that the training loop makes no host sync per step."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from leankd.data.cifar10 import load_cifar10
from leankd.data.images import VisionLoader
from leankd.data.placement import FRACTION, Placement, place
from leankd.data.text import TextLoader
from leankd.distill.cache import TeacherCache
from leankd.distill.targets import CachedTeacher

CPU = torch.device("cpu")
# sha256 of the batches leankd 483e226 (the per-batch host path, before issue 25) made from the same inputs:
# computed there with the loops of `_vision_digests` / `_text_digest` below, before the loader changed.
BEFORE = {"train": "58c8a50d6b329de13a2adc3e7f7ce3bfe948901fb7acfa02cba1c6e325f48d76",
          "eval": "7d1fac9510a60f291d8eae7044deace8a739a750a75bab85cd38cd5da5217e4e",
          "shard": "76c871cb0647ff16c159dd043cb317fb4940c9f92039f639fbba94365bb0ea22",
          "text": "9b1c5bb368c0500a7686c58dd550f04ad4ed79dfab450265c4887bb1e490566b"}


@pytest.fixture(scope="module")
def cifar(data_dir):
    x, y = load_cifar10(Path(data_dir), "train")
    return x[:700], y[:700]


def _host_gathered(loader):
    """The loader as on a GPU the set does not fit: batches gathered on the host, then put on the device."""
    loader.where = Placement(CPU, False, "test: host-gathered")
    return loader


def _vision_digests(x, y, prepare=lambda ld: ld) -> dict:
    out = {}
    h = hashlib.sha256()
    loader = prepare(VisionLoader(x, y, batch_size=128, seed=3, augment=True, shuffle=True, views=4, aug_seed=7))
    for epoch in (0, 5):
        for xb, yb, key in loader.keyed_epoch(epoch):
            for a in (xb.contiguous().numpy(), yb.numpy(), key["view"], key["index"]):
                h.update(a.tobytes())
    out["train"] = h.hexdigest()
    h = hashlib.sha256()
    for xb, yb in prepare(VisionLoader(x[:300], y[:300], batch_size=64)).epoch(0):
        h.update(xb.contiguous().numpy().tobytes())
        h.update(yb.numpy().tobytes())
    out["eval"] = h.hexdigest()
    h = hashlib.sha256()
    loader = prepare(VisionLoader(x, y, batch_size=128, seed=3, augment=True, shuffle=True, views=4, aug_seed=7))
    for xb, _, key in loader.shard(1, 2).keyed_epoch(2, 1):
        h.update(xb.contiguous().numpy().tobytes())
        h.update(key["index"].tobytes())
    out["shard"] = h.hexdigest()
    return out


def _text_data():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=500)
    enc = {"input_ids": [rng.integers(1, 30000, size=n).astype(np.int32) for n in lengths],
           "token_type_ids": [(np.arange(n) > n // 2).astype(np.int8) for n in lengths]}
    return enc, rng.integers(0, 2, size=500)


def _text_digest(prepare=lambda ld: ld) -> str:
    enc, labels = _text_data()
    h = hashlib.sha256()
    for bucket in (True, False):
        loader = prepare(TextLoader(enc, labels, batch_size=32, seed=4, shuffle=True, bucket=bucket))
        for e in (0, 3):
            for x, y, key in loader.keyed_epoch(e):
                for k in ("input_ids", "token_type_ids", "attention_mask"):
                    h.update(k.encode())
                    h.update(x[k].numpy().tobytes())
                h.update(y.numpy().tobytes())
                h.update(key["index"].tobytes())
    return h.hexdigest()


def test_cpu_views_are_bit_identical_to_the_per_batch_path_before(cifar):
    """Crops, flips, normalisation, shuffles, views, shards and resumed epochs: the same bytes as before."""
    got = _vision_digests(*cifar)
    assert got == {k: BEFORE[k] for k in ("train", "eval", "shard")}
    assert _text_digest() == BEFORE["text"]


def test_host_gathered_batches_equal_the_resident_ones(cifar):
    """The path taken when the set does not fit on the GPU (gather on the host, copy) makes the same batches."""
    assert _vision_digests(*cifar, prepare=_host_gathered) == {k: BEFORE[k] for k in ("train", "eval", "shard")}
    assert _text_digest(prepare=_host_gathered) == BEFORE["text"]


def test_keys_carry_the_batch_on_the_device(cifar):
    loader = VisionLoader(*cifar, batch_size=128, seed=1, augment=True, shuffle=True, views=3).shard(0, 2)
    for _, y, key in loader.keyed_epoch(1):
        index, view = key["on_device"]
        assert np.array_equal(index.numpy(), key["index"]) and np.array_equal(view.numpy(), key["view"])
        assert torch.equal(y, torch.from_numpy(cifar[1][key["index"]]))


def test_a_cache_read_from_device_tables_equals_the_memory_mapped_reads(tmp_path, cifar):
    rng = np.random.default_rng(0)
    n, views = len(cifar[1]), 3
    values = {"logits": rng.standard_normal((views, n, 10)).astype(np.float16),
              "at.layer1": rng.standard_normal((views, n, 8, 8)).astype(np.float32)}

    def fill(writer):
        for f, v in values.items():
            for view in range(views):
                writer.write(f, view, np.arange(n), v[view])
    cache = TeacherCache(tmp_path, {"test": "device"})
    cache.build(n, views, {"logits": ((10,), "float16"), "at.layer1": ((8, 8), "float32")}, fill, shard_size=256)
    mapped = CachedTeacher(cache.reader(), CPU).place(["logits", "at.layer1"], "auto")
    tables = CachedTeacher(cache.reader(), CPU).place(["logits", "at.layer1"], "on")
    assert not mapped.tables and set(tables.tables) == {"logits", "at.layer1"}
    assert "memory-mapped" in mapped.where.reason and "loaded" in tables.where.reason
    loader = VisionLoader(*cifar, batch_size=100, seed=2, augment=True, shuffle=True, views=views)
    for _, _, key in loader.keyed_epoch(4):
        a, b = mapped(key, layers=["layer1"]), tables(key, layers=["layer1"])
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["layer1"]["map"], b[1]["layer1"]["map"])
        want = torch.from_numpy(values["logits"][key["view"], key["index"]]).float()
        assert torch.equal(b[0], want)


def test_on_device_states_its_memory_check(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8_000_000_000, 80_000_000_000))
    fits = place("auto", gpu, int(FRACTION * 8e9) - 1, "training set")
    big = place("auto", gpu, int(FRACTION * 8e9) + 1, "training set")
    assert fits.resident and "on the device: 2.0 GB <= 25% of 8.0 GB free" in fits.reason
    assert not big.resident and "on the host: 2.0 GB > 25% of 8.0 GB free" in big.reason
    assert not place("off", gpu, 1, "training set").resident and place("on", gpu, 10**12, "x").resident
    cpu = place("auto", CPU, 10**12, "training set")
    assert cpu.resident and "host memory" in cpu.reason


def test_rows_record_where_the_data_lived(tmp_path, data_dir):
    from leankd.api import run_experiment
    from leankd.config import load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "tests/configs/tiny-cifar10.yaml", ["metering.isolate_arms=false", "seeds=[0]"])
    rows = run_experiment(cfg, data_dir, tmp_path)
    kd = next(r for r in rows if r["arm"] == "kd")
    placement = kd["extra"]["data_placement"]
    assert "training set" in placement[0] and "host memory" in placement[0]
    assert any("teacher cache" in p for p in placement[1:]) == (kd["cache_share_s"] > 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_loop_makes_no_host_sync_per_step(cifar):
    """Synchronising calls counted by CUDA's sync debug mode: 60 steps make no more than 20 steps do, but the two
    reads of each further 20-step window (the NaN flag at its first step, the window's mean loss at its last)."""
    from leankd.config import ArmConfig
    from leankd.distill.distiller import Distiller
    from leankd.models import create_model
    from leankd.precision import Precision
    from leankd.train import build_optimizer, build_scheduler, fit

    dev = torch.device("cuda")
    x, y = np.tile(cifar[0], (12, 1, 1, 1)), np.tile(cifar[1], 12)

    def syncs(steps: int) -> int:
        loader = VisionLoader(x[:steps * 64], y[:steps * 64], batch_size=64, augment=True, shuffle=True)
        loader.place(dev, "on")
        model = create_model("resnet8", 10).to(dev, memory_format=torch.channels_last)
        distiller = Distiller(model, None, ArmConfig(method="plain"))
        opt = build_optimizer(distiller, _optim())
        sched = build_scheduler(opt, _optim(), steps)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(distiller, loader, opt, sched, Precision.create("fp32", dev), epochs=1, device=dev)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    assert syncs(60) - syncs(20) <= 4  # two windows more, two reads each: none per step


def _optim():
    from leankd.config import OptimConfig

    return OptimConfig(epochs=1, batch_size=64, lr=0.05)
