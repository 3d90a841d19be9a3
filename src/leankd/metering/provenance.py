"""Where a result came from: code version, library versions, machine, precision.

Usage::

    from leankd.metering.provenance import provenance, now_iso

    record = {"finished_at": now_iso(), "provenance": provenance("cuda:0", "bf16"), ...}

`git_commit` / `git_dirty` are None outside a git checkout (e.g. a pip install);
`code_hash` always identifies the exact leankd sources that ran.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

import leankd

log = logging.getLogger(__name__)

_PKG_DIR = Path(leankd.__file__).resolve().parent


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> str | None:
    """Output of `git <args>` run in the package directory, or None on any failure."""
    try:
        res = subprocess.run(["git", *args], cwd=_PKG_DIR, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def code_hash(pkg_dir: Path = _PKG_DIR) -> str:
    """sha256 (first 16 hex) over every ``*.py`` under `pkg_dir`: relative path + contents."""
    h = hashlib.sha256()
    for path in sorted(pkg_dir.rglob("*.py"), key=lambda p: p.relative_to(pkg_dir).as_posix()):
        h.update(path.relative_to(pkg_dir).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def provenance(device: str, precision: str) -> dict:
    """Everything needed to say what produced a number; cheap (one or two git calls)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit is not None else None
    return {
        "leankd_version": leankd.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "code_hash": code_hash(),
    }


def now_iso() -> str:
    """Current UTC time as ISO-8601 with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
