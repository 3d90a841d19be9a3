"""The teacher cache in training: cached logits are the online teacher's on the student's own inputs (fp32 images
bit for bit; text and reduced precisions within a difference each build measures), views are a pure function that
covers every view before repeating, and the build is charged as a share."""
import hashlib
import itertools
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
from leankd.distill.losses import attention_map
from leankd.distill.targets import CachedTeacher
from leankd.experiment import run_experiment
from leankd.jobs.teacher_cache import _autocast, _fill
from leankd.models import create_model

from conftest import REPO

CPU = torch.device("cpu")


def _loader(data_dir, views, seed=0, n=200):
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", [f"data.train_limit={n}"])
    images, labels = cifar10_splits(data_dir, cfg.data)["train"]
    return VisionLoader(images, labels, batch_size=64, seed=seed, augment=True, shuffle=True, views=views)


def test_cached_targets_equal_the_online_teacher_on_every_training_batch(tmp_path, data_dir):
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval()
    views, build, layers = 3, _loader(data_dir, views=3), ["layer1.0", "layer3.0"]
    job = SimpleNamespace(teacher=teacher, teacher_autocast=_autocast("fp32", CPU), teacher_precision="fp32",
                          device=CPU, cfg=SimpleNamespace(name="exp"))
    cache = TeacherCache(tmp_path, {"test": 1})
    fields = {"logits": ((10,), "float32"), "at.layer1.0": ((32, 32), "float32"), "at.layer3.0": ((8, 8), "float32")}
    manifest = cache.build(build.num_samples, views, fields, _fill(job, build, views, 80, layers))
    assert manifest["info"]["seconds"] > 0 and manifest["info"]["flops"] > 0
    cached = CachedTeacher(cache.reader(), CPU)
    for seed in (0, 1):  # two students, each reading its own views
        loader = _loader(data_dir, views=3, seed=seed)
        for epoch in range(views):
            for x, _, key in loader.keyed_epoch(epoch):
                with torch.inference_mode():
                    online = teacher(x)
                    feats = _features(teacher, x, layers)
                logits, got = cached(key, layers)
                torch.testing.assert_close(logits, online, rtol=1e-5, atol=1e-5)
                for n in layers:
                    torch.testing.assert_close(got[n]["map"], attention_map(feats[n]), rtol=1e-5, atol=1e-6)
                assert cached(key, layers, logits=False)[0] is None


def _features(model, x, layers):
    from leankd.distill.taps import Taps

    with Taps(model, layers) as taps:
        model(x)
        return {n: f["out"] for n, f in taps.pop().items()}


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
        "kd2: {method: kd, alpha: 0.5}, at_online: {method: kd, pairs: skip, cache: off, "
        "feature_losses: {attention_transfer: 1000}}, at: {method: kd, pairs: skip, "
        "feature_losses: {attention_transfer: 1000}}, feat: {method: features, pairs: [1, 2], "
        "feature_losses: {attention_transfer: 1000}}, hint: {method: kd, pairs: skip, "
        "feature_losses: {hint_mse: 1}}}", "metering.isolate_arms=false"])
    return run_experiment(cfg, data_dir, out), out


def test_cached_arm_trains_exactly_like_the_online_arm(cached_run):
    rows, _ = cached_run
    by = {(r["arm"], r["seed"]): r for r in rows}
    for seed, (online_arm, cached_arm) in itertools.product((0, 1), [("online", "kd"), ("at_online", "at")]):
        online, cached = by[(online_arm, seed)], by[(cached_arm, seed)]
        assert online["extra"]["teacher_source"].startswith("online") and cached["extra"]["teacher_source"].startswith(
            "cache")
        np.testing.assert_allclose(cached["extra"]["epoch_loss"], online["extra"]["epoch_loss"], rtol=1e-5)
        assert cached["metrics"] == online["metrics"]
        assert cached["train_flops"] < online["train_flops"]  # no teacher forwards in the cached loop
        assert cached["teacher_s"] == cached["cache_share_s"] and online["cache_share_s"] == 0 < online["teacher_s"]
    assert by[("at", 0)]["extra"]["layer_map"] == by[("at_online", 0)]["extra"]["layer_map"]
    assert by[("feat", 0)]["extra"]["teacher_source"].startswith("cache")  # attention maps only, no logits read


def test_arms_whose_targets_are_not_cached_run_online_and_say_why(cached_run):
    rows, _ = cached_run
    hint = [r for r in rows if r["arm"] == "hint"]
    assert hint and all(r["extra"]["teacher_source"].startswith("online: hint_mse") and r["teacher_s"] > 0
                        and r["cache_share_s"] == 0 for r in hint)
    fields = next(r for r in rows if r["arm"] == "at")["extra"]["cache"]["fields"]
    assert fields == ["at.layer1.0", "at.layer2.0", "at.layer3.0", "logits"]  # skip on 3 -> 3 blocks: all of them


