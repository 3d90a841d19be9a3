"""Memory figures: host RSS of this process or a child, and CUDA peak.

Usage::

    from leankd.metering import memory

    memory.current_rss_mb()                 # resident set size now
    memory.peak_rss_mb()                    # high-water mark of this process
    rc, peak = memory.run_child_measured([sys.executable, "train.py"])
    memory.reset_cuda_peak(device); ...; memory.cuda_peak_mb(device)

`run_child_measured` is the honest way to get the peak of one run: a fresh
process's high-water mark is not inflated by whatever ran before it in the
parent (imports, earlier experiments).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import subprocess
import sys

import torch

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_S = 5.0  # how long a child asked to stop (SIGTERM) may take before it is killed

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    """Read a `kB` field (e.g. VmRSS) from /proc/self/status; None if unavailable."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS; we only claim Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (falls back to the peak)."""
    kib = _status_kib("VmRSS")
    return kib / 1024.0 if kib is not None else _maxrss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process so far, in MiB."""
    kib = _status_kib("VmHWM")
    return kib / 1024.0 if kib is not None else _maxrss_mb()


def _die_with_parent(parent: int):
    """Run in the child before exec: the kernel SIGKILLs it when its parent dies (Linux PR_SET_PDEATHSIG), so a
    killed `leankd run` never leaves an orphan job training on; elsewhere a no-op. prctl is looked up here, in
    the parent: the forked child (the parent has threads, e.g. a claim's heartbeat) only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above ran
            os._exit(1)
    return arm


def run_child_measured(cmd: list[str], env: dict | None = None) -> tuple[int, float]:
    """Run `cmd` to completion; return ``(returncode, peak_rss_mb)`` of that child.

    stdout/stderr are inherited. The peak comes from the child's own rusage
    (`os.wait4`), so it covers only the child, not grandchildren it spawned
    and did not wait for.
    """
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent(os.getpid()))
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # e.g. Ctrl-C or SIGTERM: the child is asked to stop (it exits quietly), killed if it lingers
        proc.terminate()
        try:
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    # We reaped the child ourselves; tell Popen so it never waits on the pid again.
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_mb = usage.ru_maxrss / 1024.0  # KiB on Linux
    log.debug("run_child_measured: rc=%d peak=%.1f MiB cmd=%s", proc.returncode, peak_mb, cmd)
    return proc.returncode, peak_mb


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def reset_cuda_peak(device) -> None:
    """Reset the CUDA allocator's peak counter for `device`; no-op off CUDA."""
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device) -> float | None:
    """Peak CUDA memory allocated by tensors on `device` since the last reset, MiB; None off CUDA."""
    if not _is_cuda(device):
        return None
    return torch.cuda.max_memory_allocated(device) / (1024.0 * 1024.0)
