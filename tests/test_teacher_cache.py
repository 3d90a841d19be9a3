"""The teacher cache in training: cached logits are exactly the online teacher's on the student's own inputs,
views are a pure function that covers every view before repeating, and the build is charged as a share."""
import hashlib
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from leankd.config import load_config
from leankd.data import randomness as rnd
from leankd.data.cifar10 import VisionLoader, cifar10_splits
from leankd.distill.cache import TeacherCache
from leankd.experiment import run_experiment
from leankd.jobs.teacher_cache import CachedLogits, _autocast, _fill
from leankd.models import create_model

from conftest import REPO

CPU = torch.device("cpu")


def _loader(data_dir, views, seed=0, n=200):
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", [f"data.train_limit={n}"])
    images, labels = cifar10_splits(data_dir, cfg.data)["train"]
    return VisionLoader(images, labels, batch_size=64, seed=seed, augment=True, shuffle=True, views=views)


def test_cached_logits_equal_the_online_teacher_on_every_training_batch(tmp_path, data_dir):
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval()
    views, build = 3, _loader(data_dir, views=3)
    job = SimpleNamespace(teacher=teacher, teacher_autocast=_autocast("fp32", CPU), teacher_precision="fp32",
                          device=CPU, cfg=SimpleNamespace(name="exp"))
    cache = TeacherCache(tmp_path, {"test": 1})
    manifest = cache.build(build.num_samples, views, {"logits": ((10,), "float32")}, _fill(job, build, views, 80))
    assert manifest["info"]["seconds"] > 0 and manifest["info"]["flops"] > 0
    cached = CachedLogits(cache.reader(), CPU)
    for seed in (0, 1):  # two students, each reading its own views
        loader = _loader(data_dir, views=3, seed=seed)
        for epoch in range(views):
            for x, _, key in loader.keyed_epoch(epoch):
                with torch.inference_mode():
                    online = teacher(x)
                torch.testing.assert_close(cached(key), online, rtol=1e-5, atol=1e-5)


def test_views_are_a_pure_function_covering_every_view_before_repeating():
    idx = np.arange(1000)
    for views in (1, 2, 5):
        seen = np.stack([rnd.view_of(3, e, idx, views) for e in range(views)])
        assert (np.sort(seen, axis=0) == np.arange(views)[:, None]).all()  # each sample: every view once
        assert np.array_equal(rnd.view_of(3, views, idx, views), seen[0])  # then the cycle repeats
        assert np.array_equal(rnd.view_of(3, 1, idx[::-1], views), seen[1 % views][::-1])  # order-free
    assert not np.array_equal(rnd.view_of(3, 0, idx, 5), rnd.view_of(4, 0, idx, 5))  # seeds differ


def test_augmented_view_is_bit_identical_across_processes(data_dir):
    code = ("import sys, hashlib, numpy as np; from test_teacher_cache import _loader; from pathlib import Path; "
            "x = _loader(Path(sys.argv[1]), views=3).inputs(np.arange(50, 90), 2); "
            "print(hashlib.sha256(x.numpy().tobytes()).hexdigest())")
    out = [subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True,
                          cwd=REPO / "tests", check=True).stdout.strip() for _ in range(2)]
    here = hashlib.sha256(_loader(data_dir, views=3).inputs(np.arange(50, 90), 2).numpy().tobytes()).hexdigest()
    assert out == [here, here]


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("tests/configs/tiny-cifar10.yaml", [
        "name=cached", "data.train_limit=256", "data.test_limit=128", "train.epochs=2", "seeds=[0,1]",
        "arms={plain: {method: plain}, online: {method: kd, cache: off}, kd: {method: kd}, "
        "kd2: {method: kd, alpha: 0.5}}", "metering.isolate_arms=false"])
    return run_experiment(cfg, data_dir, out), out


def test_cached_arm_trains_exactly_like_the_online_arm(cached_run):
    rows, _ = cached_run
    by = {(r["arm"], r["seed"]): r for r in rows}
    for seed in (0, 1):
        online, cached = by[("online", seed)], by[("kd", seed)]
        assert online["extra"]["teacher_source"].startswith("online") and cached["extra"]["teacher_source"].startswith(
            "cache")
        np.testing.assert_allclose(cached["extra"]["epoch_loss"], online["extra"]["epoch_loss"], rtol=1e-5)
        assert cached["metrics"] == online["metrics"]
        assert cached["train_flops"] < online["train_flops"]  # no teacher forwards in the cached loop


def test_cache_build_is_charged_as_a_share_of_its_users(cached_run):
    rows, out = cached_run
    cached = [r for r in rows if r["arm"] in ("kd", "kd2")]
    build = cached[0]["extra"]["cache"]
    assert len(cached) == 4 and build["users"] == 4 and build["made_for"] == "cached"
    for r in cached:
        assert r["cache_share_s"] == pytest.approx(build["build_s"] / 4)
        assert r["total_s"] == r["train_s"] + r["cache_share_s"] + r["ranking_share_s"]
        assert r["cache_share_flops"] == build["build_flops"] // 4
        assert r["total_flops"] == r["train_flops"] + r["cache_share_flops"]
        assert "/ 4 job(s) of this experiment" in r["sources"]["cache_share_s"]
    online = [r for r in rows if r["arm"] == "online"]
    assert all(r["cache_share_s"] == 0 and r["teacher_s"] > 0 for r in online)
    assert len({r["extra"]["cache"]["path"] for r in cached}) == 1  # one cache shared by every cached job


def test_reduced_precision_teacher_fidelity_is_measured_against_its_fp32_self(data_dir):
    from leankd.jobs.teacher_cache import _autocast, fidelity

    torch.manual_seed(0)
    teacher = create_model("resnet20", 10).eval()
    test = cifar10_splits(data_dir, load_config(REPO / "tests/configs/tiny-cifar10.yaml").data)["test"]
    loader = VisionLoader(*test, batch_size=128)  # the tiny config's 256 test images
    same = fidelity(teacher, teacher, _autocast("fp32", CPU), loader, CPU)
    assert same["agreement"] == 1.0 and same["mean_kl"] == 0.0 and same["samples"] == 256
    bf16 = fidelity(teacher, teacher, _autocast("bf16", CPU), loader, CPU)
    assert bf16["mean_kl"] > 0 and bf16["agreement"] > 0.8  # bf16 rounds: close to, not equal to, fp32


def test_teacher_precision_is_not_part_of_the_stored_teachers_identity():
    from leankd.experiment.teachers import teacher_key

    cfg = load_config(REPO / "tests/configs/tiny-cifar10.yaml")
    other = load_config(REPO / "tests/configs/tiny-cifar10.yaml", ["teacher.precision=bf16"])
    assert teacher_key(cfg, ["f"]) == teacher_key(other, ["f"])  # same weights: not trained twice
    assert teacher_key(cfg, ["f"]) != teacher_key(cfg, ["g"])  # other data: another teacher