def test_cache_budget_keeps_arms_that_do_not_fit_online(data_dir, tmp_path):
    from leankd.experiment.plan import Plan
    from leankd.tasks import build_task

    arms = ("arms={kd: {method: kd}, at: {method: kd, pairs: [0], feature_losses: {attention_transfer: 1}}, "
            "at2: {method: kd, pairs: [2], feature_losses: {attention_transfer: 1}}}")
    # 512 samples x 1 view x float32: logits 20 KB, layer1.0 maps (32x32) 2.1 MB, layer3.0 maps (8x8) 131 KB
    cfg = load_config(REPO / "tests/configs/tiny-cifar10.yaml", [arms, "cache.max_gb=0.001", "seeds=[0,1]"])
    plan = Plan.make(cfg, data_dir, tmp_path, build_task(cfg, data_dir))
    assert plan.teacher_source("kd") == (True, "cache: auto, 4 jobs of this experiment share it")
    use, why = plan.teacher_source("at")
    assert not use and why == "online: with its targets the cache would take 0.00212 GB, over cache.max_gb 0.001"
    assert plan.teacher_source("at2")[0] and plan.cache_layout[1] == {"layer3.0": (8, 8)}  # only what fits


def test_cache_build_is_charged_as_a_share_of_its_users(cached_run):
    rows, out = cached_run
    cached = [r for r in rows if r["arm"] in ("kd", "kd2", "at", "feat")]
    build = cached[0]["extra"]["cache"]
    assert len(cached) == 8 and build["users"] == 8 and build["made_for"] == "cached"
    for r in cached:
        assert r["cache_share_s"] == pytest.approx(build["build_s"] / 8)
        assert r["total_s"] == r["train_s"] + r["cache_share_s"] + r["ranking_share_s"]
        assert r["cache_share_flops"] in (build["build_flops"] // 8, build["build_flops"] // 8 + 1)
        assert r["total_flops"] == r["train_flops"] + r["cache_share_flops"]
        assert "/ 8 job(s) of this experiment" in r["sources"]["cache_share_s"]
    assert sum(r["cache_share_flops"] for r in cached) == build["build_flops"]  # split exactly, nothing lost
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


def test_int8_teacher_counts_the_same_flops_and_records_its_fidelity(tmp_path, data_dir):
    """teacher.precision=int8 (dynamic quantisation of the Linear layers): the online forwards and the cache build
    count the FLOPs of the fp32 teacher (FlopCounterMode alone counts quantised Linear as 0), its hooks resolve by
    the same names, its fidelity to the fp32 teacher is recorded, and its cache is a different one."""
    from leankd.results.store import ResultsStore

    arms = ("arms={kd: {method: kd, alpha: 0.5, cache: on}, hint: {method: kd, alpha: 0.5, pairs: skip, "
            "feature_losses: {hint_mse: 1.0}, cache: off}}")
    rows = {}
    for prec in ("fp32", "int8"):
        cfg = load_config(REPO / "tests/configs/tiny-sst2.yaml",
                          [f"name=q-{prec}", f"teacher.precision={prec}", "metering.isolate_arms=false", arms])
        run_experiment(cfg, data_dir, tmp_path)
        rows[prec] = {r["arm"]: r for r in ResultsStore(tmp_path / "results.db").rows(f"q-{prec}")}
    fp32, int8 = rows["fp32"], rows["int8"]
    for arm in ("kd", "hint"):
        assert int8[arm]["extra"]["teacher_precision"] == "int8"
        fid = int8[arm]["extra"]["teacher_fidelity"]
        assert fid["mean_kl"] > 0 and fid["agreement"] >= 0.8 and fid["samples"] == 96
        assert "teacher_fidelity" not in fp32[arm]["extra"]
    assert int8["hint"]["extra"]["teacher_flops"] == fp32["hint"]["extra"]["teacher_flops"] > 0
    assert int8["hint"]["extra"]["layer_map"] == fp32["hint"]["extra"]["layer_map"]
    assert int8["kd"]["extra"]["cache"]["build_flops"] == fp32["kd"]["extra"]["cache"]["build_flops"] > 0
    assert int8["kd"]["extra"]["cache"]["path"] != fp32["kd"]["extra"]["cache"]["path"]
    check = int8["kd"]["extra"]["cache"]["online_check"]  # activations quantised per batch: close, not equal
    assert check["samples"] > 0 and 0 <= check["max_abs"] < 0.05 and check["agreement"] >= 0.9
    print("int8 cache vs online:", check)


def test_int8_teacher_is_refused_for_a_cnn():
    from leankd.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher.precision=int8 quantises Linear layers"):
        load_config(REPO / "tests/configs/tiny-cifar10.yaml", ["teacher.precision=int8"])


def test_online_check_of_an_fp32_image_cache_is_bit_exact_and_measured_apart(tmp_path, data_dir):
    """After a build the cache is compared with the online teacher on the first 8 training batches, formed as
    training forms them (batch 64 here, the build's 256): fp32 images have no padding, so 0.0 exactly. Its seconds
    and FLOPs (counted per sample, like the build's) are recorded apart from the build's (a measurement)."""
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval()
    loader = _loader(data_dir, views=2, n=600)  # 10 training batches of 64
    job = SimpleNamespace(teacher=teacher, teacher_autocast=_autocast("fp32", CPU), teacher_precision="fp32",
                          device=CPU, cfg=SimpleNamespace(name="exp"))
    info = TeacherCache(tmp_path, {"test": 2}).build(600, 2, {"logits": ((10,), "float32")},
                                                     _fill(job, loader, 2, 256))["info"]
    check = info["online_check"]
    assert check["batches"] == 8 and check["samples"] == 512
    assert check["max_abs"] == 0.0 and check["mean_abs"] == 0.0 and check["agreement"] == 1.0
    assert check["seconds"] > 0 and info["seconds"] > 0  # measured apart (no timing race: the machine is shared)
    assert check["flops"] * 600 * 2 == info["flops"] * 512  # same FLOPs per sample as the build


@pytest.fixture(scope="module")
def sst2_task(data_dir):
    """The tiny SST-2 slice with random batches (data.bucket=false: their padding is furthest from the build's
    length-sorted batches), and a random-init bert-mini teacher."""
    from leankd.models.text import build_text_model
    from leankd.tasks import build_task

    cfg = load_config(REPO / "tests/configs/tiny-sst2.yaml", ["data.bucket=false"])
    task = build_task(cfg, data_dir)
    torch.manual_seed(0)
    return task, build_text_model(cfg.teacher.model, task.num_outputs).eval()


def _text_job(tmp_path, sst2_task, precision: str, teacher=None):
    """A job, as far as teacher_cache reads one: training batches of 16, the cache's of 32."""
    from leankd import dist
    from leankd.jobs.teacher_cache import quantize_int8

    task, fp32 = sst2_task
    spec = SimpleNamespace(seed=0, views=1, cache={"root": tmp_path, "key": {"test": precision}, "dtype": "float32",
                                                   "batch_size": 32, "users": 2})
    teacher = teacher or (quantize_int8(fp32) if precision == "int8" else fp32)
    return SimpleNamespace(spec=spec, task=task, optim=SimpleNamespace(batch_size=16), world=dist.World(),
                           teacher=teacher, device=CPU, teacher_precision=precision,
                           teacher_autocast=_autocast(precision, CPU), extra={},
                           cfg=SimpleNamespace(name="exp", data=SimpleNamespace(on_device="auto")))


def test_online_check_of_a_text_cache_is_measured_and_carried_by_every_job(tmp_path, sst2_task):
    """Text: the build pads length-sorted batches of 32, training pads its own (16 here), so the matmuls see other
    shapes: the difference is measured and recorded, not assumed 0 (fp32 too differs in the last bits). Every job
    reading the cache carries it; a cache built before the check says it was not measured."""
    import json

    from leankd.jobs.teacher_cache import NOT_MEASURED_OLD, teacher_cache

    checks = {}
    for precision in ("fp32", "bf16"):  # int8: test_int8_teacher_counts_the_same_flops_and_records_its_fidelity
        builder = _text_job(tmp_path, sst2_task, precision)
        reader = _text_job(tmp_path, sst2_task, precision, teacher=builder.teacher)
        teacher_cache(builder)  # builds
        teacher_cache(reader)  # finds it built
        checks[precision] = check = builder.extra["cache"]["online_check"]
        assert reader.extra["cache"]["online_check"] == check
        assert check["batches"] == 8 and check["samples"] == 128 and 0 <= check["max_abs"] < 0.05
        assert check["mean_abs"] <= check["max_abs"] and 0.9 <= check["agreement"] <= 1.0
    print({p: {k: c[k] for k in ("max_abs", "mean_abs", "agreement")} for p, c in checks.items()})
    manifest_file = next(tmp_path.glob("*/manifest.json"))
    manifest = json.loads(manifest_file.read_text())
    del manifest["info"]["online_check"]  # as an older leankd wrote it (info is not part of the checksums)
    manifest_file.write_text(json.dumps(manifest))
    old = _text_job(tmp_path, sst2_task, manifest["key"]["test"], teacher=builder.teacher)
    teacher_cache(old)
    assert old.extra["cache"]["online_check"] == NOT_MEASURED_OLD and old.cached is not None
