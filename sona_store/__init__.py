"""sona_store: SONA's runtime learning (trajectories, learned patterns, EWC++,
LoRA) kept durable and auditable in SQLite or PostgreSQL."""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from sona_store.services.quarantine import QuarantineResult, ReleaseResult
    from sona_store.services.retention import GcResult, Policy
    from sona_store.store import Pattern, RouteRecommendation, ScoredPattern, SonaStore

# The store and its results load SQLAlchemy and numpy: they are imported on
# first use, so `sona-store --help` (whose modules live in this package) does
# not pay for them.
_LAZY = {
    "QuarantineResult": "sona_store.services.quarantine",
    "ReleaseResult": "sona_store.services.quarantine",
    "GcResult": "sona_store.services.retention",
    "Policy": "sona_store.services.retention",
    "Pattern": "sona_store.store",
    "RouteRecommendation": "sona_store.store",
    "ScoredPattern": "sona_store.store",
    "SonaStore": "sona_store.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sona_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
