"""The library's exception types. User mistakes subclass ValueError or LookupError
so callers can catch them the usual way; the CLI prints them as one line."""

from __future__ import annotations


class SonaStoreError(Exception):
    """Base class of every error sona_store raises on purpose."""


class ConfigError(SonaStoreError, ValueError):
    """A SonaConfig value is out of range, or does not fit the stored one."""


class ValidationError(SonaStoreError, ValueError):
    """A trajectory (or other input) is malformed; nothing of its batch was written."""

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ):
        self.index = index
        self.field = field
        self.line = line
        self.message = message
        where = []
        if line is not None:
            where.append(f"line {line}")
        if index is not None:
            where.append(f"trajectory {index}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class SchemaVersionError(SonaStoreError):
    """The database schema is not the revision this version of sona_store expects."""


class CycleNotFoundError(SonaStoreError, LookupError):
    """No cycle with that id exists."""


class RollbackError(SonaStoreError, ValueError):
    """A rollback or restore was asked for a cycle that cannot take it."""


class VectorsDroppedError(RollbackError):
    """An operation needs trajectory vectors that gc deleted under the
    retention policy (they can be put back from a gc archive)."""


class CycleInProgressError(SonaStoreError):
    """Another cycle (or rollback) holds the store's cycle lock."""


class DatabaseUnavailableError(SonaStoreError):
    """The database could not be reached or refused the operation."""
