"""Mid-run checkpoints of the training loop: written atomically and checksummed, read back to resume.

    ckpt = Resume(path, identity=spec_hash, every_s=300)
    state = ckpt.load()                    # None: start fresh (no file, another job's file, or a damaged one)
    ...
    if ckpt.due(step):                     # every `every_s` seconds of work, or every `every_steps` steps
        ckpt.save(loop_state)              # temp file, fsync, rename: the previous checkpoint stays valid until then
    ckpt.beat(train_s)                     # how far the loop got (tiny file), so a resume knows the work it lost
    ckpt.position()                        # (epoch, step) a rerun resumes at, from that file: e.g. for Ctrl-C's line
    ckpt.remove()                          # after the job's row is stored

File layout: 8-byte magic, 32-byte sha256 of the payload, the payload (`torch.save` of a dict of tensors,
numbers and strings). A file whose digest does not match, or that was written for another job (`identity`),
is never read: the loop starts from its previous valid checkpoint (`<path>.prev`) or from scratch, and says so.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path

import torch

from leankd.errors import CheckpointError

log = logging.getLogger(__name__)
MAGIC = b"LKDCKPT1"
FORMAT = 1


def _atomic_write(path: Path, data: bytes, keep: Path | None = None) -> None:
    """data to `path` via a temp file in the same folder, fsync, rename (the old `path` renamed to `keep` first,
    when given); on any error (disk full, file-size limit) the temp file is removed, `path` is untouched, and
    CheckpointError says what happened."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep is not None and path.is_file():
            os.replace(path, keep)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path} ({err.strerror or err}); free disk space or raise the "
                              f"file-size limit, then rerun the same command: the previous checkpoint is intact") \
            from None


def _encode(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(data: bytes) -> dict | None:
    """The state in `data`, or None when it is not an intact checkpoint."""
    if len(data) < 40 or data[:8] != MAGIC or hashlib.sha256(data[40:]).digest() != data[8:40]:
        return None
    try:
        return torch.load(io.BytesIO(data[40:]), map_location="cpu", weights_only=True)
    except Exception:  # a payload that hashes right but will not load was written by another torch: not ours
        return None


class Resume:
    """The checkpoints of one job's training loop."""

    def __init__(self, path: str | Path, identity: str, every_s: float = 300.0, every_steps: int = 0,
                 write: bool = True):
        self.path, self.identity, self.write = Path(path), identity, write  # write False: a data parallel
        # rank other than 0, which resumes from rank 0's checkpoints and never writes one
        self.every_s, self.every_steps = every_s, every_steps
        self.prev = self.path.with_name(self.path.name + ".prev")
        self.progress = self.path.with_name(self.path.name + ".progress")
        self._last_save = time.monotonic()
        self._last_beat = 0.0
        self._at: list[int] | None = None  # (epoch, step) of the newest checkpoint, as the resume log names it

    def load(self) -> dict | None:
        """The newest intact checkpoint written for this job, or None."""
        for path in (self.path, self.prev):
            if not path.is_file():
                continue
            state = _decode(path.read_bytes())
            if state is None:
                log.warning("checkpoint %s is damaged (checksum mismatch); not read", path)
            elif state.get("identity") != self.identity or state.get("format") != FORMAT:
                log.warning("checkpoint %s was written for another job or settings; starting fresh", path)
                return None
            else:
                self._at = [state["epoch"] + 1, state["step"]] if "epoch" in state else None
                return state
        return None

    def position(self) -> tuple[int, int] | None:
        """(epoch, step) a rerun would resume at (1-based epoch, steps done in it), as this job's progress file last
        recorded it, without reading the checkpoint itself; None when no checkpoint was written for this job."""
        try:
            reached = json.loads(self.progress.read_text())
        except (OSError, ValueError):
            return None
        at = reached.get("at") if reached.get("identity") == self.identity else None
        return (int(at[0]), int(at[1])) if at and self.path.is_file() else None

    def lost_s(self, state: dict | None) -> float:
        """Seconds of training done after `state` was saved and lost when the run stopped (0 for a fresh start)."""
        try:
            reached = json.loads(self.progress.read_text())
        except (OSError, ValueError):
            return 0.0
        if reached.get("identity") != self.identity:
            return 0.0
        return max(0.0, float(reached.get("train_s", 0.0)) - (state["train_s"] if state else 0.0))

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return self.every_s > 0 and time.monotonic() - self._last_save >= self.every_s

    def save(self, state: dict) -> None:
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = _encode({**state, "identity": self.identity, "format": FORMAT})
        _atomic_write(self.path, data, keep=self.prev)  # the one before stays readable as .prev
        self._last_save = time.monotonic()
        self._at = [state["epoch"] + 1, state["step"]] if "epoch" in state else None
        self._write_progress(state.get("train_s", 0.0))

    def beat(self, train_s: float) -> None:
        """Record how far training got (at most once a second; no fsync, it is only an estimate): the work a
        crash loses is the last beat minus the checkpoint resumed from, to within a second."""
        now = time.monotonic()
        if self.write and now - self._last_beat >= 1.0:
            self._last_beat = now
            self._write_progress(train_s)

    def _write_progress(self, train_s: float) -> None:
        tmp = self.progress.with_name(f".{self.progress.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"identity": self.identity, "train_s": train_s, "at": self._at}))
            os.replace(tmp, self.progress)
        except OSError:
            pass  # only the lost-work estimate and `position` read it; checkpoint writes report their own errors

    def remove(self) -> None:
        for path in (self.path, self.prev, self.progress):
            path.unlink(missing_ok=True)


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

