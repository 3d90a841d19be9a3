"""`speed:` settings that change how fast a step runs, not what it computes (up to float rounding): measured by
benchmarks/loop_overhead.py (`--compile`, `--memory-format`), so each is on only where it pays."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from leankd.config.base import Strict


class SpeedConfig(Strict):
    compile: bool = Field(False, description="torch.compile the student (and an online teacher): compiled and "
                          "warmed up before training (everything the run depends on put back after), reported as "
                          "extra.compile.compile_s, not in train_s")
    memory_format: Literal["channels_last", "contiguous"] = Field(
        "channels_last", description="image models and batches: channels_last (1.25-1.4x faster steps on CPU "
        "here; tensor cores on GPU) or contiguous (NCHW)")

    def changed(self) -> dict:
        """The settings that differ from the defaults: what the row, teacher and cache identities take in, so rows
        and teachers made at the defaults keep the identities they had before `speed:` existed."""
        return self.model_dump(mode="json", exclude_defaults=True)
