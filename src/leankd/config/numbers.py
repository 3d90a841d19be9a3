"""The number types of the config schema: what YAML and `key=value` overrides may give where a number is meant.

    epochs: Int = Field(1, gt=0)      # 2 and "2" (an override typed as text) read as 2; true is refused
    seeds: list[Seed] = [0]           # 0 <= seed < 2**63
    lr: Float = Field(0.1, gt=0)      # finite (the models' allow_inf_nan=False), never a boolean

pydantic's lax mode takes a boolean as the number 1 (`train.epochs=true` would train one epoch); integers beyond 64
bits would fail only when the results store or the seeding first meets them, after a teacher has trained.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field


def _not_bool(value: Any) -> Any:
    """YAML reads `true` / `yes` as a boolean: refused where a number is meant."""
    if isinstance(value, bool):
        raise ValueError(f"input should be a number, not the boolean {str(value).lower()}")
    return value


def _in_64_bits(value: int) -> int:
    """Integers are stored as SQLite's (and numpy's) signed 64-bit integers: refused up front, not after a teacher."""
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{value} does not fit in 64 bits: use -2**63 <= n < 2**63 (the results store and the seeding "
                         "hold 64-bit integers)")
    return value


Int = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_in_64_bits)]  # every integer of the config
Seed = Annotated[Int, Field(ge=0)]  # torch, numpy and leankd's counter-based randomness take 0 <= seed < 2**63
Float = Annotated[float, BeforeValidator(_not_bool)]  # every real number of the config
