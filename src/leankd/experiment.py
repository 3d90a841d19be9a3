"""An experiment: the teacher once, then every arm x seed, each as a row in the results store.

    rows = run_experiment(cfg, data_dir=Path("../shared/data"), out_dir=Path("runs"))

Each job runs in its own child process (`python -m leankd.runner`), so a row's `peak_mem_mb` is that
job's own peak resident set (from `os.wait4`) less its baseline after imports. Rows are committed one by
one: a failure later loses nothing, and rerunning the same command resumes, skipping arm x seed pairs
whose row already exists for the same settings.
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

if TYPE_CHECKING:
    import torch

from leankd.config import config_hash, save_config
from leankd.data.cifar10 import resolve_data_dir
from leankd.metering.memory import run_child_measured
from leankd.results.store import ResultsStore
from leankd.tasks import check_data
from leankd.teacher import is_stored, teacher_dir, teacher_key

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """A child job exited non-zero; its own one-line error is already in the log."""


def _run_isolated(job: dict, work: Path) -> dict:
    job_file, result_file = work / "job.json", work / "result.json"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code, peak_mb = run_child_measured([sys.executable, "-m", "leankd.runner", str(job_file), str(result_file)], env)
    if code != 0 or not result_file.is_file():
        raise JobFailed(f"{job['role']} job '{job['arm']}' (seed {job['seed']}) failed with exit code {code}")
    result = json.loads(result_file.read_text())
    result["peak_mem_mb"] = max(0.0, peak_mb - result["baseline_rss_mb"])
    result["peak_mem_source"] = "child-process peak RSS (os.wait4) minus baseline after imports"
    return result


def _run_inline(job: dict, work: Path, student=None, teacher=None) -> dict:
    from leankd.runner import run_job  # same code path, no isolation: peak memory is not the job's own

    result = run_job(job, student, teacher)
    result["peak_mem_mb"], result["peak_mem_source"] = None, "unavailable (metering.isolate_arms=false)"
    return result


def _row(cfg, job: dict, result: dict, row_hash: str) -> dict:
    gpu = result.get("cuda_peak_mb")
    peak, source = (gpu, "torch.cuda.max_memory_allocated") if gpu is not None else \
        (result["peak_mem_mb"], result["peak_mem_source"])
    prov = {**result["provenance"], "config": cfg.model_dump(mode="json")}
    return {"experiment": cfg.name, "config_hash": row_hash, "role": job["role"], "arm": job["arm"],
            "seed": job["seed"], "model": result["model"], "task": result["task"], "split": result["split"],
            "metrics": result["metrics"], **result["ledger"], "peak_mem_mb": peak, "peak_mem_source": source,
            "extra": result["extra"], "provenance": prov,
            "started_at": prov["started_at"], "ended_at": prov["ended_at"]}


def _student_hash(cfg, arm: str) -> str:
    """Settings that make a student row what it is (not the other arms, not the seed list)."""
    common = cfg.model_dump(mode="json", exclude={"arms", "seeds", "metering", "name"})
    return config_hash({**common, "arm": cfg.arms[arm].model_dump(mode="json")})


def run_experiment(cfg, data_dir: str | Path | None, out_dir: str | Path, student=None,
                   teacher: "torch.nn.Module | None" = None) -> list[dict]:
    """Run every job of `cfg`; returns the rows written. Your own models: `student` is an nn.Module (copied
    for each arm x seed) or a zero-arg factory, `teacher` a trained nn.Module (evaluated, not trained). They
    run in this process, so their rows' peak memory reads "unavailable"."""
    data_dir = resolve_data_dir(data_dir)
    check_data(cfg, data_dir)  # fail before any work on a missing or malformed file
    if student is None and teacher is None:
        from leankd.distill.selection import check_layers
        from leankd.tasks import build_task

        check_layers(cfg, build_task(cfg, data_dir))  # a bad layer name fails now, not after the teacher
    out_dir = Path(out_dir)
    store = ResultsStore(out_dir / "results.db")
    save_config(cfg, out_dir / "configs" / f"{cfg.name}-{cfg.hash()}.yaml")
    user_models = student is not None or teacher is not None
    if user_models:
        run_one = functools.partial(_run_inline, student=student, teacher=teacher)
    else:
        run_one = _run_isolated if cfg.metering.isolate_arms else _run_inline
    base = {"config": cfg.model_dump(mode="json"), "data_dir": str(data_dir), "out_dir": str(out_dir.resolve())}
    key = teacher_key(cfg, data_dir, teacher)
    base["teacher_key"] = key
    written, failures = [], []
    with tempfile.TemporaryDirectory(prefix="leankd-") as tmp:
        work = Path(tmp)
        written += _ensure_teacher(cfg, store, out_dir, base, run_one, work)
        for arm in cfg.arms:
            row_hash = _student_hash(cfg, arm)
            for seed in cfg.seeds:
                if store.find(cfg.name, row_hash, arm, seed):
                    log.info("arm %s seed %d already done (row in store); skipping", arm, seed)
                    continue
                job = {**base, "role": "student", "arm": arm, "seed": seed}
                try:
                    row = _row(cfg, job, run_one(job, work), row_hash)
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


def _ensure_teacher(cfg, store: ResultsStore, out_dir: Path, base: dict, run_one, work: Path) -> list[dict]:
    """The teacher's row for this experiment: already there, a stored teacher reused, or trained now."""
    key = base["teacher_key"]
    if store.find(cfg.name, key, "teacher", cfg.teacher.seed):
        log.info("teacher row for %s already in the store; skipping", key)
        return []
    if is_stored(out_dir, key):
        log.info("reusing stored teacher %s (%s): not retraining", key, teacher_dir(out_dir, key))
        return [store_reused_teacher(store, cfg, out_dir, key)]
    log.info("training teacher %s (stored under %s)", cfg.teacher.model, teacher_dir(out_dir, key))
    job = {**base, "role": "teacher", "arm": "teacher", "seed": cfg.teacher.seed}
    row = _row(cfg, job, run_one(job, work), key)
    store.insert(row)
    _save_teacher_row(out_dir, key, row)
    return [row]


def obtain_teacher(cfg, data_dir: str | Path | None, out_dir: str | Path) -> tuple[Path, str]:
    """Train (in a child process) or reuse the config's teacher, without any student arm: (data dir, key)."""
    data_dir = resolve_data_dir(data_dir)
    check_data(cfg, data_dir)
    out_dir = Path(out_dir)
    key = teacher_key(cfg, data_dir)
    base = {"config": cfg.model_dump(mode="json"), "data_dir": str(data_dir), "out_dir": str(out_dir.resolve()),
            "teacher_key": key}
    if not is_stored(out_dir, key):
        with tempfile.TemporaryDirectory(prefix="leankd-") as tmp:
            _ensure_teacher(cfg, ResultsStore(out_dir / "results.db"), out_dir, base, _run_isolated, Path(tmp))
    return data_dir, key


def _save_teacher_row(out_dir: Path, key: str, row: dict) -> None:
    (teacher_dir(out_dir, key) / "row.json").write_text(json.dumps(row))


def store_reused_teacher(store: ResultsStore, cfg, out_dir: Path, key: str) -> dict:
    """A stored teacher's row for this experiment: its original training ledger, marked as reused."""
    saved = teacher_dir(out_dir, key) / "row.json"
    row = json.loads(saved.read_text())
    row["experiment"] = cfg.name
    row["extra"] = {**row["extra"], "reused_teacher": key}
    store.insert(row)
    return row
