"""The library's exception types. Every failure a user can cause or meet (bad
input, an unknown id, a file that cannot be read or written, a database that
is busy, down or in conflict) is a SonaStoreError, which the CLI prints as one
line; anything else is a bug and keeps its traceback. Each class is also the
built-in a caller would have caught before it existed (ValueError,
LookupError, OSError), so `except ValueError` keeps working."""

from __future__ import annotations


class SonaStoreError(Exception):
    """Base class of every error sona_store raises on purpose."""


class InvalidInputError(SonaStoreError, ValueError):
    """An argument or value given to sona_store is refused; nothing was written."""


class NotFoundError(SonaStoreError, LookupError):
    """Something asked for by id (a cycle, a LoRA version, an EWC++ state) does not exist."""


class FileAccessError(SonaStoreError, OSError):
    """A file or folder the caller named cannot be read or written."""


class ConfigError(InvalidInputError):
    """A SonaConfig value is out of range, or does not fit the stored one."""


class ValidationError(InvalidInputError):
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


class CycleNotFoundError(NotFoundError):
    """No cycle with that id exists."""


class LoraVersionNotFoundError(NotFoundError):
    """No LoRA version with that id exists."""


class AdapterError(InvalidInputError):
    """A LoRA adapter (or an export's options) cannot be taken: its files, shape,
    scale or tier do not fit the store; nothing was written."""


class RollbackError(InvalidInputError):
    """A rollback or restore was asked for a cycle that cannot take it."""


class VectorsDroppedError(RollbackError):
    """An operation needs trajectory vectors that gc deleted under the
    retention policy (they can be put back from a gc archive)."""


class CycleInProgressError(SonaStoreError):
    """Another cycle (or rollback) holds the store's cycle lock."""


class SlotTakenError(SonaStoreError):
    """Another replica already ran (or is running) the cycle for this slot."""


class CycleFailedError(SonaStoreError):
    """The cycle raised; its work was rolled back and a `failed` record written."""

    def __init__(self, message: str, cycle_id: int | None):
        super().__init__(message)
        self.cycle_id = cycle_id


class DatabaseError(SonaStoreError):
    """The database could not do what was asked, for a reason of its own (see
    the subclasses); the driver's error is the `__cause__`."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached, went away, or is shutting down
    (PostgreSQL SQLSTATE class 08, 57P01-57P03; SQLite SQLITE_CANTOPEN)."""


class DatabaseBusyError(DatabaseError):
    """A lock the operation needed was not granted in time (PostgreSQL
    55P03 lock_not_available; SQLite SQLITE_BUSY after its busy timeout)."""


class TransactionConflictError(DatabaseError):
    """The transaction conflicted with a concurrent one and was rolled back
    (PostgreSQL 40001 serialization_failure, 40P01 deadlock_detected; SQLite
    SQLITE_BUSY_SNAPSHOT); running it again may succeed."""


class StoreSchemaError(InvalidInputError):
    """A store schema name is invalid, or given where it has no meaning (SQLite)."""


class MissingExtraError(SonaStoreError, ImportError):
    """An optional dependency is not installed (the CLI prints it as one line)."""


class QuarantineError(InvalidInputError):
    """A quarantine or release that cannot be done as asked; nothing was written."""


class QuarantineNotFoundError(QuarantineError, NotFoundError):
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
