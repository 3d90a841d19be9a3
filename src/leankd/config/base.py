"""What every config section shares: strict models (unknown keys refused, no nan/inf) and YAML's on/off words."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # no nan, no inf


def on_off(value: Any) -> Any:
    """YAML reads bare `on` / `off` as booleans: take them back as the words the user wrote."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
