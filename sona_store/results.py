"""What the API returns about cycles: plain values, no session behind them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CycleResult:
    """What a cycle did; also one row of `history()`."""

    cycle_id: int | None
    status: str
    reason: str | None
    trajectories_processed: int
    patterns_extracted: int
    elapsed: float
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    ewc_updated: bool = False
    window_size: int = 0
    error: str | None = None
    parent_cycle_id: int | None = None
    scheduled_for: dt.datetime | None = None
    actor: str | None = None
    base_lora_version_id: int | None = None
    ewc_state_id: int | None = None
    config: dict[str, Any] | None = None
    attempts: int = 1  # > 1: idle scheduled ticks coalesced into this skipped row
    last_attempt_at: dt.datetime | None = None

    @property
    def status_text(self) -> str:
        """The status as `history` prints it: a coalesced row says how many ticks."""
        return f"{self.status} x{self.attempts}" if self.attempts > 1 else self.status

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, dt.datetime):
                out[key] = value.isoformat()
        return out
