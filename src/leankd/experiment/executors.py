"""Executors: where an experiment's jobs run. Every job (teacher, teacher cache, student) goes through one.

    executor = LocalExecutor()                    # the default: a child process per job, one at a time
    pending = executor.submit(spec, work)         # -> Pending
    result, peak_mb = pending.result()            # raises JobFailed with the job's one-line error

    executor = SubmititExecutor(out / ".submitit", cluster="slurm", partition="gpu", time_min=120, gpus=1)

`LocalExecutor` runs the job at submit time (so jobs never overlap and their timings stay honest);
`InlineExecutor` runs it in this process (a caller's modules, or metering.isolate_arms=false: no peak memory of
its own); `SubmititExecutor` hands it to submitit (SLURM, or `cluster="local"` processes on this machine), many
jobs in flight at once, each still in its own measured child process; a failed job is resubmitted once.
submitit is optional: `pip install 'leankd[cluster]'`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

from leankd.errors import ConfigError, Interrupted, JobFailed, TrainingError
from leankd.jobs.spec import JobSpec, error_path
from leankd.models.user import IN_JOB_ENV

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often in-flight submitit jobs are looked at (submitit rate-limits its own SLURM queries)


class Pending(Protocol):
    def done(self) -> bool: ...  # finished (its result() does not block)

    def result(self) -> tuple[dict, float | None]: ...  # (the job's result, its peak RSS in MB or None)


class Executor(Protocol):
    def submit(self, spec: JobSpec, work: Path) -> Pending: ...


def failed(spec: JobSpec, why: str) -> JobFailed | ConfigError:
    """A job's failure; a config error is the experiment's (its config would fail every job: the key it names,
    e.g. student.model, is the culprit, not the job it first showed in)."""
    if why.startswith("config error:"):
        return ConfigError(why)
    what = "teacher cache" if spec.until == "teacher_cache" else spec.role
    return JobFailed(f"{what} job '{spec.arm}' (seed {spec.seed}) failed: {why}")


def job_name(spec: JobSpec) -> str:
    return f"{spec.arm}-{spec.seed}" + (f"-until-{spec.until}" if spec.until else "")


class Finished:
    """A job that ran at submit time: its outcome, or its error."""

    def __init__(self, outcome: tuple[dict, float | None] | None = None, error: JobFailed | None = None):
        self.outcome, self.error = outcome, error

    def done(self) -> bool:
        return True

    def result(self) -> tuple[dict, float | None]:
        if self.error is not None:
            raise self.error
        return self.outcome


def run_child(spec: JobSpec, work: Path, env: dict | None = None) -> tuple[dict, float | None]:
    """The job in a child process that dies with this one (`python -m leankd.jobs.runner`): (its result, its peak
    RSS from os.wait4). `env`: extra environment for the child."""
    from leankd.metering.memory import run_child_measured  # imports torch: not at import time of a cluster job

    name = job_name(spec)
    job_file, result_file = work / f"{name}.job.json", work / f"{name}.result.json"
    job_file.write_text(spec.to_json())
    result_file.unlink(missing_ok=True)
    error_path(result_file).unlink(missing_ok=True)  # a resubmitted job's first error is not its second's
    try:
        # IN_JOB_ENV: a user's script that the child imports for its models must not start its experiment there
        code, peak_mb = run_child_measured([sys.executable, "-m", "leankd.jobs.runner", str(job_file),
                                            str(result_file)], {**os.environ, "PYTHONUNBUFFERED": "1", IN_JOB_ENV: "1",
                                                                **(env or {})})
        sig = code - 128 if code > 128 else -code  # its handler's exit code, or the signal that ended it
        if sig in (signal.SIGINT, signal.SIGTERM):  # the job was interrupted: the run stops with it
            raise Interrupted(sig)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM (Interrupted)
        raise Interrupted(getattr(err, "signum", signal.SIGINT), getattr(err, "where", None) or resume_point(spec)) \
            from None
    if code != 0 or not result_file.is_file():
        error = error_path(result_file)
        raise failed(spec, error.read_text().strip() if error.is_file() else f"exit code {code}")
    return json.loads(result_file.read_text()), peak_mb


def resume_point(spec: JobSpec) -> str:
    """What a rerun of an interrupted job resumes from: its last checkpoint (epoch, step), or its start."""
    from leankd.resume import Resume

    what = ("the teacher cache build" if spec.until == "teacher_cache" else "the teacher" if spec.role == "teacher"
            else f"arm {spec.arm} seed {spec.seed}")
    at = Resume(spec.checkpoint["path"], spec.checkpoint["identity"]).position() if spec.checkpoint else None
    return f"{what} at epoch {at[0]} step {at[1]} (its last checkpoint)" if at else f"the start of {what}"


class LocalExecutor:
    """Today's default: each job in its own child process, run to the end at submit time."""

    def submit(self, spec: JobSpec, work: Path) -> Finished:
        try:
            return Finished(run_child(spec, work))
        except JobFailed as err:
            return Finished(error=err)


