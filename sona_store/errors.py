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


class StoreSchemaError(SonaStoreError, ValueError):
    """A store schema name is invalid, or given where it has no meaning (SQLite)."""


class MissingExtraError(SonaStoreError, ImportError):
    """An optional dependency is not installed (the CLI prints it as one line)."""


class QuarantineError(SonaStoreError, ValueError):
    """A quarantine or release that cannot be done as asked; nothing was written."""


class QuarantineNotFoundError(QuarantineError, LookupError):
    """No quarantine with that id exists."""


class RecordingError(SonaStoreError):
    """Trajectories handed to the store's writer could not be committed."""


class RecordingTimeoutError(RecordingError, TimeoutError):
    """A trajectory was not committed within the store's `write_timeout` (the
    database is failing, or the queue stayed full). A trajectory that was
    queued stays queued: the writer keeps retrying and writes it, once, when
    the database is back."""


class UnwrittenTrajectoriesError(RecordingError):
    """`close()` could not write what was queued: `count` trajectories are
    lost with this process (none of them is half written)."""

    def __init__(self, message: str, *, count: int):
        self.count = count
        super().__init__(message)
