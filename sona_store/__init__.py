"""sona_store: SONA's runtime learning (trajectories, learned patterns, EWC++,
LoRA) kept durable and auditable in SQLite or PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

from sona_store.config import SonaConfig
from sona_store.errors import (
    AdapterError,
    ConfigError,
    CycleInProgressError,
    CycleNotFoundError,
    DatabaseBusyError,
    DatabaseError,
    DatabaseUnavailableError,
    FileAccessError,
    InvalidInputError,
    LoraVersionNotFoundError,
    NotFoundError,
    QuarantineError,
    QuarantineNotFoundError,
    RollbackError,
    SchemaVersionError,
    SonaStoreError,
    TransactionConflictError,
    ValidationError,
    VectorsDroppedError,
)
from sona_store.results import CycleResult
from sona_store.services.quarantine import QuarantineResult, ReleaseResult
from sona_store.services.retention import GcResult, Policy
from sona_store.store import Pattern, RouteRecommendation, ScoredPattern, SonaStore

try:  # one source: pyproject.toml, as installed
    __version__ = version("sona-store")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = [
    "AdapterError",
    "ConfigError",
    "CycleInProgressError",
    "CycleNotFoundError",
    "CycleResult",
    "DatabaseBusyError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "FileAccessError",
    "GcResult",
    "InvalidInputError",
    "LoraVersionNotFoundError",
    "NotFoundError",
    "Pattern",
    "Policy",
    "QuarantineError",
    "QuarantineNotFoundError",
    "QuarantineResult",
    "ReleaseResult",
    "RollbackError",
    "RouteRecommendation",
    "SchemaVersionError",
    "ScoredPattern",
    "SonaConfig",
    "SonaStore",
    "SonaStoreError",
    "TransactionConflictError",
    "ValidationError",
    "VectorsDroppedError",
    "__version__",
]
