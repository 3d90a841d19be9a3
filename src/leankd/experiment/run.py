"""Running an experiment: the teacher once, then every arm x seed, each job's row committed as it finishes.

    rows = run_experiment(cfg, data_dir=Path("../shared/data"), out_dir=Path("runs"))

Each job runs in its own child process (`python -m leankd.jobs.runner`), so a row's `peak_mem_mb` is that
job's own peak resident set (`os.wait4`) less its baseline after imports. Rerunning the same command resumes:
a job whose row (same identity: settings, data files, teacher weights) is in the store is skipped.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from leankd.config import save_config
from leankd.data.files import prepare_out_dir, resolve_data_dir
from leankd.errors import JobFailed, TrainingError
from leankd.experiment import teachers
from leankd.experiment.plan import Plan
from leankd.jobs.spec import JobSpec, error_path
from leankd.locks import locked, pid_alive
from leankd.metering.ledger import build_ledger, shared_cost
from leankd.metering.memory import run_child_measured
from leankd.results.store import ResultsStore
from leankd.resume import Resume
from leankd.tasks import build_task, check_data

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0  # how often a running job's claim is refreshed in the store


def run_isolated(spec: JobSpec, work: Path) -> tuple[dict, float | None]:
    """The local executor: the job in a child process that dies with this one; (its result, its peak RSS)."""
    job_file, result_file = work / f"{spec.arm}-{spec.seed}.job.json", work / f"{spec.arm}-{spec.seed}.result.json"
    job_file.write_text(spec.to_json())
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code, peak_mb = run_child_measured([sys.executable, "-m", "leankd.jobs.runner", str(job_file),
                                        str(result_file)], env)
    if code != 0 or not result_file.is_file():
        error = error_path(result_file)
        raise _failed(spec, error.read_text().strip() if error.is_file() else f"exit code {code}")
    return json.loads(result_file.read_text()), peak_mb


def run_inline(spec: JobSpec, work: Path, student=None, teacher=None) -> tuple[dict, float | None]:
    """The same job in this process (user modules, or metering.isolate_arms=false): no peak memory of its own."""
    from leankd.jobs.runner import run_job

    try:
        return run_job(spec, model=teacher if spec.role == "teacher" else student, teacher=teacher), None
    except TrainingError as err:  # as a child's failure: the experiment goes on with the other jobs
        raise _failed(spec, str(err)) from err


def _failed(spec: JobSpec, why: str) -> JobFailed:
    return JobFailed(f"{spec.role} job '{spec.arm}' (seed {spec.seed}) failed: {why}")


@contextmanager
def work_dir(out_dir: Path) -> Iterator[Path]:
    """A temp folder under out_dir/.tmp for job files, removed at the end; folders left by dead runs (named by
    their pid) are removed first."""
    root = out_dir / ".tmp"
    root.mkdir(exist_ok=True)
    for stale in root.glob("run-*"):
        pid = stale.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"run-{os.getpid()}-", dir=root) as tmp:
        yield Path(tmp)


@contextmanager
def claimed(store: ResultsStore, key: tuple) -> Iterator[int | None]:
    """Claim job `key` (experiment, identity, arm, seed) for this process while the block runs, with a heartbeat
    every HEARTBEAT_S; yields None when claimed, or the pid of the live process that holds it (skip the job)."""
    holder = store.claim(*key)
    if holder is not None:
        yield holder
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a busy store delays a heartbeat; the next one catches up
                store.heartbeat(*key)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield None
    finally:
        stop.set()
        thread.join()
        store.release(*key)


def make_row(cfg, spec: JobSpec, identity: str | None, result: dict, peak_rss_mb: float | None) -> dict:
    """A store row: identity, metrics, the ledger (built in metering.ledger) and provenance."""
    share = shared_cost("layer ranking", result["ranking"], cfg.name, spec.ranking_users)
    cache = result["extra"].get("cache")
    build = {"seconds": cache["build_s"], "flops": cache["build_flops"], "experiment": cache["made_for"]} \
        if cache else None
    cache_share = shared_cost("teacher cache build", build, cfg.name, spec.cache["users"] if spec.cache else 1)
    ledger = build_ledger(result["costs"], peak_rss_mb, share, cache_share)
    prov = {**result["provenance"], "config": cfg.model_dump(mode="json")}
    return {"experiment": cfg.name, "config_hash": identity, "role": spec.role, "arm": spec.arm, "seed": spec.seed,
            "model": result["model"], "task": result["task"], "split": result["split"], "metrics": result["metrics"],
            **ledger, "extra": result["extra"], "provenance": prov,
            "started_at": prov["started_at"], "ended_at": prov["ended_at"]}


def run_experiment(cfg, data_dir: str | Path | None, out_dir: str | Path, student=None,
                   teacher: "torch.nn.Module | None" = None) -> list[dict]:
    """Run every job of `cfg`; returns the rows written. Your own models: `student` is an nn.Module (copied
    for each arm x seed) or a zero-arg factory, `teacher` a trained nn.Module (evaluated, not trained). They
    run in this process, so their rows' peak memory reads "unavailable", and their rows are never reused."""
    data_dir = resolve_data_dir(data_dir)
    check_data(cfg, data_dir)  # fail before any work on a missing or malformed file
    out_dir = prepare_out_dir(out_dir)
    user = student is not None or teacher is not None
    task = None if user else build_task(cfg, data_dir)  # layer names are checked against the real models
    plan = Plan.make(cfg, data_dir, out_dir, task, student, teacher)
    store = ResultsStore(out_dir / "results.db")
    save_config(cfg, out_dir / "configs" / f"{cfg.name}-{cfg.hash()}.yaml")
    if user:
        run_one = functools.partial(run_inline, student=student, teacher=teacher)
    else:
        run_one = run_isolated if cfg.metering.isolate_arms else run_inline
    written, failures = [], []
    with work_dir(out_dir) as tmp:
        written += ensure_teacher(plan, store, run_one, tmp)
        # seed-major: every arm's seed s runs before any arm's seed s+1, so arms compared in the report ran
        # close together in time (a shared machine drifts by tens of percent over an hour); budget-matched arms
        # run after the arms whose budget they match
        order = sorted(cfg.arms, key=lambda a: cfg.arms[a].match is not None)
        for seed, arm in ((seed, arm) for seed in cfg.seeds for arm in order):
            row, error = run_student(plan, store, run_one, tmp, arm, seed)
            written += [row] if row else []
            failures += [error] if error else []
    if failures:
        raise JobFailed(f"{len(failures)} job(s) failed: " + "; ".join(failures))
    return written


