"""The experiment grid through submitit (cluster "local": processes on this machine, as on SLURM): the teacher,
then the teacher cache, then the students at once, each row written once; a job failing once is resubmitted
and succeeds; without submitit, one line says what to install."""
import json
import os
import sys
import time

import pytest

from leankd.config import load_config
from leankd.errors import ConfigError
from leankd.experiment import run_experiment
from leankd.experiment.executors import SubmititExecutor
from leankd.results.store import ResultsStore

from conftest import REPO

SMALL = ["data.train_limit=128", "data.test_limit=64", "threads=1"]


class Recording(SubmititExecutor):
    """Records when each job was submitted and when the orchestrator saw it finish; `fail_first` jobs (tags) get
    a NaN loss at their first step on their first attempt only."""

    def __init__(self, *args, fail_first=(), **kw):
        super().__init__(*args, **kw)
        self.events, self.attempts, self.fail_first = [], [], set(fail_first)

    def job_env(self, spec, attempt):
        self.attempts.append((spec.tag, attempt))
        return {"LEANKD_FAULT": f"nan@{spec.tag}:1"} if attempt == 0 and spec.tag in self.fail_first else {}

    def submit(self, spec, work):
        pending, name = super().submit(spec, work), f"{spec.tag}{'+' + spec.until if spec.until else ''}"
        self.events.append(("submit", name, time.monotonic()))
        done = pending.done

        def seen_done():
            finished = done()
            if finished and not any(e[:2] == ("done", name) for e in self.events):
                self.events.append(("done", name, time.monotonic()))
            return finished
        pending.done = seen_done
        return pending


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(REPO / "tests/configs/tiny-cifar10.yaml",
                      [*SMALL, "arms={plain: {method: plain}, kd: {method: kd, cache: on}}"])
    executor = Recording(out / ".submitit", cluster="local", time_min=10)
    t0 = time.perf_counter()
    rows = run_experiment(cfg, data_dir, out, executor=executor)
    return out, rows, executor, time.perf_counter() - t0


def test_submitit_local_grid_writes_every_row_once_in_dependency_order(grid):
    out, rows, executor, seconds = grid
    stored = ResultsStore(out / "results.db").rows("tiny-cifar10")
    assert sorted((r["arm"], r["seed"]) for r in stored) == [("kd", 0), ("plain", 0), ("teacher", 0)]
    assert sorted(r["arm"] for r in rows) == ["kd", "plain", "teacher"]
    assert all(r["peak_mem_mb"] > 0 for r in stored)  # each job still ran in its own measured child process
    by = {r["arm"]: r for r in stored}
    assert by["kd"]["extra"]["teacher_source"].startswith("cache") and by["kd"]["cache_share_s"] > 0
    # waves: teacher, then the cache-only job, then both students in flight together
    names = [n for kind, n, _ in executor.events if kind == "submit"]
    assert names == ["teacher/s0", "kd/s0+teacher_cache", "plain/s0", "kd/s0"]
    at = {(kind, n): t for kind, n, t in executor.events}
    assert at[("done", "teacher/s0")] <= at[("submit", "kd/s0+teacher_cache")]
    assert at[("done", "kd/s0+teacher_cache")] <= at[("submit", "plain/s0")]
    assert at[("submit", "kd/s0")] < min(at[("done", "plain/s0")], at[("done", "kd/s0")])  # both in flight
    # the rows' and the cache's own clocks agree (ISO seconds)
    manifest = json.loads(next((out / "cache" / "teacher").glob("*/manifest.json")).read_text())
    for arm in ("plain", "kd"):
        assert by["teacher"]["ended_at"] <= by[arm]["started_at"]
    assert manifest["created_at"] <= by["kd"]["started_at"]
    print(f"submitit-local grid: {seconds:.1f} s")


def test_a_job_failing_once_is_resubmitted_and_succeeds(grid, data_dir):
    out = grid[0]  # the same --out: the stored teacher is reused, only the student runs
    cfg = load_config(REPO / "tests/configs/tiny-cifar10.yaml", [*SMALL, "name=retry", "arms={plain: {method: plain}}"])
    executor = Recording(out / ".submitit", cluster="local", time_min=10, fail_first=["plain/s0"])
    rows = run_experiment(cfg, data_dir, out, executor=executor)
    assert executor.attempts == [("plain/s0", 0), ("plain/s0", 1)]
    assert [(r["arm"], r["seed"]) for r in rows] == [("teacher", 0), ("plain", 0)]  # teacher: a reused row
    store = ResultsStore(out / "results.db")
    assert [r["arm"] for r in store.rows("retry")] == ["teacher", "plain"] and not store.failures("retry")


def test_missing_submitit_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'leankd\[cluster\]'") as err:
        SubmititExecutor(tmp_path, cluster="local")
    assert "\n" not in str(err.value)


def test_cli_options_become_submitit_parameters(monkeypatch, tmp_path):
    from leankd.cli import parse
    from leankd.experiment.executors import from_args

    assert from_args(parse(["run", "c.yaml"])) is None  # local: run_experiment's own choice
    local = from_args(parse(["run", "c.yaml", "--executor", "submitit-local", "--out", str(tmp_path)]))
    assert local.cluster == "local" and str(local._ex.folder) == str(tmp_path / ".submitit")
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit refuses SLURM where there is no srun
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    slurm = from_args(parse(["run", "c.yaml", "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "90",
                             "--slurm-gpus", "1", "--slurm-cpus", "8", "--slurm-mem", "32", "--slurm-account", "acc",
                             "--slurm-qos", "high", "--executor-folder", str(tmp_path / "sub")]))
    assert slurm._ex._executor.parameters == {"time": 90, "gpus_per_node": 1, "cpus_per_task": 8, "mem": "32GB",
                                              "job_name": "leankd", "partition": "gpu", "account": "acc",
                                              "qos": "high"}
