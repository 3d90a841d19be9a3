"""speed.compile on a real CIFAR-10 slice: the warm-up changes nothing the run depends on, no compilation happens
inside the training loop (so none inside train_s), its seconds are reported apart (extra.compile), and arms with
forward-hooked layer pairs train compiled.

The tests compile with dynamo's "aot_eager" backend: the same graph capture (hooks, guards, recompiles) and autograd
graphs as inductor, without inductor's code generation (~30 s per graph on this 2-core CPU). `leankd run ...
speed.compile=true` compiles with inductor."""
import copy
import dataclasses
import math

import pytest
import torch

import leankd.jobs.compiled as compiled
import leankd.jobs.steps as steps
from leankd.batching import to_device
from leankd.config import load_config
from leankd.experiment import run_experiment
from leankd.experiment.plan import Plan
from leankd.jobs.compiled import compiled_models
from leankd.jobs.steps import Job, build_distiller, prepare, teacher_setup
from leankd.tasks import build_task
from leankd.train import fit

from conftest import REPO

TINY = REPO / "tests" / "configs" / "tiny-cifar10.yaml"
# 136 samples in batches of 64: the epoch's last batch holds 8, a second shape to warm up
SMALL = ["data.train_limit=136", "data.test_limit=64", "train.batch_size=64", "teacher.train.batch_size=64",
         "metering.isolate_arms=false", "speed.compile=true"]
AT = "{method: kd, pairs: skip, cache: off, feature_losses: {attention_transfer: 1000.0}}"


@pytest.fixture(autouse=True)
def _quick_backend(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def _flat(obj, path=""):
    """(path, value) leaves of nested dicts / lists / tuples."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _flat(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in _flat(v, f"{path}[{i}]")]
    return [(path, obj)]


def _same(a, b) -> list[str]:
    """Paths where `a` and `b` differ (tensors: bit-identical values, dtype and shape)."""
    fa, fb = _flat(a), _flat(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    return [p for (p, x), (_, y) in zip(fa, fb)
            if not (torch.equal(x, y) and x.dtype == y.dtype if isinstance(x, torch.Tensor) else x == y)]


def _state(job: Job) -> dict:
    d = job.distiller
    return {"distiller": {k: v.clone() for k, v in d.state_dict().items()},
            "teacher": {k: v.clone() for k, v in d.teacher.state_dict().items()},
            "grads": [p.grad for p in d.parameters()], "modes": [m.training for m in d.modules()],
            "optimizer": copy.deepcopy(job.optimizer.state_dict()), "scheduler": job.scheduler.state_dict(),
            "rng": torch.get_rng_state(), "teacher_s": d.teacher_s}


def _online_job(data_dir, out, arm: str) -> Job:
    """A student job of arm `arm` with an untrained resnet8 teacher online, set up up to training."""
    cfg = load_config(TINY, SMALL + [f"arms={{a: {arm}}}"])
    task = build_task(cfg, data_dir)
    spec = Plan.make(cfg, data_dir, out, task).student_job("a", 0)
    job = Job(dataclasses.replace(spec, teacher_path=None, user_teacher=True, checkpoint=None),
              user_teacher=task.build_model("resnet8"))
    for step in (prepare, teacher_setup, build_distiller):
        step(job)
    return job


def test_warm_up_changes_nothing_and_nothing_compiles_inside_training(data_dir, tmp_path):
    job = _online_job(data_dir, tmp_path, AT)
    d = job.distiller
    x, y, key = next(iter(job.loader.keyed_epoch(0)))  # one real step first: momentum buffers, a stepped schedule
    d(to_device(x, job.device), y, key)["loss"].backward()
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    job.scheduler.step()
    before = _state(job)
    assert before["optimizer"]["state"] and before["teacher_s"] > 0
    with compiled_models(job) as info:
        after = _state(job)
        assert info["compiled"] == ["student", "teacher"] and info["warmup_batches"] == 2 and info["compile_s"] > 0
        assert job.extra["compile"] is info
        assert d.student._compiled_call_impl is not None and d.teacher._compiled_call_impl is not None
        before["teacher_s"] = 0.0  # the warm-up's teacher seconds are dropped; so are the step's above
        assert _same(before, after) == []
        with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile inside the loop raises
            stats = fit(d, job.loader, job.optimizer, job.scheduler, job.prec, 1, job.device)
        assert math.isfinite(stats["epoch_loss"][0])
    assert d.student._compiled_call_impl is None and d.teacher._compiled_call_impl is None  # eager again
    d.close()


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory, data_dir):
    """One tiny experiment with speed.compile=true (teacher, a kd arm with attention-transfer pairs and an online
    teacher, a features-only arm), each compilation noted with whether the training loop was running."""
    events, in_fit = [], [False]

    def backend(gm, example_inputs):
        events.append(in_fit[0])
        return gm.forward  # the captured graph, run as it is

    def timed_fit(*args, **kwargs):
        in_fit[0] = True
        try:
            return fit(*args, **kwargs)
        finally:
            in_fit[0] = False

    arms = f"arms={{at: {AT}, feat: {{method: features, pairs: [1, 2], cache: off, " \
           "feature_losses: {attention_transfer: 1000.0}}}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compiled, "BACKEND", backend)
        mp.setattr(steps, "fit", timed_fit)
        rows = run_experiment(load_config(TINY, SMALL + [arms]), data_dir, tmp_path_factory.mktemp("compiled"))
    return {r["arm"]: r for r in rows}, events


def test_compile_seconds_are_reported_apart_from_train_s(compiled_run):
    rows, events = compiled_run
    assert events and not any(events)  # every graph was compiled before a training loop started
    for arm, row in rows.items():
        info = row["extra"]["compile"]
        assert info["compile_s"] > 0 and info["warmup_batches"] == 2, arm
        assert math.isfinite(row["train_s"]) and row["train_s"] > 0
        assert all(math.isfinite(v) for v in row["extra"]["epoch_loss"]) and 0 <= row["metrics"]["accuracy"] <= 1
    assert rows["teacher"]["extra"]["compile"]["compiled"] == ["student"]  # the model it trains
    assert rows["at"]["extra"]["compile"]["compiled"] == ["student", "teacher"]
    assert rows["at"]["extra"]["layer_map"] and rows["at"]["teacher_s"] > 0


def test_a_features_only_arm_compiles_its_student_and_runs_its_cut_short_teacher_eager(compiled_run):
    rows, _ = compiled_run
    info = rows["feat"]["extra"]["compile"]
    assert info["compiled"] == ["student"] and "features-only" in info["eager"]["teacher"]
    assert rows["feat"]["teacher_s"] > 0 and rows["feat"]["metrics"]["agreement"] >= 0


def test_the_report_shows_compile_seconds_apart_from_total_s(compiled_run):
    from leankd.report.table import summarise, to_markdown

    rows, _ = compiled_run
    header = to_markdown(summarise(list(rows.values())), "t").split("compile_s (not in total_s)")
    assert len(header) == 2  # one column, beside total_s, only when a row was compiled
    plain = [{**r, "extra": {k: v for k, v in r["extra"].items() if k != "compile"}} for r in rows.values()]
    assert "compile_s" not in to_markdown(summarise(plain), "t")
