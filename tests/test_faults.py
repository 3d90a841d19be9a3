"""Faults end to end on a real CIFAR-10 slice: kill -9 in the middle of a distilled arm (whole process group, or
the parent only) then rerun gives the uninterrupted run's metrics; Ctrl-C and SIGTERM there are one line and exit
130 / 143, and the rerun resumes; a NaN at step k and a diverged teacher are
recorded as failures while the other arms finish; four runs into one --out write every row once and train the
teacher once. Faults are injected with LEANKD_FAULT (leankd/faults.py)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leankd.results.store import ResultsStore

from conftest import REPO

CONFIG = "tests/configs/tiny-cifar10.yaml"
TWO_EPOCHS = ["train.epochs=2", "checkpoint.every_steps=1"]  # 4 steps per epoch; a checkpoint after each


def start(out: Path, data_dir: Path, *over: str, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "LEANKD_DATA_DIR": str(data_dir)}
    env.pop("LEANKD_FAULT", None)
    if fault:
        env["LEANKD_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "leankd.cli", "run", CONFIG, *TWO_EPOCHS, *over, "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a group kill hits leankd only


def run(out: Path, data_dir: Path, *over: str, fault: str | None = None) -> subprocess.CompletedProcess:
    proc = start(out, data_dir, *over, fault=fault)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def rows(out: Path, name: str = "tiny-cifar10") -> dict:
    found = ResultsStore(out / "results.db").rows(name)
    keys = [(r["arm"], r["seed"]) for r in found]
    assert len(keys) == len(set(keys)), f"duplicate rows: {keys}"
    return {r["arm"]: r for r in found}


def leftovers(out: Path) -> list[int]:
    """Pids of live processes whose command line mentions `out` (orphaned jobs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("whole")
    proc = run(out, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def with_teacher(src: Path, dst: Path) -> Path:
    """A fresh --out holding the stored teacher of `src` (the students are what is tested here)."""
    shutil.copytree(src / "teachers", dst / "teachers")
    return dst


def same_metrics(a: dict, b: dict) -> None:
    for arm in ("plain", "kd"):
        assert a[arm]["metrics"] == b[arm]["metrics"], arm
        assert a[arm]["extra"]["epoch_loss"] == b[arm]["extra"]["epoch_loss"], arm


@pytest.mark.parametrize("fault", ["kill", "killparent"])
def test_kill_9_mid_arm_then_rerun_gives_the_uninterrupted_metrics(uninterrupted, tmp_path, data_dir, fault):
    out = with_teacher(uninterrupted, tmp_path)
    killed = run(out, data_dir, fault=f"{fault}@kd/s0:6")  # epoch 2, step 2 of the distilled arm
    assert killed.returncode == -signal.SIGKILL
    deadline = time.time() + 15
    while leftovers(out) and time.time() < deadline:  # the child dies with its parent (PR_SET_PDEATHSIG)
        time.sleep(0.2)
    assert leftovers(out) == []
    assert list(rows(out)) == ["teacher", "plain"]  # kd has no row: it never finished
    assert (out / "checkpoints" / "tiny-cifar10" / "kd-seed0.ckpt").is_file()

    again = run(out, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at epoch 2 step 1" in again.stderr
    got, want = rows(out), rows(uninterrupted)
    same_metrics(got, want)
    resumed = got["kd"]["extra"]["resumed"]
    assert (resumed["epoch"], resumed["step"]) == (2, 1) and got["kd"]["lost_s"] >= 0
    assert "resumed" not in want["kd"]["extra"] and want["kd"]["lost_s"] == 0
    assert "resumed from a checkpoint" in got["kd"]["sources"]["train_s"]  # the ledger says train_s spans two runs
    assert "resumed from a checkpoint" not in want["kd"]["sources"]["train_s"]
    assert not list((out / "checkpoints").rglob("*.ckpt"))  # removed once the rows were stored
    assert not [p for p in (out / ".tmp").iterdir()]  # the killed run's temp folder is gone too


def test_ctrl_c_and_sigterm_mid_arm_are_one_line_then_rerun_resumes(uninterrupted, tmp_path, data_dir):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it: the job's child gets it too) and SIGTERM
    (to `leankd run` alone): one line saying what a rerun resumes from, exit 130 / 143, no traceback, no process
    left; the rerun ends with the uninterrupted run's metrics."""
    out, kd_only = with_teacher(uninterrupted, tmp_path), "arms={kd: {method: kd, temperature: 4.0, alpha: 0.9}}"
    for sig, send in ((signal.SIGINT, os.killpg), (signal.SIGTERM, os.kill)):
        proc = start(out, data_dir, kd_only, fault="pause@kd/s0:6")  # the distilled arm waits at epoch 2, step 2
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "fault: kd/s0 paused at step 6" in line:
                break
        send(proc.pid, sig)
        _, rest = proc.communicate(timeout=120)
        err = "".join(seen) + rest
        assert proc.returncode == 128 + sig, err[-3000:]
        assert [ln for ln in err.splitlines() if "interrupted" in ln] == [
            "interrupted; rerun the same command to resume from arm kd seed 0 at epoch 2 step 1 (its last checkpoint)"]
        assert "Traceback" not in err and "KeyboardInterrupt" not in err and "ignored" not in err, err[-3000:]
        assert leftovers(out) == []  # the job was stopped with it
        assert list(rows(out)) == ["teacher"]
    again = run(out, data_dir, kd_only)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at epoch 2 step 1" in again.stderr
    got, want = rows(out)["kd"], rows(uninterrupted)["kd"]
    assert (got["metrics"], got["extra"]["epoch_loss"]) == (want["metrics"], want["extra"]["epoch_loss"])
    assert not list((out / "checkpoints").rglob("*.ckpt"))


def test_nan_at_step_k_fails_that_job_only_and_is_recorded(uninterrupted, tmp_path, data_dir):
    out = with_teacher(uninterrupted, tmp_path)
    proc = run(out, data_dir, fault="nan@kd/s0:3")
    assert proc.returncode == 1
    assert "kd/s0: loss became nan or inf at epoch 1 step 3" in proc.stderr
    assert list(rows(out)) == ["teacher", "plain"]  # the other arm finished; nothing stored for kd
    (failure,) = ResultsStore(out / "results.db").failures("tiny-cifar10")
    assert failure["arm"] == "kd" and "step 3" in failure["error"]
    assert "Failed jobs" in proc.stdout and "step 3" in proc.stdout
    assert not list((out / "students" / "tiny-cifar10").glob("kd-seed0*"))


def test_a_diverged_teacher_is_refused_and_nothing_is_stored(tmp_path, data_dir):
    proc = run(tmp_path, data_dir, "teacher.train.lr=1000", "name=diverged")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "teacher job 'teacher'" in last and "no student can run without it" in last
    assert ResultsStore(tmp_path / "results.db").rows("diverged") == []
    (failure,) = ResultsStore(tmp_path / "results.db").failures("diverged")
    assert failure["role"] == "teacher" and ("step" in failure["error"] or "refusing" in failure["error"])
    assert not [p for p in (tmp_path / "teachers").iterdir() if p.is_dir() and (p / "model.json").exists()]


def test_four_runs_into_one_out_write_every_row_once_and_train_the_teacher_once(tmp_path, data_dir):
    procs = [start(tmp_path, data_dir, f"name={name}") for name in ("exp-a", "exp-a", "exp-b", "exp-b")]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert sum("training teacher" in err for _, err in outs) == 1
    store = ResultsStore(tmp_path / "results.db")
    for name in ("exp-a", "exp-b"):
        assert sorted(rows(tmp_path, name)) == ["kd", "plain", "teacher"]
    assert len(store.rows()) == 6
    assert sum("reused_teacher" not in r["extra"] for r in store.rows() if r["role"] == "teacher") == 1
