"""The Python API: an experiment run as `leankd run` runs it, with the same log lines and report files.

    from leankd.api import run_experiment
    from leankd.config import load_config

    rows = run_experiment(load_config("configs/demo/cifar10-resnet20-resnet8.yaml"), "../shared/data", "runs")
    # -> rows in runs/results.db, and runs/report.md, report.json, report.html (also when some jobs failed)

It sits above `leankd.experiment` (which runs the jobs and writes the rows) and `leankd.report` (which writes the
report), which do not import each other; `leankd run` calls this function too.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from leankd.dist import World
from leankd.errors import JobFailed
from leankd.experiment import run_experiment as run_jobs
from leankd.report.table import write_report
from leankd.results.store import ResultsStore

log = logging.getLogger("leankd")


def run_experiment(cfg, data_dir: str | Path | None, out_dir: str | Path, student=None, teacher=None,
                   executor=None, show: Callable[[str], object] | None = None) -> list[dict]:
    """Run every job of `cfg` (leankd.experiment.run_experiment: arguments and rows as there), then write the
    experiment's report under `out_dir`, also when some jobs failed (their JobFailed is raised after it).
    `show` is called with the report's Markdown (`leankd run` prints it)."""
    log.info("experiment %s (config hash %s): arms %s, seeds %s", cfg.name, cfg.hash(), list(cfg.arms), cfg.seeds)
    try:
        rows = run_jobs(cfg, data_dir, out_dir, student=student, teacher=teacher, executor=executor)
    except JobFailed:  # the rows that did finish are reported, with the failed jobs listed under them
        _report(cfg.name, out_dir, show)
        raise
    _report(cfg.name, out_dir, show)
    return rows


def _report(name: str, out_dir: str | Path, show: Callable[[str], object] | None) -> None:
    """Write the report of experiment `name` (report.md, .json, .html under out_dir) and show its Markdown; nothing
    when it has no rows yet, or on a data parallel rank other than 0 (rank 0 writes it)."""
    if not World.from_env().main:
        return
    store = ResultsStore(Path(out_dir) / "results.db")
    rows = store.rows(name)
    if rows:
        text = write_report(rows, out_dir, name, store.failures(name))
        if show is not None:
            show(text)
