"""The scheduled learning service: APScheduler runs one cycle a slot; health and metrics
endpoints and JSON logs for running it in production."""

from sona_store.scheduler.service import SonaScheduler, TickReport

__all__ = ["SonaScheduler", "TickReport"]
