"""Coordination between processes sharing one --out: an exclusive file lock, and whether a pid still lives.

    with locked(out_dir / "teachers", key):    # flock on teachers/<key>.lock; others wait here, then reuse
        ...
    pid_alive(1234)                            # a claim or temp folder of a dead process can be taken over

The lock is released when the block ends or the process dies (the kernel drops flocks of dead processes), so
a killed run never leaves a lock behind. The lock file itself is kept: deleting it would let a waiter and a
newcomer hold locks on two different files.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def locked(root: Path, name: str) -> Iterator[None]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
