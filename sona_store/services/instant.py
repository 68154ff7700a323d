"""Loop A, durable: each recorded trajectory's learning signal is accumulated in
this process and applied to the stored micro-LoRA every `micro_flush_threshold`
signals (or on flush).

Exactly-once application without a global lock on the hot path:
- signals wait in memory together with their trajectory ids;
- a recording transaction flushes only when no other one is flushing (on
  PostgreSQL, `db.locks.try_micro_flush_lock`; else its signals stay queued),
  so writers never queue on the head row;
- a flush takes the head row lock, skips the trajectories some other process
  (or an earlier life of this one) already applied, applies the rest to the
  *latest* stored weights, writes a new version and one `micro_lora_signals`
  row per trajectory, and commits;
- a trajectory whose signal was never applied (the process died, or exited
  with signals pending) is adopted by the next store that flushes;
- a quarantined trajectory's signal is never applied (a flush drops it);
  `quarantine` replays the micro-LoRA without those already applied.
A signal is never dropped: a flush that fails puts its signals back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from sona_store.config import SonaConfig
from sona_store.db import state
from sona_store.db.copy import copy_columns, copy_supported
from sona_store.db.driver import Driver
from sona_store.db.engine import connection_transaction, short_error, transaction
from sona_store.db.locks import try_micro_flush_lock
from sona_store.db.models import MicroLoraSignal, Trajectory, TrajectoryStep, TrajectoryVectors
from sona_store.db.quarantines import quarantined
from sona_store.db.types import FLOAT32
from sona_store.learning.embedding import fit_width
from sona_store.learning.micro_lora import MicroLoraWeights, apply_groups
from sona_store.learning.signal import batch_learning_signals
from sona_store.services.validation import TrajectoryBatch

logger = logging.getLogger("sona_store")

# Unapplied trajectories `catch_up` reads at a time (~5 MB of 256-dim signals).
CATCH_UP_CHUNK = 5000


class Signal(NamedTuple):
    """One trajectory's learning signal (a tuple: a batch makes thousands)."""

    trajectory_id: int
    gradient: np.ndarray  # (hidden_dim,) float32
    quality: float


def batch_signals(batch: TrajectoryBatch, ids: list[int], dim: int) -> list[Signal]:
    """The learning signal of every trajectory of a validated batch, in order,
    fitted to the micro-LoRA's width."""
    return signals_of(ids, fit_width(batch.signals, dim), batch.qualities)


def signals_of(ids: list[int], gradients: np.ndarray, qualities: np.ndarray) -> list[Signal]:
    """Signals whose gradients are the rows of `gradients` (views, not copies)."""
    values = qualities.tolist()
    return [Signal(ids[i], gradients[i], values[i]) for i in range(len(ids))]


@dataclass(frozen=True)
class BatchSignals:
    """One recorded batch's signals as columns (ids ascending). Most batches
    are applied whole in their own transaction: no `Signal` is made for them,
    since building one object a trajectory is a visible share of recording
    (benchmarks/README.md, "Figures behind the code's choices")."""

    ids: list[int]
    gradients: np.ndarray  # (n, hidden_dim) float32
    qualities: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.ids)

    def first(self, k: int) -> BatchSignals:
        return BatchSignals(self.ids[:k], self.gradients[:k], self.qualities[:k])

    def signals(self, start: int = 0, stop: int | None = None) -> list[Signal]:
        part = slice(start, stop)
        return signals_of(self.ids[part], self.gradients[part], self.qualities[part])


@dataclass(frozen=True)
class Applied:
    """A micro-LoRA version a flush wrote (known once its transaction commits)."""

    version: state.MicroLoraVersion
    count: int


@dataclass
class InFlight:
    """What a recording transaction took from the queue: settled by
    `InstantLearner.settle` once that transaction has committed or failed."""

    taken: list[Signal] = field(default_factory=list)  # queued before, applied now
    fresh: BatchSignals | None = None  # the batch's signals...
    fresh_applied: int = 0  # ...of which the first this many are applied now
    applied: Applied | None = None


