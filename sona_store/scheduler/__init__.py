"""The scheduled learning service: APScheduler runs one cycle a slot; health and metrics
endpoints and JSON logs for running it in production.

`SonaScheduler` and `TickReport` are imported on first use: the command line
reads `DEFAULT_GRACE_S` for its help without loading APScheduler."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sona_store.scheduler.service import SonaScheduler, TickReport

# Seconds a running cycle may take to finish after SIGTERM.
DEFAULT_GRACE_S = 30.0


def __getattr__(name: str) -> Any:
    if name in ("SonaScheduler", "TickReport"):
        value = getattr(importlib.import_module("sona_store.scheduler.service"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sona_store.scheduler' has no attribute {name!r}")


__all__ = ["DEFAULT_GRACE_S", "SonaScheduler", "TickReport"]
