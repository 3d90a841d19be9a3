"""Runs one job: its steps in order, in this process or as a child process of the experiment.

    python -m leankd.jobs.runner JOB.json RESULT.json     # what the experiment's local executor runs

JOB.json is a `JobSpec`; RESULT.json receives the job's metrics, what it measured, extra and provenance (the
parent adds the child's peak memory and builds the row's ledger). A user error exits with EXIT_USER after
logging its one line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import sys
from pathlib import Path

from leankd.errors import EXIT_USER, UserError, raise_on_signals, write_failed
from leankd.jobs.spec import JobSpec, error_path
from leankd.jobs.steps import STEPS, Job
from leankd.log import setup_logging
from leankd.metering.provenance import now_iso

log = logging.getLogger(__name__)


def run_job(spec: JobSpec, model=None, teacher=None) -> dict:
    """Run every step of `spec` (up to `spec.until`); `model` / `teacher` are the caller's modules when spec says
    "user". A job stopped early returns what its steps recorded: {"until", "extra", "started_at", "ended_at"}."""
    if spec.until is not None and spec.until not in [s.__name__ for s in STEPS]:
        raise ValueError(f"job spec: until={spec.until!r} is not a step ({', '.join(s.__name__ for s in STEPS)})")
    job = Job(spec, user_model=model, user_teacher=teacher)
    try:
        for step in STEPS:
            step(job)
            if step.__name__ == spec.until:  # e.g. the teacher cache built: no student is trained
                return {"until": spec.until, "extra": job.extra, "started_at": job.started, "ended_at": now_iso()}
    finally:
        if job.distiller is not None:
            job.distiller.close()  # hooks never outlive the job, even on an error (user modules run in-process)
    return job.result()


def _leave_error(result_file: Path, line: str) -> None:
    """The job's one-line error for the parent's failure record (best effort: the disk may be full)."""
    with contextlib.suppress(OSError):
        error_path(result_file).write_text(line)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit fails the write (EFBIG), not the process
    spec, result_file = JobSpec.from_json(Path(argv[0]).read_text()), Path(argv[1])
    restore = raise_on_signals()  # SIGTERM from the parent; Ctrl-C reaches the job too (the terminal's group)
    try:
        result = run_job(spec)
    except KeyboardInterrupt as err:  # quietly: the parent prints the one line, with what a rerun resumes from
        return getattr(err, "exit_code", 128 + signal.SIGINT)
    except UserError as err:
        log.error("%s", err)
        _leave_error(result_file, str(err))
        return EXIT_USER
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            _leave_error(result_file, f"internal error: {type(err).__name__}: {err}")
            raise
        line = write_failed(err.filename, err.strerror)
        log.error("%s", line)
        _leave_error(result_file, line)
        return EXIT_USER
    except Exception as err:
        _leave_error(result_file, f"internal error: {type(err).__name__}: {err}")
        raise
    finally:
        restore()
    result_file.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