class InstantLearner:
    """One process's share of Loop A (thread-safe)."""

    def __init__(
        self, engine: Engine, config: SonaConfig, on_flush: Callable[[], None] | None = None
    ):
        self.engine = engine
        self.config = config
        self._pending: list[Signal] = []
        self._lock = threading.Lock()  # guards _pending
        self._flush_lock = threading.Lock()  # one standalone flush at a time per process
        self._adopted = False
        self._on_flush = on_flush
        self._known: state.MicroLoraVersion | None = None  # the last version seen

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def record(self, connection: Connection, fresh: BatchSignals, inflight: InFlight) -> None:
        """Inside the transaction that inserts `fresh`'s trajectories: apply the
        whole groups of (queued + fresh) signals in that same transaction, so a
        batch costs one commit, not two. The flush runs in a savepoint: if it
        fails, the trajectories still commit and the signals stay queued.
        `inflight` (the caller's) records what was taken as soon as it is, so
        `settle` can give it back whatever fails later. Call
        `adopt_orphans_once` before the transaction, `settle` after it."""
        threshold = self.config.micro_flush_threshold
        inflight.fresh = fresh
        with self._lock:
            queued = len(self._pending)
            size = queued + len(fresh)
            size -= size % threshold
            if size == 0:
                return
            inflight.taken = self._pending[:size]
            self._pending = self._pending[size:]
        fresh_taken = max(0, size - queued)
        try:
            with Driver(connection).savepoint("micro_lora_flush"):
                # PostgreSQL: another transaction is flushing (and holds or
                # wants the head row): do not queue behind it; these signals
                # stay pending for a later flush (see `try_micro_flush_lock`).
                if not try_micro_flush_lock(connection):
                    with self._lock:
                        self._pending[:0] = inflight.taken
                    inflight.taken = []
                    return
                if inflight.taken:
                    signals = fresh.signals(0, fresh_taken)
                    fresh_ids = {s.trajectory_id for s in signals}
                    inflight.applied = self._apply(connection, inflight.taken + signals, fresh_ids)
                else:  # only this batch's: its columns as they are
                    inflight.applied = self._apply(connection, [], own=fresh.first(fresh_taken))
        except Exception as exc:
            logger.warning(
                "micro-LoRA flush deferred (its signals stay pending): %s", short_error(exc)
            )
            with self._lock:
                self._pending[:0] = inflight.taken
            inflight.taken = []
            return
        inflight.fresh_applied = fresh_taken

    def settle(self, inflight: InFlight, *, committed: bool) -> None:
        """After the recording transaction: queue the batch's remaining signals
        (committed), or put back what it took (rolled back: its own
        trajectories are gone, the earlier ones still need their signals)."""
        with self._lock:
            if committed and inflight.fresh is not None:
                self._pending.extend(inflight.fresh.signals(inflight.fresh_applied))
            else:
                self._pending[:0] = inflight.taken
                # The error may have come after the commit took effect (a lost
                # connection): then the batch's signals are only in the
                # database; the next flush adopts whatever is unapplied.
                self._adopted = False
        if committed and inflight.applied is not None:
            self._committed(inflight.applied)

    def flush(self) -> int:
        """Apply every pending signal (this process's, and any orphaned ones)."""
        return self._flush(whole_groups_only=False)

    def catch_up(self) -> int:
        """Pick up trajectories recorded without going through `record` (bulk
        ingest) and apply whole groups of them. The unapplied trajectories are
        read CATCH_UP_CHUNK at a time and applied as they come (in the order
        `flush` would take them), so memory does not grow with their number."""
        threshold = self.config.micro_flush_threshold
        chunk = max(threshold, CATCH_UP_CHUNK - CATCH_UP_CHUNK % threshold)
        applied = 0
        with self._flush_lock:
            self._adopted = False
            carry: list[Signal] = []  # orphans read, not yet applied
            after = 0
            while True:
                with transaction(self.engine) as session:
                    read = _unapplied_signals(session, self.config, after=after, limit=chunk)
                with self._lock:
                    known = {s.trajectory_id for s in self._pending}
                carry.extend(s for s in read if s.trajectory_id not in known)
                if len(read) < chunk:
                    break
                after = read[-1].trajectory_id
                size = len(carry) - len(carry) % threshold
                applied += self._apply_taken(carry[:size])  # raises: they stay orphans
                carry = carry[size:]
            with self._lock:  # the rest goes ahead of ours, as `_adopt_orphans` puts it
                self._pending[:0] = carry
            self._adopted = True
            return applied + self._flush_pending(whole_groups_only=True)

    def _flush(self, *, whole_groups_only: bool) -> int:
        with self._flush_lock:
            if not self._adopted:
                self._adopt_orphans()
            return self._flush_pending(whole_groups_only=whole_groups_only)

    def _flush_pending(self, *, whole_groups_only: bool) -> int:
        """Apply the queued signals (whole groups only, or all); `_flush_lock` held."""
        threshold = self.config.micro_flush_threshold
        with self._lock:
            size = len(self._pending)
            if whole_groups_only:
                size -= size % threshold
            taken, self._pending = self._pending[:size], self._pending[size:]
        try:
            return self._apply_taken(taken)
        except BaseException:
            with self._lock:  # never drop a signal
                self._pending[:0] = taken
            raise

    def _apply_taken(self, taken: list[Signal]) -> int:
        """Apply `taken` in a transaction of its own; the number applied."""
        if not taken:
            return 0
        with connection_transaction(self.engine, immediate=True) as connection:
            applied = self._apply(connection, taken)
        if applied is None:
            return 0
        self._committed(applied)
        return applied.count

    def _committed(self, applied: Applied) -> None:
        self._known = applied.version
        if self._on_flush is not None:
            self._on_flush()

    def _version(self, connection: Connection, version_id: int) -> state.MicroLoraVersion:
        known = self._known
        if known is None or known.version_id != version_id:
            known = self._known = state.load_micro_lora_version(connection, version_id)
        return known

    def _apply(
        self,
        connection: Connection,
        signals: list[Signal],
        fresh_ids: frozenset[int] | set[int] = frozenset(),
        own: BatchSignals | None = None,
    ) -> Applied | None:
        """Apply signals to the latest stored weights, in `connection`: a new
        version, its ledger rows and the head pointer. Trajectories in
        `fresh_ids` were inserted by this transaction, so nobody can have
        applied them; the others are checked against the ledger. `own`: a
        batch inserted by this transaction, applied instead of `signals`."""
        head = self._version(connection, state.micro_lora_pointer(connection, for_update=True))
        if own is not None:
            ids, gradients = own.ids, own.gradients
            qualities = own.qualities.astype(np.float32)
            all_fresh = True
        else:
            done = _already_applied(
                connection, [s.trajectory_id for s in signals if s.trajectory_id not in fresh_ids]
            )
            # One signal per trajectory, whatever queued it twice (adoption can
            # race a thread between its commit and its `settle`).
            unique = {s.trajectory_id: s for s in signals if s.trajectory_id not in done}
            fresh = [unique[i] for i in sorted(unique)]
            if not fresh:
                return None
            ids = [s.trajectory_id for s in fresh]
            gradients = np.stack([s.gradient for s in fresh])
            qualities = np.fromiter((s.quality for s in fresh), dtype=np.float32, count=len(fresh))
            all_fresh = all(i in fresh_ids for i in ids)
        weights = apply_groups(
            head.weights,
            gradients,
            qualities,
            self.config.micro_flush_threshold,
            self.config.micro_lora_lr,
        )
        version = state.append_micro_lora(connection, weights, head, f"{len(ids)} signals")
        _write_ledger(connection, ids, version.version_id, all_fresh=all_fresh)
        state.point_micro_lora(connection, version.version_id)
        return Applied(version, len(ids))

    def readopt(self) -> None:
        """Adopt orphaned signals again on the next flush (a release made
        trajectories unapplied that this store had seen as quarantined)."""
        self._adopted = False

    def adopt_orphans_once(self) -> None:
        """Queue orphaned signals on this store's first use (outside any
        transaction: it reads in one of its own)."""
        if not self._adopted:
            self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        """Queue, ahead of ours, the signals of trajectories nobody applied."""
        with transaction(self.engine) as session:
            orphans = _unapplied_signals(session, self.config)
        with self._lock:
            known = {s.trajectory_id for s in self._pending}
            self._pending[:0] = [s for s in orphans if s.trajectory_id not in known]
        self._adopted = True


