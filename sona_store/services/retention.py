"""Retention: gc deletes the vectors the store no longer needs, explicitly and
audited, and gives the space back; `restore_vectors` puts archived ones back.

Which vectors may go is decided in SQL (`db.retention`, its docstring says
exactly). gc runs in one transaction under the cycle lock, so no cycle or
rollback moves the window or the horizon meanwhile, and writes one `gc` audit
row with what it deleted. With an archive directory, the vectors are first
written there as gzip JSONL in the ingest format, each line with its `id`;
the file is complete (renamed from `.partial`) before the transaction
commits, and removed if it does not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import logging
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sona_store.config import SonaConfig
from sona_store.db import cycles, trajectories
from sona_store.db import retention as db
from sona_store.db.driver import Driver
from sona_store.db.engine import transaction
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.models import Trajectory
from sona_store.db.retention import Policy as Policy
from sona_store.db.types import utcnow
from sona_store.errors import FileAccessError, InvalidInputError, ValidationError
from sona_store.services.validation import archived_id, read_jsonl, validate_batch

logger = logging.getLogger("sona_store")

ARCHIVE_SUFFIX = ".jsonl.gz"


@dataclass(frozen=True)
class GcResult:
    """What one gc did. `trajectories`: how many lost their vectors."""

    trajectories: int
    steps: int
    first_id: int | None
    last_id: int | None
    archive: str | None
    audit_id: int | None
    policy: Policy
    pages_reclaimed: int
    bytes_reclaimed: int
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "policy": self.policy.to_dict()}


def as_seconds(value: float | dt.timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise InvalidInputError(f"older_than must be seconds >= 0 or a timedelta, got {value!r}")
    return float(seconds)  # the range is checked by Policy


def effective_policy(
    stored: Policy,
    older_than: float | dt.timedelta | None,
    horizon_cycles: int | None,
    archive: str | os.PathLike[str] | None,
) -> Policy:
    """The stored policy, with each limit given here taking its place."""
    return Policy(
        max_age_seconds=as_seconds(older_than)
        if older_than is not None
        else stored.max_age_seconds,
        horizon_cycles=horizon_cycles if horizon_cycles is not None else stored.horizon_cycles,
        archive_dir=os.fspath(archive) if archive is not None else stored.archive_dir,
    )


def gc(
    engine: Engine,
    config: SonaConfig,
    *,
    older_than: float | dt.timedelta | None = None,
    horizon_cycles: int | None = None,
    archive: str | os.PathLike[str] | None = None,
    actor: str,
) -> GcResult:
    """Delete the vectors the policy lets go (None: the stored policy's
    value), archiving them first when an archive directory is given or
    stored; then give the pages back (SQLite)."""
    clock = time.perf_counter()
    now = utcnow()
    writer: ArchiveWriter | None = None
    written: Path | None = None
    try:
        with transaction(engine, immediate=True) as session:
            acquire_cycle_lock(session, wait=True)
            policy = effective_policy(db.read_policy(session), older_than, horizon_cycles, archive)
            ids, bounds = db.droppable_ids(
                session, window=config.retention_window, policy=policy, now=now
            )
            if not len(ids):
                return GcResult(0, 0, None, None, None, None, policy, 0, 0, _since(clock))
            if policy.archive_dir is not None:
                writer = ArchiveWriter(Path(policy.archive_dir), now, int(ids[0]), int(ids[-1]))
            steps = 0
            for chunk in db.chunks(ids):
                if writer is not None:
                    writer.write(db.archive_items(session, chunk))
                steps += db.drop_vectors(session, chunk, now)
            if writer is not None:
                written = writer.finish()
            event = cycles.add_audit(
                session,
                actor=actor,
                action="gc",
                reason=policy.describe(),
                details={
                    "trajectories": len(ids),
                    "steps": steps,
                    "first_id": int(ids[0]),
                    "last_id": int(ids[-1]),
                    "archive": str(written) if written is not None else None,
                    "policy": {
                        "max_age_seconds": policy.max_age_seconds,
                        "horizon_cycles": policy.horizon_cycles,
                    },
                    **bounds,
                },
            )
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        elif writer is not None:
            writer.discard()
        raise
    pages, freed = reclaim(engine)
    result = GcResult(
        trajectories=len(ids),
        steps=steps,
        first_id=int(ids[0]),
        last_id=int(ids[-1]),
        archive=str(written) if written is not None else None,
        audit_id=event.id,
        policy=policy,
        pages_reclaimed=pages,
        bytes_reclaimed=freed,
        elapsed=_since(clock),
    )
    logger.info(
        "gc: vectors of %d trajectories (%d..%d) deleted under %s%s; %d bytes given back",
        result.trajectories,
        result.first_id,
        result.last_id,
        policy.describe(),
        f", archived to {result.archive}" if result.archive else "",
        freed,
    )
    return result


def _since(clock: float) -> float:
    return time.perf_counter() - clock


class ArchiveWriter:
    """One gzip JSONL file, written as `.partial` and renamed once complete."""

    def __init__(self, directory: Path, now: dt.datetime, first_id: int, last_id: int):
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        self.path = directory / f"sona-gc-{stamp}-{first_id}-{last_id}{ARCHIVE_SUFFIX}"
        self.partial = self.path.with_name(self.path.name + ".partial")
        with self._writing():
            directory.mkdir(parents=True, exist_ok=True)
            self._raw: IO[bytes] = open(self.partial, "xb")  # noqa: SIM115 (closed in finish)
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The archive folder the caller named refuses (no permission, a full
        disk): FileAccessError naming the archive; gc then deletes nothing."""
        try:
            yield
        except OSError as exc:
            raise FileAccessError(
                f"{self.path}: cannot write the archive ({exc.strerror or exc})"
            ) from exc

    def write(self, items: list[dict[str, Any]]) -> None:
        with self._writing():
            self._gzip.write("".join(db.archive_line(item) for item in items).encode())

    def finish(self) -> Path:
        with self._writing():
            self._gzip.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self.partial, self.path)
        return self.path.resolve()

    def discard(self) -> None:
        self._gzip.close()
        self._raw.close()
        self.partial.unlink(missing_ok=True)


