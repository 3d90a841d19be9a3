"""Running an experiment: the teacher once, then every arm x seed, each job's row committed as it finishes.

    rows = run_experiment(cfg, data_dir=Path("../shared/data"), out_dir=Path("runs"))

Every job goes through an executor (executors.py): by default each runs in its own child process (`python -m
leankd.jobs.runner`), one at a time, so a row's `peak_mem_mb` is that job's own peak resident set (`os.wait4`)
less its baseline after imports; `executor=SubmititExecutor(...)` runs each wave's jobs at once on SLURM.
Rerunning the same command resumes: a job whose row (same identity: settings, data files, teacher weights) is
in the store is skipped.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from leankd import dist
from leankd.config import save_config
from leankd.data.files import prepare_out_dir, resolve_data_dir
from leankd.errors import JobFailed
from leankd.experiment import distributed, teachers
from leankd.experiment.executors import POLL_S, Executor, InlineExecutor, LocalExecutor, Pending
from leankd.experiment.identity import IDENTITY_VERSION
from leankd.experiment.plan import Plan
from leankd.jobs.spec import JobSpec
from leankd.locks import locked, pid_alive
from leankd.metering.ledger import build_ledger, recharge, shared_cost
from leankd.models.user import refuse_in_job
from leankd.results.store import ResultsStore
from leankd.resume import Resume
from leankd.tasks import build_task, check_data

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0  # how often a running job's claim is refreshed in the store


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


def shared_reads(result: dict) -> list[dict]:
    """The shared costs a job read (its teacher cache, its layer ranking), as the store records them."""
    cache, ranking = result["extra"].get("cache"), result.get("ranking")
    reads = []
    if cache and cache.get("build_s") is not None:
        reads.append({"resource": cache["path"], "kind": "cache", "experiment": cache["made_for"],
                      "seconds": cache["build_s"], "flops": cache["build_flops"]})
    if ranking and ranking.get("path"):
        reads.append({"resource": ranking["path"], "kind": "ranking", "experiment": ranking.get("experiment"),
                      "seconds": ranking["seconds"], "flops": ranking.get("flops")})
    return reads


def write_row(store: ResultsStore, row: dict, reads: list[dict]) -> dict | None:
    """Insert a row with the shared costs it read, then recharge each of them over all their readers: the row as
    stored (its shares final for now), or None when a row with its key was already there."""
    run_id = store.insert(row, reads)
    if run_id is None:
        return None
    for r in reads:
        store.recharge(r["resource"], recharge)
    return store.get(run_id)


def make_row(cfg, spec: JobSpec, identity: str | None, result: dict, peak_rss_mb: float | None,
             data_files: list | None = None) -> dict:
    """A store row: identity, metrics, the ledger (built in metering.ledger), the data it ran on (folder and file
    identities) and provenance. Its shares of the cache build and the ranking are provisional (planned users)
    until `write_row` recharges them from the readers."""
    share = shared_cost("layer ranking", result["ranking"], cfg.name, spec.ranking_users)
    cache = result["extra"].get("cache")
    build = {"seconds": cache["build_s"], "flops": cache["build_flops"], "experiment": cache["made_for"]} \
        if cache else None
    cache_share = shared_cost("teacher cache build", build, cfg.name, spec.cache["users"] if spec.cache else 1)
    ledger = build_ledger(result["costs"], peak_rss_mb, share, cache_share)
    prov = {**result["provenance"], "config": cfg.model_dump(mode="json")}
    result["extra"]["identity_version"] = IDENTITY_VERSION
    if data_files:
        result["extra"]["data"] = {"dir": spec.data_dir, "files": list(data_files)}
    return {"experiment": cfg.name, "config_hash": identity, "role": spec.role, "arm": spec.arm, "seed": spec.seed,
            "model": result["model"], "task": result["task"], "split": result["split"], "metrics": result["metrics"],
            **ledger, "extra": result["extra"], "provenance": prov,
            "started_at": prov["started_at"], "ended_at": prov["ended_at"]}


def choose_executor(cfg, student=None, teacher=None, executor: Executor | None = None) -> Executor:
    """The one place where an experiment's executor is chosen: the caller's, else a caller's modules run in this
    process, else a child process per job (or in-process with metering.isolate_arms=false)."""
    if executor is not None:
        return executor
    if student is not None or teacher is not None:
        return InlineExecutor(student, teacher)
    return LocalExecutor() if cfg.metering.isolate_arms else InlineExecutor()


def run_data_parallel(cfg, data_dir, out_dir, world: dist.World, user: bool = False) -> list[dict]:
    """Rank 0 runs the experiment with every job sent to all ranks; the other ranks follow it (no store, no rows)."""
    distributed.check_supported(cfg, user)
    distributed.start(world)
    try:
        if not world.main:
            with work_dir(prepare_out_dir(out_dir)) as tmp:
                distributed.follow(world, tmp)
            return []
        executor = distributed.DistributedExecutor(world)
        try:
            return run_experiment(cfg, data_dir, out_dir, executor=executor)
        finally:
            executor.close()
    finally:
        distributed.stop()


def run_experiment(cfg, data_dir: str | Path | None, out_dir: str | Path, student=None,
                   teacher: "torch.nn.Module | None" = None, executor: Executor | None = None) -> list[dict]:
    """Run every job of `cfg`; returns the rows written. Your own models: `student` is an nn.Module (copied
    for each arm x seed) or a zero-arg factory, `teacher` a trained nn.Module (evaluated, not trained). They
    run in this process, so their rows' peak memory reads "unavailable", and their rows are never reused.
    `executor`: where the jobs run (executors.py; None: a child process each, one at a time). Under torchrun /
    accelerate launch (WORLD_SIZE > 1) every job runs data parallel over the launched processes (distributed.py)."""
    refuse_in_job()  # a user's script imported by a job for its models must not start its experiment again
    world = dist.World.from_env()
    if executor is None and world.size > 1:
        return run_data_parallel(cfg, data_dir, out_dir, world, user=student is not None or teacher is not None)
    data_dir = resolve_data_dir(data_dir, cfg.data)
    check_data(cfg, data_dir)  # fail before any work on a missing or malformed file
    out_dir = prepare_out_dir(out_dir)
    store = ResultsStore(out_dir / "results.db")  # a damaged, foreign or busy store: refused before any work
    user = student is not None or teacher is not None
    # layer names are checked against the real models; a folder of images is decoded (once, into <out>/cache) here
    task = None if user else build_task(cfg, data_dir, out_dir / "cache")
    plan = Plan.make(cfg, data_dir, out_dir, task, student, teacher)
    save_config(cfg, out_dir / "configs" / f"{cfg.name}-{cfg.hash()}.yaml")
    executor = choose_executor(cfg, student, teacher, executor)
    written, failures = [], []
    with work_dir(out_dir) as tmp:
        # waves, each waiting for the one before: the teacher; the teacher cache its readers share; every
        # unmatched arm x seed at once; budget-matched arms last (they need their target's row). Seed-major within
        # a wave: every arm's seed s is submitted before any arm's seed s+1, so with one job at a time the arms
        # compared in the report ran close together in time (a shared machine drifts by tens of percent an hour)
        written += ensure_teacher(plan, store, executor, tmp)
        jobs = [(arm, seed) for seed in cfg.seeds for arm in cfg.arms]
        ensure_cache(plan, store, executor, tmp, jobs)
        for matched in (False, True):
            rows, errors = run_wave(plan, store, executor, tmp,
                                    [(a, s) for a, s in jobs if (cfg.arms[a].match is not None) == matched])
            written, failures = written + rows, failures + errors
    if failures:
        raise JobFailed(f"{len(failures)} job(s) failed: " + "; ".join(failures))
    return [store.get(r["id"]) if r.get("id") else r for r in written]  # as stored now: later readers' shares


def ensure_cache(plan: Plan, store: ResultsStore, executor: Executor, work: Path, jobs: list[tuple[str, int]]) -> None:
    """Build the teacher cache (a job that stops after the teacher_cache step) before the students that read it,
    when one of them still has to run and no valid cache exists. If the build fails, each reader builds it itself
    (and fails on its own)."""
    cfg = plan.cfg
    todo = [a for a, s in jobs if not (plan.row_identity(a) and store.find(cfg.name, plan.row_identity(a), a, s))]
    spec = plan.cache_job(dict.fromkeys(todo))
    if spec is None:
        return
    log.info("building the teacher cache for arms %s", ", ".join(a for a in dict.fromkeys(todo)
                                                                 if a in plan.cache_users()))
    try:
        executor.submit(spec, work).result()
    except JobFailed as err:
        log.error("%s; the students that read the cache will try to build it themselves", err)


@dataclass
class _Flying:
    """A student job in flight: its store key and row identity, spec, pending result and claim."""
    key: tuple
    identity: str | None
    spec: JobSpec
    pending: Pending
    claim: contextlib.ExitStack


def run_wave(plan: Plan, store: ResultsStore, executor: Executor, work: Path, jobs: list[tuple[str, int]]
             ) -> tuple[list[dict], list[str]]:
    """Submit every (arm, seed) of `jobs` not already done or run by another live process, in order, each under
    its claim; rows are written here as jobs finish. Returns (rows written, errors)."""
    written, failures, flying = [], [], []

    def collect(block: bool) -> None:
        done: list[_Flying] = []
        while flying:
            done = [f for f in flying if f.pending.done()]
            if done or not block:
                break
            time.sleep(POLL_S)
        for f in done:
            flying.remove(f)
            with f.claim:  # released once its row is written (or its failure recorded)
                row, error = finish_student(plan, store, f)
            written.extend([row] if row else [])
            failures.extend([error] if error else [])

    with contextlib.ExitStack() as claims:  # any claim still held is released if this process stops
        for arm, seed in jobs:
            job = start_student(plan, store, executor, work, arm, seed)
            if isinstance(job, str):
                failures.append(job)
            elif job is not None:
                claims.enter_context(job.claim)
                flying.append(job)
            collect(block=False)  # a job run at submit time (the local executor) is written before the next
        while flying:
            collect(block=True)
    return written, failures


def start_student(plan: Plan, store: ResultsStore, executor: Executor, work: Path, arm: str, seed: int
                  ) -> _Flying | str | None:
    """Claim and submit one student job, unless its row exists or another live process runs it: the job in flight,
    None (skipped), or its error (a budget-matched arm whose target has no row)."""
    cfg, identity = plan.cfg, plan.row_identity(arm)
    key = (cfg.name, identity, arm, seed)
    if identity is not None and store.find(*key):
        log.info("arm %s seed %d already done (row in store); skipping", arm, seed)
        return None
    claim = contextlib.ExitStack()
    holder = claim.enter_context(claimed(store, key)) if identity is not None else None
    if holder is not None:
        log.info("arm %s seed %d is being run by process %d; skipping it here", arm, seed, holder)
        claim.close()
        return None
    if identity is not None and store.find(*key):  # finished by another process just before our claim
        claim.close()
        return None
    try:
        spec = plan.student_job(arm, seed, matched_budget(plan, store, arm, seed))
        return _Flying(key, identity, spec, executor.submit(spec, work), claim)
    except JobFailed as err:
        with claim:
            log.error("%s; continuing with the other arms", err)
            store.record_failure(*key, "student", str(err))
        return str(err)
    except BaseException:
        claim.close()
        raise


def finish_student(plan: Plan, store: ResultsStore, job: _Flying) -> tuple[dict | None, str | None]:
    """A finished student job's row, written to the store: (the row, or None; its error, or None)."""
    arm, seed = job.spec.arm, job.spec.seed
    try:
        result, peak = job.pending.result()
        row = make_row(plan.cfg, job.spec, job.identity, result, peak, plan.data_files)
    except JobFailed as err:
        log.error("%s; continuing with the other arms", err)
        store.record_failure(*job.key, "student", str(err))
        return None, str(err)
    row = write_row(store, row, shared_reads(result))
    if row is None:
        log.warning("arm %s seed %d: a row for it was written meanwhile; not writing a second", arm, seed)
        return None, None
    _drop_checkpoint(job.spec)
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


def ensure_teacher(plan: Plan, store: ResultsStore, executor: Executor, work: Path) -> list[dict]:
    """The teacher's row for this experiment: already there, a stored teacher reused, or trained now. Concurrent
    runs needing the same teacher wait on its lock and reuse what the first one trained."""
    cfg, key, out_dir = plan.cfg, plan.key, plan.out_dir
    if teachers.is_stored(out_dir, key):
        teachers.check_stored(out_dir, key)  # a damaged file is refused before any student reads it
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
                row = make_row(cfg, spec, key, *executor.submit(spec, work).result(), plan.data_files)
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
    data_dir = resolve_data_dir(data_dir, cfg.data)
    check_data(cfg, data_dir)
    out_dir = prepare_out_dir(out_dir)
    plan = Plan.make(cfg, data_dir, out_dir)
    if not teachers.is_stored(out_dir, plan.key):
        with work_dir(out_dir) as tmp:
            ensure_teacher(plan, ResultsStore(out_dir / "results.db"), LocalExecutor(), tmp)
    teachers.check_stored(out_dir, plan.key)  # (a damaged file is refused before it is read)
    return data_dir, plan.key