_LEDGER_RANGE = (
    "INSERT INTO micro_lora_signals (trajectory_id, micro_lora_version_id) "
    "SELECT id, ? FROM trajectories WHERE id BETWEEN ? AND ?"
)


def _write_ledger(connection: Connection, ids: list[int], version: int, *, all_fresh: bool) -> None:
    """One ledger row per applied trajectory (`ids` ascending). The usual
    case, a batch's own consecutive ids (`all_fresh`: all inserted by this
    transaction), is one INSERT .. SELECT over the id range: every id in it
    is this transaction's (SQLite reserved them under its write lock; a
    PostgreSQL sequence never hands one out twice)."""
    driver = Driver(connection)
    if all_fresh and ids[-1] - ids[0] + 1 == len(ids):
        driver.execute(_LEDGER_RANGE, (version, ids[0], ids[-1]))
        return
    table = cast(sa.Table, MicroLoraSignal.__table__)
    if copy_supported(connection):  # a flush of queued signals: thousands of rows
        copy_columns(
            connection, table, {"trajectory_id": ids, "micro_lora_version_id": [version] * len(ids)}
        )
        return
    driver.insert_many(
        table, ["trajectory_id", "micro_lora_version_id"], [(i, version) for i in ids]
    )


def _already_applied(connection: Connection, ids: list[int]) -> set[int]:
    """Of `ids`, those whose signal must not be applied now: applied already
    (a ledger row), or quarantined."""
    found: set[int] = set()
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        found.update(
            connection.scalars(
                sa.select(MicroLoraSignal.trajectory_id).where(
                    _among(MicroLoraSignal.trajectory_id, chunk, connection)
                )
            )
        )
        found.update(
            connection.scalars(
                sa.select(Trajectory.id).where(
                    _among(Trajectory.id, chunk, connection), quarantined(Trajectory.id)
                )
            )
        )
    return found