# -- giving space back -------------------------------------------------------------------


def _sqlite_file(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


def reclaim(engine: Engine) -> tuple[int, int]:
    """SQLite with incremental auto-vacuum: hand the free pages back to the
    file system and truncate the log; returns (pages, bytes). Other SQLite
    files keep their free pages for reuse (`sona-store db vacuum` converts
    them); PostgreSQL's autovacuum makes the space reusable."""
    if not _sqlite_file(engine):
        return 0, 0
    raw = engine.raw_connection()
    try:
        connection = cast(Any, raw.driver_connection)  # the sqlite3 connection
        mode = connection.execute("PRAGMA auto_vacuum").fetchone()[0]
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        if mode != 2:
            if free:
                logger.info(
                    "%d free pages stay in the file (it predates incremental auto-vacuum): "
                    "run sona-store db vacuum once to convert it",
                    free,
                )
            return 0, 0
        # executescript steps the pragma to its end (execute frees one page).
        connection.executescript("PRAGMA incremental_vacuum")
        left = connection.execute("PRAGMA freelist_count").fetchone()[0]
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return free - left, (free - left) * page_size
    finally:
        raw.close()


def file_bytes(engine: Engine) -> int:
    """Bytes the store takes on disk: an SQLite file and its log, or the
    PostgreSQL relations of the store's tables."""
    if _sqlite_file(engine):
        path = Path(str(engine.url.database))
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return int(
                connection.scalar(
                    sa.text(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)"
                        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE c.relkind = 'r' AND n.nspname = current_schema()"
                    )
                )
            )
    return 0


def vacuum(engine: Engine) -> tuple[int, int]:
    """Rebuild the store to give free space back; returns bytes (before,
    after). SQLite: switch to incremental auto-vacuum (files made before it)
    and VACUUM, which rewrites the whole file (it needs that much free disk
    and holds the write lock meanwhile). PostgreSQL: VACUUM ANALYZE of the
    trajectory tables (the space becomes reusable; autovacuum does the same)."""
    before = file_bytes(engine)
    if _sqlite_file(engine):
        raw = engine.raw_connection()
        try:
            connection = cast(Any, raw.driver_connection)  # the sqlite3 connection
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
            connection.executescript("VACUUM")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.close()
    elif engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(
                sa.text("VACUUM (ANALYZE) trajectory_steps, trajectory_vectors, trajectories")
            )
    return before, file_bytes(engine)


# -- the policy -------------------------------------------------------------------------


def set_policy(engine: Engine, policy: Policy, *, actor: str, reason: str | None) -> int:
    """Store `policy` (Policy() removes it) and audit the change; returns the
    audit id."""
    with transaction(engine, immediate=True) as session:
        acquire_cycle_lock(session, wait=True)
        before = db.read_policy(session)
        db.write_policy(session, policy, actor=actor, now=utcnow())
        return cycles.add_audit(
            session,
            actor=actor,
            action="set_retention",
            reason=reason,
            details={"from": before.to_dict(), "to": policy.to_dict()},
        ).id


