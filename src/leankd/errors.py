"""The user-facing error types, their one-line messages and exit codes, and the one did-you-mean helper.

    raise ConfigError(f"config error: unknown key 'train.epoch'{did_you_mean('train.epoch', keys)}")

Every error a user can fix (config, data, checkpoint, model/layer, NaN loss) is a `UserError` whose message is
one line naming the problem and the fix; the CLI prints it and exits with `EXIT_USER`. Nothing here imports
the rest of leankd.
"""
from __future__ import annotations

import difflib
from typing import Iterable

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