class InlineExecutor:
    """Each job in this process (a caller's `student` / `teacher` modules, or metering.isolate_arms=false)."""

    def __init__(self, student=None, teacher=None):
        self.student, self.teacher = student, teacher

    def submit(self, spec: JobSpec, work: Path) -> Finished:
        from leankd.jobs.runner import run_job

        model = self.teacher if spec.role == "teacher" else self.student
        try:
            return Finished((run_job(spec, model=model, teacher=self.teacher), None))
        except TrainingError as err:  # as a child's failure: the experiment goes on with the other jobs
            return Finished(error=failed(spec, str(err)))


def cluster_job(spec_json: str, work: str, env: dict) -> dict:
    """What a submitit job runs: the job in a measured child process. Returns {"result", "peak_mb"} or, when the
    job failed, {"error": its one line} (an exception would reach the parent as a whole traceback)."""
    try:
        result, peak = run_child(JobSpec.from_json(spec_json), Path(work), env)
    except (JobFailed, ConfigError) as err:
        return {"error": str(err)}
    return {"result": result, "peak_mb": peak}


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm / submitit-local need submitit: pip install 'leankd[cluster]'") from None
    return submitit


class SubmititExecutor:
    """Jobs through `submitit.AutoExecutor` (cluster "slurm", or "local": processes on this machine). Every
    submitted job is in flight at once; a failed one is resubmitted `retries` times (once by default)."""

    def __init__(self, folder: str | Path, cluster: str = "slurm", partition: str | None = None,
                 time_min: int = 60, gpus: int = 0, cpus: int | None = None, mem_gb: float | None = None,
                 account: str | None = None, qos: str | None = None, additional: dict | None = None,
                 retries: int = 1):
        submitit = _import_submitit()
        self.retries, self.cluster = retries, cluster
        self._failures = (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError)
        try:
            self._ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        except RuntimeError as err:  # e.g. no `srun` on this machine
            raise ConfigError(f"--executor {cluster}: {err}; run from a SLURM login node, or use --executor "
                              "submitit-local") from None
        params = {"timeout_min": time_min, "gpus_per_node": gpus, "cpus_per_task": cpus, "mem_gb": mem_gb,
                  "name": "leankd", "slurm_partition": partition, "slurm_account": account, "slurm_qos": qos,
                  "slurm_additional_parameters": additional}
        self._ex.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def job_env(self, spec: JobSpec, attempt: int) -> dict:
        """Extra environment for the job's child process on attempt `attempt` (0: the first)."""
        return {}

    def start(self, spec: JobSpec, work: Path, attempt: int):
        return self._ex.submit(cluster_job, spec.to_json(), str(work), self.job_env(spec, attempt))

    def submit(self, spec: JobSpec, work: Path) -> "SubmititPending":
        return SubmititPending(self, spec, work)

    def outcome(self, job) -> dict:
        """A finished submitit job's {"result", "peak_mb"} or {"error"}, a lost job (killed, timed out) included."""
        try:
            return job.result()
        except self._failures as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("---")]
            ends = [i for i, ln in enumerate(lines) if ln.startswith("You can check")]
            line = lines[ends[0] - 1] if ends and ends[0] > 0 else (lines[0] if lines else type(err).__name__)
            return {"error": f"{self.cluster} job {job.job_id}: {line}"}


class SubmititPending:
    """A job in flight under submitit; resubmitted when it fails, until its retries are spent."""

    def __init__(self, owner: SubmititExecutor, spec: JobSpec, work: Path):
        self.owner, self.spec, self.work, self.attempt = owner, spec, work, 0
        self.job, self.final = owner.start(spec, work, 0), None

    def done(self) -> bool:
        if self.final is None and self.job.done():
            outcome = self.owner.outcome(self.job)
            config = outcome.get("error", "").startswith("config error:")  # would fail again: not resubmitted
            if "error" in outcome and not config and self.attempt < self.owner.retries:
                self.attempt += 1
                log.warning("%s; resubmitting it (attempt %d of %d)", outcome["error"], self.attempt + 1,
                            self.owner.retries + 1)
                self.job = self.owner.start(self.spec, self.work, self.attempt)
                return False
            self.final = outcome
        return self.final is not None

    def result(self) -> tuple[dict, float | None]:
        while not self.done():
            time.sleep(POLL_S)
        if "error" in self.final:
            why = self.final["error"]
            raise JobFailed(why) if " failed: " in why and not why.startswith("config error:") else \
                failed(self.spec, why)
        return self.final["result"], self.final["peak_mb"]


def from_args(args) -> SubmititExecutor | None:
    """The executor `leankd run`'s options ask for; None for local (run_experiment's own choice)."""
    if args.executor == "local":
        return None
    folder = Path(args.executor_folder) if args.executor_folder else Path(args.out) / ".submitit"
    return SubmititExecutor(folder, cluster="slurm" if args.executor == "slurm" else "local",
                            partition=args.slurm_partition, time_min=args.slurm_time, gpus=args.slurm_gpus,
                            cpus=args.slurm_cpus, mem_gb=args.slurm_mem, account=args.slurm_account,
                            qos=args.slurm_qos)
