"""The user-facing error types, their one-line messages and exit codes, and the one did-you-mean helper.

    raise ConfigError(f"config error: unknown key 'train.epoch'{did_you_mean('train.epoch', keys)}")

Every error a user can fix (config, data, checkpoint, model/layer, NaN loss) is a `UserError` whose message is
one line naming the problem and the fix; the CLI prints it and exits with `EXIT_USER`. Ctrl-C and SIGTERM
(`Interrupted`, see `raise_on_signals`): the CLI prints one line saying what a rerun resumes from and exits 130 / 143.
Nothing here imports the rest of leankd.
"""
from __future__ import annotations

import difflib
import math
import os
import signal
from typing import Callable, Iterable

EXIT_USER = 2  # a mistake in the user's input: one line on stderr, nothing already written is lost
EXIT_FAILED = 1  # a job failed for another reason (its traceback is in the log)


class UserError(ValueError):
    """A one-line, user-facing error."""


class ConfigError(UserError):
    """A bad config key, value or combination."""


class DataError(UserError):
    """A missing or malformed data file; the message names the file and the expected layout."""


class CheckpointError(UserError):
    """A missing, corrupt or mismatched checkpoint."""


class ModelError(UserError):
    """A model or layer name that does not exist, or a model that cannot be used as asked."""


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became NaN)."""


class JobFailed(RuntimeError):
    """A job exited non-zero; its own one-line error is already in the log."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (see `raise_on_signals`), as a KeyboardInterrupt: `except Exception` never swallows
    it and every `finally` (claims, temp folders, locks) runs on the way out. `where`: what a rerun of the same
    command resumes from, once known."""

    def __init__(self, signum: int = signal.SIGINT, where: str | None = None):
        super().__init__(signum, where)
        self.signum, self.where = int(signum), where

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130 for SIGINT, 143 for SIGTERM): what a shell reports for a process it ended."""
        return 128 + self.signum


def raise_on_signals() -> Callable[[], None]:
    """SIGINT (Ctrl-C) and SIGTERM raise `Interrupted` in this process from now on, once: later ones are ignored while
    it winds up (a second one would break a `finally` half-way, or print a traceback from a destructor). Returns the
    function that puts the previous handlers back. Outside the main thread (no handler can be set there) a no-op."""
    def handler(signum, _frame):
        for sig in before:  # not SIG_IGN: a signal already on its way would then print "ignored due to race condition"
            signal.signal(sig, lambda *_: None)
        raise Interrupted(signum)

    before = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            before[sig] = signal.signal(sig, handler)
    except ValueError:
        return lambda: None

    def restore() -> None:
        for sig, old in before.items():
            signal.signal(sig, old)
    return restore


def check_positive(flags: dict[str, float | None]) -> None:
    """Refuse a flag whose number is not finite and > 0 (`nan`, `inf` and negatives all parse as floats)."""
    for flag, value in flags.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"config error: {flag} must be a finite number > 0, got {value}")


def write_failed(path, reason: str) -> str:
    """The one line for a write that failed for lack of room (disk full, a file-size limit, a quota)."""
    return (f"could not write {path or 'a file'} ({reason}); free disk space or raise the file-size limit, then rerun "
            "the same command: finished jobs, stored teachers and caches are kept")


def not_found(path: str | os.PathLike) -> str:
    """Why a file cannot be read: "not found", or "is a folder, expected a file" (which "not found" would hide)."""
    return "is a folder, expected a file" if os.path.isdir(path) else "not found"


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to `word` (difflib ratio >= cutoff), or None."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6, known: int = 0) -> str:
    """" (did you mean 'x'?)" for the closest candidate; else "; known: a, b, ..." (first `known` of
    them) when `known` > 0, else ""."""
    candidates = list(candidates)
    match = closest(word, candidates, cutoff)
    if match is not None:
        return f" (did you mean '{match}'?)"
    return f"; known: {', '.join(candidates[:known])}" if known and candidates else ""