def run_student(plan: Plan, store: ResultsStore, run_one, work: Path, arm: str, seed: int
                ) -> tuple[dict | None, str | None]:
    """One student job unless its row exists or another live process runs it: (the row written, or the error)."""
    cfg, identity = plan.cfg, plan.row_identity(arm)
    key = (cfg.name, identity, arm, seed)
    if identity is not None and store.find(*key):
        log.info("arm %s seed %d already done (row in store); skipping", arm, seed)
        return None, None
    with claimed(store, key) if identity is not None else contextlib.nullcontext() as holder:
        if holder is not None:
            log.info("arm %s seed %d is being run by process %d; skipping it here", arm, seed, holder)
            return None, None
        if identity is not None and store.find(*key):  # finished by another process just before our claim
            return None, None
        try:
            spec = plan.student_job(arm, seed, matched_budget(plan, store, arm, seed))
            row = make_row(cfg, spec, identity, *run_one(spec, work))
        except JobFailed as err:
            log.error("%s; continuing with the other arms", err)
            store.record_failure(*key, "student", str(err))
            return None, str(err)
        if store.insert(row) is None:
            log.warning("arm %s seed %d: a row for it was written meanwhile; not writing a second", arm, seed)
            return None, None
        _drop_checkpoint(spec)
    log.info("arm %s seed %d: %s, total_s %.1f", arm, seed,
             ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()), row["total_s"])
    return row, None


