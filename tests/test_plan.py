"""`leankd plan`: a config's full run projected from a few training steps measured here, per job and in total."""
import math

import pytest

from leankd.cli import main
from leankd.config import load_config
from leankd.experiment.projection import format_projection, project, project_config

from conftest import REPO

TINY = str(REPO / "tests/configs/tiny-cifar10.yaml")
TINY_TEXT = str(REPO / "tests/configs/tiny-sst2.yaml")


@pytest.fixture(scope="module", params=[TINY, TINY_TEXT], ids=["cifar10", "sst2"])
def measured(request, data_dir):
    cfg = load_config(request.param, ["seeds=[0,1,2]"])
    return cfg, project_config(cfg, data_dir, steps=2)


def test_projection_is_flops_per_step_times_steps(measured):
    cfg, proj = measured
    assert [j.measure.job for j in proj.jobs] == ["teacher", "plain", "kd"]
    assert proj.train_samples == cfg.data.train_limit  # the full training set of the config, not the slice
    for j in proj.jobs:
        m = j.measure
        runs = 1 if m.job == "teacher" else 3
        assert j.steps == math.ceil(proj.train_samples / m.batch_size) * 1 * runs
        assert j.flops == m.flops_per_step * j.steps and m.flops_per_step > 0
        assert j.seconds == m.s_per_step * j.steps and m.s_per_step > 0
        assert m.peak_mb is not None and m.peak_mb > 0
    assert proj.flops == sum(j.flops for j in proj.jobs)
    plain, kd = proj.jobs[1].measure, proj.jobs[2].measure
    assert plain.teacher_flops_per_step == 0 and kd.teacher_flops_per_step > 0  # kd's online teacher forward
    cache = proj.jobs[2].cache
    assert cache["student_flops"] == (kd.flops_per_step - kd.teacher_flops_per_step) * proj.jobs[2].steps
    assert cache["build_flops"] == kd.teacher_flops_per_step * proj.train_samples // kd.batch_size  # 1 view here


def test_time_projection_scales_with_epochs(measured):
    _, proj = measured
    m = proj.jobs[1].measure
    one, five = project(m, proj.train_samples, 1, 3), project(m, proj.train_samples, 5, 3)
    assert five.steps == 5 * one.steps and five.seconds == pytest.approx(5 * one.seconds, rel=1e-12)
    assert five.flops == 5 * one.flops


def test_printed_plan_says_what_is_measured_and_what_is_projected(measured):
    _, proj = measured
    text = format_projection(proj, gpu_tflops=312, gpu_util=0.4, gpu_mem_gb=80)
    assert f"plan for {proj.name}" in text and "total" in text
    assert "a projection from an assumed throughput, not a measurement" in text and "124.8 TFLOP/s sustained" in text
    assert "kd with the teacher cache instead" in text and "every job fits" in text


@pytest.mark.parametrize("argv, says", [
    ([TINY, "train.epochz=2"], "unknown key 'train.epochz'"),
    ([str(REPO / "configs/nope.yaml")], "not found"),
    ([TINY, "--steps", "0"], "--steps must be >= 1"),
])
def test_bad_plan_input_is_one_line_exit_2(argv, says, capsys, data_dir):
    assert main(["plan", *argv, "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
