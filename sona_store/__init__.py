"""sona_store: SONA's runtime learning (trajectories, learned patterns, EWC++,
LoRA) kept durable and auditable in SQLite or PostgreSQL."""

from sona_store.config import SonaConfig
from sona_store.db.cycles import CycleResult
from sona_store.errors import (
    ConfigError,
    CycleInProgressError,
    CycleNotFoundError,
    DatabaseUnavailableError,
    RollbackError,
    SchemaVersionError,
    SonaStoreError,
    ValidationError,
    VectorsDroppedError,
)
from sona_store.retention import GcResult, Policy
from sona_store.store import Pattern, RouteRecommendation, ScoredPattern, SonaStore

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CycleInProgressError",
    "CycleNotFoundError",
    "CycleResult",
    "DatabaseUnavailableError",
    "GcResult",
    "Pattern",
    "Policy",
    "RollbackError",
    "RouteRecommendation",
    "SchemaVersionError",
    "ScoredPattern",
    "SonaConfig",
    "SonaStore",
    "SonaStoreError",
    "ValidationError",
    "VectorsDroppedError",
]