def read_policy(engine: Engine) -> Policy:
    with transaction(engine) as session:
        return db.read_policy(session)


# -- putting vectors back ----------------------------------------------------------------


def restore_vectors(
    engine: Engine,
    config: SonaConfig,
    lines: Iterable[str | bytes],
    *,
    actor: str,
    chunk_size: int = 1000,
) -> int:
    """Put back the vectors of archived trajectories of this store (lines of a
    gc archive, each with its `id`): in one transaction, all or nothing. Each
    line's trajectory must exist here without vectors and with the same
    quality; it keeps its id, times and consuming cycle. Returns how many."""
    restored: list[int] = []
    now = utcnow()
    with transaction(engine, immediate=True) as session:
        acquire_cycle_lock(session, wait=True)
        driver = Driver(session.connection())
        for numbered in _chunked(read_jsonl(lines), chunk_size):
            items = [item for _, item in numbered]
            try:
                batch = validate_batch(items, config)
                ids = [archived_id(item, index=i) for i, item in enumerate(items)]
            except ValidationError as exc:
                line = numbered[exc.index][0] if exc.index is not None else None
                raise ValidationError(exc.message, field=exc.field, line=line) from None
            _check_restorable(session, numbered, ids, batch.qualities)
            trajectories.insert_vectors(driver, cast(list[int], ids), batch)
            session.execute(
                sa.update(Trajectory)
                .where(Trajectory.id.in_(ids))
                .values(vectors_dropped_at=None)
                .execution_options(synchronize_session=False)
            )
            restored.extend(cast(list[int], ids))
        if restored:
            cycles.add_audit(
                session,
                actor=actor,
                action="restore_vectors",
                details={
                    "trajectories": len(restored),
                    "first_id": min(restored),
                    "last_id": max(restored),
                    "at": now.isoformat(),
                },
            )
    return len(restored)


def _check_restorable(
    session: Any, numbered: list[tuple[int, Any]], ids: list[int | None], qualities: np.ndarray
) -> None:
    found = {
        row.id: row
        for row in session.execute(
            sa.select(Trajectory.id, Trajectory.quality, Trajectory.vectors_dropped_at).where(
                Trajectory.id.in_([i for i in ids if i is not None])
            )
        )
    }
    seen: set[int] = set()
    for (line, _), trajectory_id, quality in zip(numbered, ids, qualities, strict=True):
        if trajectory_id is None:
            raise ValidationError(
                "a restored line needs the trajectory's id", field="id", line=line
            )
        row = found.get(trajectory_id)
        if row is None:
            problem = "is not in this store (ingest without --restore records it anew)"
        elif row.vectors_dropped_at is None or trajectory_id in seen:
            problem = "still has its vectors (already restored?)"
        elif row.quality != float(quality):
            problem = "has another quality here: the archive is from another store"
        else:
            seen.add(trajectory_id)
            continue
        raise ValidationError(f"trajectory {trajectory_id} {problem}", field="id", line=line)


def _chunked(items: Any, size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def open_jsonl(path: str | os.PathLike[str]) -> _ArchiveReader:
    """A JSONL file for reading as bytes (each line is decoded on its own, so
    invalid UTF-8 names its line), gzip or plain, told by its first bytes."""
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        if gzipped:
            return _ArchiveReader(cast(IO[bytes], gzip.open(path, "rb")), path)
        return _ArchiveReader(open(path, "rb"), path)  # noqa: SIM115 (the caller closes it)
    except OSError as exc:
        raise FileAccessError(f"{path}: cannot open it ({exc.strerror or exc})") from exc


class _ArchiveReader:
    """An archive's lines, with damaged gzip data (or a read the system
    refuses) reported as the caller's problem, naming the file."""

    def __init__(self, stream: IO[bytes], path: str | os.PathLike[str]):
        self._stream = stream
        self._path = path

    def __iter__(self) -> Iterator[bytes]:
        number = 0
        try:
            for number, line in enumerate(self._stream, start=1):  # noqa: B007
                yield line
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInputError(
                f"{self._path}: the gzip data is damaged after line {number} ({exc})"
            ) from None
        except OSError as exc:
            raise FileAccessError(f"{self._path}: cannot read it ({exc.strerror or exc})") from exc

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> _ArchiveReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
