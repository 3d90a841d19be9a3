"""Running an experiment: the teacher once, then every arm x seed, each job's row committed as it finishes.

    rows = run_experiment(cfg, data_dir=Path("../shared/data"), out_dir=Path("runs"))

Each job runs in its own child process (`python -m leankd.jobs.runner`), so a row's `peak_mem_mb` is that
job's own peak resident set (`os.wait4`) less its baseline after imports. Rerunning the same command resumes:
a job whose row (same identity: settings, data files, teacher weights) is in the store is skipped.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from leankd.config import save_config
from leankd.data.files import prepare_out_dir, resolve_data_dir
from leankd.errors import JobFailed
from leankd.experiment import teachers
from leankd.experiment.plan import Plan
from leankd.jobs.spec import JobSpec
from leankd.metering.ledger import build_ledger, shared_cost
from leankd.metering.memory import run_child_measured
from leankd.results.store import ResultsStore
from leankd.tasks import build_task, check_data

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def run_isolated(spec: JobSpec, work: Path) -> tuple[dict, float | None]:
    """The local executor: the job in a child process; (its result, its peak RSS in MiB)."""
    job_file, result_file = work / f"{spec.arm}-{spec.seed}.job.json", work / f"{spec.arm}-{spec.seed}.result.json"
    job_file.write_text(spec.to_json())
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code, peak_mb = run_child_measured([sys.executable, "-m", "leankd.jobs.runner", str(job_file),
                                        str(result_file)], env)
    if code != 0 or not result_file.is_file():
        raise JobFailed(f"{spec.role} job '{spec.arm}' (seed {spec.seed}) failed with exit code {code}")
    return json.loads(result_file.read_text()), peak_mb


def run_inline(spec: JobSpec, work: Path, student=None, teacher=None) -> tuple[dict, float | None]:
    """The same job in this process (user modules, or metering.isolate_arms=false): no peak memory of its own."""
    from leankd.jobs.runner import run_job

    return run_job(spec, model=teacher if spec.role == "teacher" else student, teacher=teacher), None


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
    with tempfile.TemporaryDirectory(prefix="leankd-") as tmp:
        written += ensure_teacher(plan, store, run_one, Path(tmp))
        # seed-major: every arm's seed s runs before any arm's seed s+1, so arms compared in the report ran
        # close together in time (a shared machine drifts by tens of percent over an hour)
        for seed, arm in ((seed, arm) for seed in cfg.seeds for arm in cfg.arms):
            identity = plan.row_identity(arm)
            if identity is not None and store.find(cfg.name, identity, arm, seed):
                log.info("arm %s seed %d already done (row in store); skipping", arm, seed)
                continue
            spec = plan.student_job(arm, seed)
            try:
                row = make_row(cfg, spec, identity, *run_one(spec, Path(tmp)))
            except JobFailed as err:
                log.error("%s; continuing with the other arms", err)
                failures.append(str(err))
                continue
            store.insert(row)
            written.append(row)
            log.info("arm %s seed %d: %s, total_s %.1f", arm, seed,
                     ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()), row["total_s"])
    if failures:
        raise JobFailed(f"{len(failures)} job(s) failed: " + "; ".join(failures))
    return written


def ensure_teacher(plan: Plan, store: ResultsStore, run_one, work: Path) -> list[dict]:
    """The teacher's row for this experiment: already there, a stored teacher reused, or trained now."""
    cfg, key, out_dir = plan.cfg, plan.key, plan.out_dir
    if store.find(cfg.name, key, "teacher", cfg.teacher.seed) and teachers.is_stored(out_dir, key):
        log.info("teacher row for %s already in the store; skipping", key)
        return []
    if teachers.is_stored(out_dir, key):
        log.info("reusing stored teacher %s (%s): not retraining", key, teachers.teacher_dir(out_dir, key))
        row = teachers.reused_row(cfg.name, out_dir, key)
    else:
        log.info("training teacher %s (stored under %s)", cfg.teacher.model, teachers.teacher_dir(out_dir, key))
        spec = plan.teacher_job()
        row = make_row(cfg, spec, key, *run_one(spec, work))
        teachers.save_row(out_dir, key, row)
    store.insert(row)
    return [row]


def obtain_teacher(cfg, data_dir: str | Path | None, out_dir: str | Path) -> tuple[Path, str]:
    """Train (in a child process) or reuse the config's teacher, without any student arm: (data dir, key)."""
    data_dir = resolve_data_dir(data_dir)
    check_data(cfg, data_dir)
    out_dir = prepare_out_dir(out_dir)
    plan = Plan.make(cfg, data_dir, out_dir)
    if not teachers.is_stored(out_dir, plan.key):
        with tempfile.TemporaryDirectory(prefix="leankd-") as tmp:
            ensure_teacher(plan, ResultsStore(out_dir / "results.db"), run_isolated, Path(tmp))
    return data_dir, plan.key
