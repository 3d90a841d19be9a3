"""Fault injection for the reliability tests: LEANKD_FAULT="<kind>@<tag>:<step>[,<kind>@<tag>:<step>...]".

    LEANKD_FAULT=nan@kd/s0:5        the loss of job kd/s0 is NaN at its 5th step (1-based)
    LEANKD_FAULT=kill@kd/s0:7       SIGKILL the job's whole process group at that step (like `kill -9 -PGID`)
    LEANKD_FAULT=killparent@kd/s0:7 SIGKILL only the job's parent (the `leankd run` process)
    LEANKD_FAULT=pause@kd/s0:7      log "fault: kd/s0 paused at step 7" and wait there until a signal ends the job

`<tag>` is a job's tag (`arm/s<seed>`, `teacher/s<seed>`). Unset (the normal case), `at` costs one dict lookup.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import torch


def _parse(text: str) -> dict[tuple[str, int], str]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        kind, _, where = item.partition("@")
        tag, _, step = where.rpartition(":")
        out[(tag, int(step))] = kind
    return out


_FAULTS = _parse(os.environ.get("LEANKD_FAULT", ""))


def at(tag: str, step: int, loss: torch.Tensor) -> torch.Tensor:
    """The loss of global step `step` (1-based) of job `tag`, after any fault planned there."""
    kind = _FAULTS.get((tag, step)) if _FAULTS else None
    if kind == "nan":
        return loss * float("nan")
    if kind == "kill":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    if kind == "killparent":
        os.kill(os.getppid(), signal.SIGKILL)
    if kind == "pause":  # a test sends Ctrl-C or SIGTERM here, at a known point in the middle of a job
        logging.getLogger(__name__).warning("fault: %s paused at step %d", tag, step)
        while True:
            time.sleep(1)
    return loss