def _among(column: Any, ids: list[int], connection: Connection) -> sa.ColumnElement[bool]:
    """`column IN ids`; on PostgreSQL `= ANY(array)`, one parameter: an IN
    list of thousands of parameters cost a flush of queued signals more CPU
    than its inserts (psycopg parses every marker of the statement)."""
    if connection.dialect.name == "postgresql":
        return cast(
            sa.ColumnElement[bool],
            column == sa.any_(sa.bindparam("ids", ids, type_=ARRAY(sa.BigInteger))),
        )
    return cast(sa.ColumnElement[bool], column.in_(ids))


def _unapplied_signals(
    session: Session, config: SonaConfig, *, after: int = 0, limit: int | None = None
) -> list[Signal]:
    """The signals of trajectories no micro-LoRA version applied, by id: the
    first `limit` of those with an id above `after` (all of them by default)."""
    rows = session.execute(
        sa.select(Trajectory.id, TrajectoryVectors.query_embedding, Trajectory.quality)
        .join(TrajectoryVectors, TrajectoryVectors.trajectory_id == Trajectory.id)
        .outerjoin(MicroLoraSignal, MicroLoraSignal.trajectory_id == Trajectory.id)
        .where(
            MicroLoraSignal.trajectory_id.is_(None),
            Trajectory.id > after,
            ~quarantined(Trajectory.id),
        )
        .order_by(Trajectory.id)
        .limit(limit)
    ).all()
    if not rows:
        return []
    stored = _signals_of_rows(session, list(rows), config)
    return stored.signals()


def stored_signals(session: Session, ids: list[int], config: SonaConfig) -> BatchSignals:
    """The learning signals of stored trajectories `ids` (ascending), computed
    from their stored query, steps and quality exactly as recording computed
    them (the same float32 functions on the same stored bytes)."""
    rows: list[Any] = []
    for start in range(0, len(ids), 5000):
        rows += session.execute(
            sa.select(Trajectory.id, TrajectoryVectors.query_embedding, Trajectory.quality)
            .join(TrajectoryVectors, TrajectoryVectors.trajectory_id == Trajectory.id)
            .where(Trajectory.id.in_(ids[start : start + 5000]))
            .order_by(Trajectory.id)
        ).all()
    if [r.id for r in rows] != ids:
        raise LookupError("a trajectory whose signal is asked for has no stored vectors")
    return _signals_of_rows(session, rows, config)


def _signals_of_rows(session: Session, rows: list[Any], config: SonaConfig) -> BatchSignals:
    """Signals of rows (id, query_embedding, quality) in id order."""
    ids = [r.id for r in rows]
    if not ids:
        return BatchSignals([], np.zeros((0, config.hidden_dim), FLOAT32), np.zeros(0))
    position = {trajectory_id: i for i, trajectory_id in enumerate(ids)}
    owners: list[int] = []
    activations: list[np.ndarray] = []
    rewards: list[float] = []
    for start in range(0, len(ids), 5000):
        for step in session.execute(
            sa.select(
                TrajectoryStep.trajectory_id, TrajectoryStep.activations, TrajectoryStep.reward
            )
            .where(TrajectoryStep.trajectory_id.in_(ids[start : start + 5000]))
            .order_by(TrajectoryStep.trajectory_id, TrajectoryStep.step_index)
        ):
            owners.append(position[step.trajectory_id])
            activations.append(step.activations)
            rewards.append(step.reward)
    gradients = batch_learning_signals(
        np.stack([r.query_embedding for r in rows]),
        np.asarray(owners, dtype=np.int64),
        np.stack(activations) if activations else np.zeros((0, config.hidden_dim), FLOAT32),
        np.asarray(rewards, dtype=np.float32),
    )
    qualities = np.array([r.quality for r in rows], dtype=np.float64)
    return BatchSignals(ids, fit_width(gradients, config.hidden_dim), qualities)


__all__ = [
    "BatchSignals",
    "InstantLearner",
    "MicroLoraWeights",
    "Signal",
    "batch_signals",
    "stored_signals",
]