def matched_budget(plan: Plan, store: ResultsStore, arm: str, seed: int) -> dict | None:
    """A budget-matched arm's budget, from the rows of its target and base arms for the same seed (None for any
    other arm)."""
    cfg = plan.cfg
    if cfg.arms[arm].match is None:
        return None
    if plan.user_student or plan.train_samples is None:
        raise JobFailed(f"student job '{arm}' (seed {seed}) failed: match needs leankd's own models and data (the "
                        f"steps of one epoch); drop arms.{arm}.match with a caller's modules")
    rows = {}
    for role, ref in (("target", cfg.arms[arm].match), ("base", cfg.base_arm(arm))):
        rows[role] = store.find(cfg.name, plan.row_identity(ref), ref, seed)
        if rows[role] is None:
            raise JobFailed(f"student job '{arm}' (seed {seed}) failed: it matches the budget of arm '{ref}', which "
                            f"has no row for seed {seed} (it failed or another process is running it); rerun the "
                            "same command once it has one")
    return plan.budget(arm, rows["target"], rows["base"])


def _drop_checkpoint(spec: JobSpec) -> None:
    """A finished job's mid-run checkpoints are removed once its row (or stored teacher) is safely written."""
    if spec.checkpoint:
        Resume(spec.checkpoint["path"], spec.checkpoint["identity"]).remove()


def ensure_teacher(plan: Plan, store: ResultsStore, run_one, work: Path) -> list[dict]:
    """The teacher's row for this experiment: already there, a stored teacher reused, or trained now. Concurrent
    runs needing the same teacher wait on its lock and reuse what the first one trained."""
    cfg, key, out_dir = plan.cfg, plan.key, plan.out_dir
    if store.find(cfg.name, key, "teacher", cfg.teacher.seed) and teachers.is_stored(out_dir, key):
        log.info("teacher row for %s already in the store; skipping", key)
        return []
    with locked(out_dir / "teachers", key):
        if teachers.is_stored(out_dir, key):
            log.info("reusing stored teacher %s (%s): not retraining", key, teachers.teacher_dir(out_dir, key))
            row = teachers.reused_row(cfg.name, out_dir, key)
            teachers.check_metric(row, cfg.teacher.min_metric)
        else:
            log.info("training teacher %s (stored under %s)", cfg.teacher.model, teachers.teacher_dir(out_dir, key))
            spec = plan.teacher_job()
            try:
                row = make_row(cfg, spec, key, *run_one(spec, work))
            except JobFailed as err:
                store.record_failure(cfg.name, key, "teacher", cfg.teacher.seed, "teacher", str(err))
                raise JobFailed(f"{err}; no student can run without it") from None
            teachers.save_row(out_dir, key, row)
            _drop_checkpoint(spec)
        # inside the lock: a run of the same experiment waiting on it must find the trained row, not insert a
        # "reused" one first
        return [row] if store.insert(row) is not None else []


def obtain_teacher(cfg, data_dir: str | Path | None, out_dir: str | Path) -> tuple[Path, str]:
    """Train (in a child process) or reuse the config's teacher, without any student arm: (data dir, key)."""
    data_dir = resolve_data_dir(data_dir)
    check_data(cfg, data_dir)
    out_dir = prepare_out_dir(out_dir)
    plan = Plan.make(cfg, data_dir, out_dir)
    if not teachers.is_stored(out_dir, plan.key):
        with work_dir(out_dir) as tmp:
            ensure_teacher(plan, ResultsStore(out_dir / "results.db"), run_isolated, tmp)
    return data_dir, plan.key
