"""SonaStore: the library's front door. It opens (and if empty, creates) a
store at a database URL and delegates each operation to one service, handing
it the engine, configuration and actor it needs (never itself): recording to
the store's writer (`services.writer`, which inserts through
`db.trajectories`), cycles to `services.cycle`, rollback to `services.rollback`,
quarantine to `services.quarantine`, LoRA export and import to
`services.lora_io`, the report to `services.report`. Whatever moves the head
is followed by invalidating the store's own cache, here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from itertools import islice
from pathlib import Path
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sona_store.config import SonaConfig
from sona_store.db import cycles, routes, state, trajectories
from sona_store.db import quarantines as quarantine_rows
from sona_store.db.access_log import AccessLog
from sona_store.db.checkpoint import is_sqlite_file, wal_checkpoint
from sona_store.db.engine import (
    configure_engine,
    connection_transaction,
    create_store_engine,
    mask_url,
    normalise_url,
    resolve_url,
    short_error,
    store_label,
    transaction,
)
from sona_store.db.head_cache import Head, HeadCache, read_head
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.models import AuditEvent, StoreHead, StoreSettings
from sona_store.db.models import Pattern as PatternRow
from sona_store.db.quarantines import Selection
from sona_store.db.schema import ensure_schema, require_existing_file
from sona_store.db.state import LoraArrays
from sona_store.db.stats import store_stats
from sona_store.db.stores import refuse_on_sqlite
from sona_store.db.types import utcnow
from sona_store.enums import CycleTrigger, LoraTier, parse
from sona_store.errors import (
    ConfigError,
    CycleNotFoundError,
    RecordingError,
    RecordingTimeoutError,
    ValidationError,
)
from sona_store.learning import base_lora
from sona_store.learning.background import ewc_config_for
from sona_store.learning.base_lora import BaseLoraWeights, initial_base_lora
from sona_store.learning.embedding import fit_width
from sona_store.learning.ewc import EwcState
from sona_store.learning.micro_lora import MicroProjector, initial_micro_lora
from sona_store.learning.routes import EXPLORE_MODES, RouteModel, RouteRecommendation
from sona_store.recording import TrajectoryBuilder
from sona_store.results import CycleResult
from sona_store.services import cycle as cycle_module
from sona_store.services import lora_io, retention
from sona_store.services import quarantine as quarantine_module
from sona_store.services import report as report_module
from sona_store.services import rollback as rollback_module
from sona_store.services.instant import BatchSignals, InFlight, InstantLearner
from sona_store.services.lora_format import DEFAULT_LAYER_PREFIX
from sona_store.services.lora_io import LoraMove
from sona_store.services.pattern_index import Pattern, PatternIndex, ScoredPattern
from sona_store.services.quarantine import QuarantineResult, ReleaseResult
from sona_store.services.retention import GcResult, Policy
from sona_store.services.rollback import HeadMove
from sona_store.services.validation import (
    Recordable,
    TrajectoryBatch,
    check_vector,
    read_jsonl,
    validate_batch,
)
from sona_store.services.writer import Housekeeping, Writer

logger = logging.getLogger("sona_store")


class SonaStore:
    """A durable SONA learning store at a database URL.

    `url` None: $SONA_STORE_URL, else `sqlite:///sona.db` (as the CLI). An empty
    database gets the schema and the initial state (with `create=False` a
    missing SQLite file or an empty database is a SchemaVersionError naming
    the command that creates it); an existing one must be at this version's
    schema revision and have compatible dimensions. `config=None` opens an
    existing store with the configuration it was created with (or creates one
    with the defaults). `schema` (PostgreSQL only) keeps the store in that
    schema of the database, apart from any other store there
    (`sona_store.db.stores`); SQLite keeps one store per file.

    Recording (README, "Recording at the router's pace"): with `background`
    (the default) the store owns one thread, its writer, which commits
    recorded trajectories in groups (one transaction for whatever has
    arrived), applies micro-LoRA flushes, writes pattern access counts and
    checkpoints a SQLite file's log when the writing pauses. Callers validate
    on their own thread. `max_delay` (seconds): how long a trajectory ended
    with `wait=False` may wait for others to share its commit; `max_queued`:
    trajectories queued at most (more callers block, nothing is dropped);
    `write_timeout` (seconds): how long a caller waits on a failing database
    before RecordingTimeoutError. `background=False` (and an in-memory
    SQLite store): no thread at all; each call commits on the caller's
    thread. `durability` (SQLite): "normal"
    (commits survive the process being killed) or "full" (also a power
    loss: one fsync per commit).

    The store makes its own engine; `engine_options` go to
    `sqlalchemy.create_engine` (pool size, `connect_args`, ...). An `engine`
    of the caller's is used instead (`url` then omitted, or naming the same
    database): the store gives it its per-dialect settings
    (`db.engine.configure_engine`: on SQLite foreign keys, WAL and the BEGIN
    that id reservation and the cycle lock rely on), and `close()` leaves it
    open, as the caller's to dispose.
    """

    def __init__(
        self,
        url: str | sa.URL | None = None,
        config: SonaConfig | None = None,
        *,
        schema: str | None = None,
        create: bool = True,
        actor: str | None = None,
        engine: Engine | None = None,
        engine_options: Mapping[str, Any] | None = None,
        head_refresh_seconds: float = 0.5,
        background: bool = True,
        max_delay: float = 0.02,
        max_queued: int = 10_000,
        write_timeout: float = 30.0,
        durability: str = "normal",
    ):
        _check_recording_options(max_delay, max_queued, write_timeout)
        if engine is None:
            self.url: str | sa.URL = resolve_url(url)
        else:
            if engine_options is not None:
                raise ConfigError("engine_options are for the store's own engine, not engine=")
            given = engine.url.render_as_string(hide_password=False)
            if url is not None and normalise_url(url).render_as_string(
                hide_password=False
            ) != normalise_url(given).render_as_string(hide_password=False):
                raise ConfigError(
                    f"url {mask_url(url)} and the engine's {mask_url(engine.url)} differ: "
                    "pass one of them"
                )
            self.url = given
        if not create:
            # A schema on SQLite is the mistake to name, before a missing file.
            refuse_on_sqlite(schema, normalise_url(self.url).get_backend_name())
            require_existing_file(self.url)
        self._owns_engine = engine is None
        if engine is None:
            self.engine = create_store_engine(
                self.url, schema=schema, durability=durability, **(engine_options or {})
            )
        else:
            self.engine = configure_engine(engine, schema=schema, durability=durability)
        self.schema = schema
        self.actor = actor or cycles.default_actor()
        try:
            ensure_schema(self.engine, create=create)
            self.config = self._load_or_init_config(config)
        except BaseException:
            self._release_engine()
            raise
        self.enabled = True
        self._cache = HeadCache(self._read_head, head_refresh_seconds)
        self._instant = InstantLearner(self.engine, self.config, on_flush=self._cache.invalidate)
        self._accesses = AccessLog(self.engine)
        self._writer: Writer | None = None
        # An in-memory SQLite database exists once a thread (SQLAlchemy gives
        # each thread its own connection, hence its own database): it has
        # no writer, and records on the caller's thread.
        if background and not _in_memory_sqlite(self.engine):
            self._writer = _start_writer(
                self.engine,
                self.config,
                self._instant,
                self._accesses,
                max_delay=max_delay,
                max_queued=max_queued,
                write_timeout=write_timeout,
            )
            # A store dropped without close(): its writer writes what is
            # queued and stops (it holds nothing of the store itself).
            weakref.finalize(self, self._writer.stop_soon)

    # -- opening --------------------------------------------------------------

    def _load_or_init_config(self, config: SonaConfig | None) -> SonaConfig:
        with transaction(self.engine, immediate=True) as session:
            settings = session.get(StoreSettings, 1)
            if settings is None:
                # Two processes opening one empty PostgreSQL store must not both
                # initialise it (SQLite's immediate transaction already does that).
                acquire_cycle_lock(session, wait=True)
                settings = session.get(StoreSettings, 1, populate_existing=True)
            if settings is not None:
                stored = SonaConfig.from_dict(settings.config)
                if config is None:
                    return stored
                mismatches = config.shape_mismatches(stored)
                if mismatches:
                    raise ConfigError(
                        f"{store_label(self.engine)} was created with other dimensions "
                        f"({'; '.join(mismatches)}); open it with its own configuration"
                    )
                return config
            config = config or SonaConfig()
            session.add(StoreSettings(id=1, config=config.to_dict(), created_at=utcnow()))
            self._init_state(session, config)
            return config

    @staticmethod
    def _init_state(session: Session, config: SonaConfig) -> None:
        """The initial versions every history starts from: identity adapters
        (`up` zero) and an empty EWC++ state."""
        base = initial_base_lora(config.base_lora_layers, config.base_lora_rank, config.hidden_dim)
        micro = initial_micro_lora(config.micro_lora_rank, config.hidden_dim)
        ewc = EwcState.initial(ewc_config_for(base.param_count, config.ewc_lambda))
        session.add(
            StoreHead(
                id=1,
                cycle_id=None,
                base_lora_version_id=state.save_base_lora(
                    session, base, parent_id=None, source="initial"
                ),
                micro_lora_version_id=state.save_micro_lora(
                    session, micro, parent_id=None, source="initial"
                ),
                ewc_state_id=state.save_ewc_state(session, ewc, parent_id=None),
                updated_at=utcnow(),
            )
        )

    def close(self) -> None:
        """Commit every queued trajectory, write pending pattern accesses and
        release connections. Raises UnwrittenTrajectoriesError (with their
        count) when the queued trajectories could not be written within
        `write_timeout`. Pending micro-LoRA signals are not applied here (as
        in the reference, they wait for the next flush); their trajectories
        are stored, and the next store that flushes applies them."""
        try:
            if self._writer is not None:
                self._writer.close()
            self._accesses.flush()
        finally:
            self._release_engine()

    def _release_engine(self) -> None:
        """Dispose the engine if the store made it; a caller's stays usable."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> SonaStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leaving the block commits what is queued (see `close`)."""
        self.close()

    def __repr__(self) -> str:
        where = f", schema={self.schema!r}" if self.schema else ""
        return f"SonaStore({mask_url(self.engine.url)!r}{where})"

    # -- recording --------------------------------------------------------------

    def record_trajectories(self, items: Iterable[dict[str, Any]]) -> list[int]:
        """Validate every item, then insert them all in one transaction; returns
        their ids in order, once committed. A bad item raises ValidationError
        and writes nothing. The trajectories then feed the instant loop, in
        order. With the writer, the transaction may hold other callers'
        trajectories too (never part of this batch without the rest)."""
        if not self.enabled:
            return []
        batch = validate_batch(items, self.config)
        if not len(batch):
            return []
        if self._writer is not None:
            ids: list[int] = self._writer.result(self._writer.submit(batch, wait=True))
            return ids
        return self._record_now(batch)

    def _record_now(self, batch: Recordable) -> list[int]:
        """Commit a validated batch on the caller's thread (`background=False`)."""
        self._learn_quietly(self._instant.adopt_orphans_once)
        recorder = _GroupRecorder(self.config, self._instant)
        committed = False
        try:
            with connection_transaction(self.engine, immediate=True) as connection:
                ids = recorder.commit(connection, [batch], None)
            committed = True
        finally:
            recorder.settle(committed)
        return ids

    def _learn_quietly(self, step: Callable[..., object], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:
            logger.warning(
                "micro-LoRA flush deferred (its signals stay pending): %s", short_error(exc)
            )

    def begin_trajectory(self, query_embedding: Any) -> TrajectoryBuilder:
        """Start a trajectory; nothing is written until `end_trajectory`. A query
        of the wrong dimension (or not finite) is refused here, where it was
        given, not when the trajectory ends."""
        checked = check_vector(query_embedding, "query_embedding", self.config.embedding_size)
        return TrajectoryBuilder(checked, hidden_dim=self.config.hidden_dim)

    def end_trajectory(
        self, builder: TrajectoryBuilder, quality: float | None = None, *, wait: bool = True
    ) -> Any:
        """Validate, persist and commit one trajectory. `wait=True`: returns
        its id once committed (RecordingTimeoutError if the database fails
        for longer than `write_timeout`; the trajectory stays queued).
        `wait=False`: returns as soon as it is queued, a
        `concurrent.futures.Future` of its id; the writer commits it at most
        `max_delay` later (README: what a crash then loses). None when the
        store is disabled. Invalid input raises ValidationError here, in
        either mode, and nothing is queued."""
        if not self.enabled:
            return None
        batch = self._validated(builder, quality)
        if self._writer is None:
            ids = self._record_now(batch)
            if wait:
                return ids[0]
            done: Future[int] = Future()
            done.set_result(ids[0])
            return done
        job = self._writer.submit(batch, wait=wait, single=True, future=not wait)
        if wait:
            return self._writer.result(job)
        return job.future

    async def end_trajectory_async(
        self, builder: TrajectoryBuilder, quality: float | None = None
    ) -> int | None:
        """`end_trajectory` for asyncio: validates in the calling task (a bad
        trajectory raises at once) and awaits the commit without blocking
        the event loop; its id (None when disabled). A full queue is waited
        for in a worker thread; RecordingTimeoutError after `write_timeout`."""
        if not self.enabled:
            return None
        batch = self._validated(builder, quality)
        writer = self._writer
        if writer is None:
            return (await asyncio.to_thread(self._record_now, batch))[0]
        submit = functools.partial(writer.submit, batch, wait=True, single=True, future=True)
        try:
            job = submit(block=False)
        except BlockingIOError:
            job = await asyncio.to_thread(submit)
        try:
            return cast(
                int,
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(cast(Future[int], job.future))),
                    writer.write_timeout,
                ),
            )
        except TimeoutError:
            raise RecordingTimeoutError(
                f"not committed within {writer.write_timeout:g} s; the trajectory stays "
                "queued and is written when the database is back"
            ) from None

    def _validated(self, builder: TrajectoryBuilder, quality: float | None) -> Recordable:
        batch = builder.checked(quality, self.config)
        if batch is None:
            batch = validate_batch([builder.to_item(quality)], self.config)
        return batch

    @contextlib.contextmanager
    def trajectory(self, query_embedding: Any) -> Iterator[TrajectoryBuilder]:
        """`with store.trajectory(q) as t: ...; t.quality = 0.8` records on exit
        (not when the block raises), waiting for the commit."""
        builder = self.begin_trajectory(query_embedding)
        yield builder
        self.end_trajectory(builder)

    def set_enabled(self, enabled: bool) -> None:
        """Disabled: recording and adaptation are no-ops, as in the reference."""
        self.enabled = bool(enabled)

    def ingest(
        self,
        lines: Iterable[str],
        *,
        chunk_size: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Record a JSONL stream in one transaction, validated and written in
        chunks so a large file is never held in memory whole. A bad line raises
        ValidationError naming its line number; then nothing of the file is kept."""
        ids: list[int] = []
        if not self.enabled:
            return ids
        with transaction(self.engine, immediate=True) as session:
            for numbered in _chunks(read_jsonl(lines), chunk_size):
                line_numbers = [number for number, _ in numbered]
                try:
                    batch = validate_batch((item for _, item in numbered), self.config)
                except ValidationError as exc:
                    line = line_numbers[exc.index] if exc.index is not None else None
                    raise ValidationError(
                        exc.message, index=None, field=exc.field, line=line
                    ) from None
                ids.extend(trajectories.insert_batch(session.connection(), batch))
                if progress is not None:
                    progress(len(ids))
        # Whole groups of the new signals, applied on the writer (if any).
        if self._writer is not None:
            self._writer.wrote()
            try:
                self._writer.call(self._catch_up_quietly, "the micro-LoRA catch-up")
            except RecordingError as exc:  # the file is committed: the signals stay pending
                logger.warning("micro-LoRA flush deferred (its signals stay pending): %s", exc)
        else:
            self._catch_up_quietly()
        return ids

    def _wrote(self) -> None:
        """After a transaction that may move the head: drop the cached state,
        and have the writer checkpoint the log once writing pauses."""
        self._cache.invalidate()
        if self._writer is not None:
            self._writer.wrote()

    def _catch_up_quietly(self) -> int:
        try:
            return self._instant.catch_up()
        except Exception as exc:
            logger.warning(
                "micro-LoRA flush deferred (its signals stay pending): %s", short_error(exc)
            )
            return 0

    # -- cycles -----------------------------------------------------------------

    def run_cycle(
        self, force: bool = False, *, trigger: CycleTrigger | str | None = None
    ) -> CycleResult:
        """One learning cycle now. `trigger` (default: forced or manual, by
        `force`) is recorded with it; an unknown one is a ValidationError."""
        if trigger is not None:
            trigger = parse(CycleTrigger, trigger, "trigger")
        try:
            return cycle_module.run_cycle(
                self.engine, self.config, force=force, trigger=trigger, actor=self.actor
            )
        finally:
            self._wrote()

    # -- rollback -----------------------------------------------------------------

    def rollback(
        self,
        cycle_id: int,
        requeue: bool = False,
        *,
        reason: str | None = None,
        actor: str | None = None,
    ) -> HeadMove:
        """Restore the LoRA weights, EWC++ state and patterns that were current
        before `cycle_id`; that cycle and every later one become rolled_back."""
        try:
            return rollback_module.rollback(
                self.engine, cycle_id, actor=actor or self.actor, reason=reason, requeue=requeue
            )
        finally:
            self._wrote()

    def restore(
        self, cycle_id: int, *, reason: str | None = None, actor: str | None = None
    ) -> HeadMove:
        """Make a rolled-back cycle's state current again."""
        try:
            return rollback_module.restore(
                self.engine, cycle_id, actor=actor or self.actor, reason=reason
            )
        finally:
            self._wrote()

    # -- LoRA adapters in and out ---------------------------------------------------

    def export_lora(
        self,
        out_dir: str | os.PathLike[str],
        version: int | None = None,
        tier: str | None = None,
        target_modules: list[str] | tuple[str, ...] | None = None,
        *,
        layer_prefix: str = DEFAULT_LAYER_PREFIX,
    ) -> Path:
        """Write a LoRA version (None: the current one of `tier`, base by
        default) as a PEFT adapter directory (docs/lora_export.md); returns it."""
        return lora_io.export_lora(
            self.engine, out_dir, version, tier, target_modules, layer_prefix=layer_prefix
        )

    def import_lora(
        self,
        in_dir: str | os.PathLike[str],
        reason: str,
        *,
        tier: str | None = None,
        actor: str | None = None,
    ) -> LoraMove:
        """Store a PEFT adapter directory as a new version of its tier and make
        it current, audited; `lora_move.to_version_id` is the new version. A
        bad adapter raises AdapterError and writes nothing."""
        try:
            return lora_io.import_lora(
                self.engine, self.config, in_dir, reason, actor=actor or self.actor, tier=tier
            )
        finally:
            self._wrote()

    def use_lora_version(
        self, version_id: int, reason: str, *, actor: str | None = None
    ) -> LoraMove:
        """Make an existing LoRA version current for its tier (undoing an
        import, or going back to any earlier version), audited. Cycles, EWC++
        state and patterns stay as they are."""
        try:
            return lora_io.use_lora_version(
                self.engine, version_id, reason, actor=actor or self.actor
            )
        finally:
            self._wrote()

    def report(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write PNG charts of the learning history and an `index.html` into
        `out_dir` (the `report` extra); returns the files, the page last."""
        return report_module.write_report(self.engine, out_dir)

    # -- quarantine ---------------------------------------------------------------

    def quarantine(
        self,
        ids: Iterable[int] | None = None,
        *,
        recorded_from: dt.datetime | str | None = None,
        recorded_to: dt.datetime | str | None = None,
        model_route: str | None = None,
        context_id: str | None = None,
        reason: str,
        actor: str | None = None,
    ) -> QuarantineResult:
        """Take a batch of trajectories out of every learned tier, as if it had
        never been recorded: the cycles that learned from it are rolled back
        (their other trajectories requeued) and the micro-LoRA is replayed
        without it. Selects by ids, recording time (`recorded_from` inclusive,
        `recorded_to` exclusive; naive times are UTC), route and context id,
        all given criteria together. One transaction, one audit row."""
        selection = Selection.of(ids, recorded_from, recorded_to, model_route, context_id)
        try:
            return quarantine_module.quarantine(
                self.engine, self.config, selection, reason=reason, actor=actor or self.actor
            )
        finally:
            self._wrote()

    def release(
        self, quarantine_id: int, *, reason: str | None = None, actor: str | None = None
    ) -> ReleaseResult:
        """End a quarantine: its trajectories are eligible again (pending for
        the next cycle; their micro-LoRA signals applied by the next flush)."""
        try:
            released = quarantine_module.release(
                self.engine, quarantine_id, actor=actor or self.actor, reason=reason
            )
        finally:
            self._wrote()
        self._instant.readopt()
        return released

    def quarantines(self) -> list[dict[str, Any]]:
        """Every quarantine, newest first, released or not."""
        with transaction(self.engine) as session:
            return [
                {
                    "id": q.id,
                    "created_at": q.created_at,
                    "actor": q.actor,
                    "reason": q.reason,
                    "selection": q.selection,
                    "trajectories": q.trajectory_count,
                    "released_at": q.released_at,
                    "released_by": q.released_by,
                    "release_reason": q.release_reason,
                }
                for q in quarantine_rows.all_quarantines(session)
            ]

    def audit_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Rollbacks, restores, quarantines, releases and imports, newest first."""
        with transaction(self.engine) as session:
            statement = sa.select(AuditEvent).order_by(AuditEvent.id.desc())
            if limit is not None:
                statement = statement.limit(limit)
            return [
                {
                    "id": e.id,
                    "at": e.at,
                    "actor": e.actor,
                    "action": e.action,
                    "cycle_id": e.cycle_id,
                    "from_cycle_id": e.from_cycle_id,
                    "to_cycle_id": e.to_cycle_id,
                    "reason": e.reason,
                    "details": e.details,
                }
                for e in session.scalars(statement)
            ]

    # -- retention ----------------------------------------------------------------

    def gc(
        self,
        *,
        older_than: float | dt.timedelta | None = None,
        horizon_cycles: int | None = None,
        archive: str | os.PathLike[str] | None = None,
    ) -> GcResult:
        """Delete the vectors of consumed trajectories the retention policy
        lets go (each argument None: the stored policy's value; `older_than`
        in seconds or a timedelta), archiving them first to `archive`; one
        audit row. Their metadata rows stay. See docs/operations.md."""
        try:
            return retention.gc(
                self.engine,
                self.config,
                older_than=older_than,
                horizon_cycles=horizon_cycles,
                archive=archive,
                actor=self.actor,
            )
        finally:
            self._wrote()

    def retention_policy(self) -> Policy:
        """The stored policy (Policy() when none: every vector is kept)."""
        return retention.read_policy(self.engine)

    def set_retention_policy(
        self,
        *,
        older_than: float | dt.timedelta | None = None,
        horizon_cycles: int | None = None,
        archive_dir: str | os.PathLike[str] | None = None,
        reason: str | None = None,
    ) -> int:
        """Store the policy gc and the scheduled service apply (all None:
        remove it); returns the audit id of the change."""
        policy = Policy(
            retention.as_seconds(older_than) if older_than is not None else None,
            horizon_cycles,
            os.fspath(archive_dir) if archive_dir is not None else None,
        )
        return retention.set_policy(self.engine, policy, actor=self.actor, reason=reason)

    def restore_vectors(self, lines: Iterable[str]) -> int:
        """Put back, from a gc archive, the vectors of this store's
        trajectories (all or nothing); returns how many."""
        return retention.restore_vectors(self.engine, self.config, lines, actor=self.actor)

    # -- learned state --------------------------------------------------------------

    def _read_head(self) -> Head:
        with transaction(self.engine) as session:
            return read_head(session)

    def lora_state(
        self, version: int | None = None, tier: LoraTier | str = LoraTier.BASE
    ) -> LoraArrays:
        """A LoRA version's weights as numpy arrays ((layers, rank, dim) down and
        up); None: the current version of `tier` ("base" or "micro"; another
        value is a ValidationError)."""
        tier = parse(LoraTier, tier, "tier")
        with transaction(self.engine) as session:
            if version is None:
                head = state.get_head(session)
                version = (
                    head.base_lora_version_id
                    if tier is LoraTier.BASE
                    else head.micro_lora_version_id
                )
            return state.load_lora(session, version)

    def ewc_state(self, state_id: int | None = None) -> EwcState:
        """An EWC++ state (None: the current one)."""
        with transaction(self.engine) as session:
            if state_id is None:
                state_id = state.get_head(session).ewc_state_id
            return state.load_ewc_state(session, state_id)

    def _current_base_lora(self) -> BaseLoraWeights:
        def load(head: Head) -> BaseLoraWeights:
            with transaction(self.engine) as session:
                return state.load_base_lora(session, head.base_lora_version_id)

        return self._cache.get("base_lora", lambda head: head.base_lora_version_id, load)

    def apply_base_lora(self, layer_idx: int, x: Any) -> np.ndarray:
        """x + delta through base-LoRA layer `layer_idx` of the current version."""
        weights = self._current_base_lora()
        vector = np.asarray(x, dtype=np.float32)
        if vector.shape[-1:] != (weights.dim,) or not np.isfinite(vector).all():
            raise ValidationError(f"x must have {weights.dim} finite values", field="x")
        with np.errstate(over="ignore", invalid="ignore"):
            return _finite_output(base_lora.forward(weights, layer_idx, vector), LoraTier.BASE)

    def history(
        self,
        limit: int | None = None,
        *,
        status: str | Iterable[str] | None = None,
        since: dt.datetime | None = None,
    ) -> list[CycleResult]:
        """Cycle records, newest first. `status`: one status or several;
        `since`: cycles active at or after that (timezone-aware) moment. Idle
        scheduled ticks share one skipped record (`attempts`, `last_attempt_at`)."""
        statuses = [status] if isinstance(status, str) else status
        with transaction(self.engine) as session:
            return cycles.history(session, limit, status=statuses, since=since)

    def cycle(self, cycle_id: int) -> CycleResult:
        with transaction(self.engine) as session:
            return cycles.cycle_result(cycles.get_cycle(session, cycle_id))

    # -- patterns ---------------------------------------------------------------

    def patterns(self, cycle_id: int | None = None) -> list[Pattern]:
        """The patterns a cycle created (all of them, pruned or not); None: the
        current ones (the head cycle's, less the pruned)."""
        with transaction(self.engine) as session:
            return _patterns(session, cycle_id)

    def pattern_routes(self, cycle_id: int | None = None) -> list[dict[str, Any]]:
        """Route statistics of a cycle's patterns (None: of the current ones):
        per pattern and `model_route` (None: recorded without one) the
        trajectory count, mean quality and sum of squared deviations."""
        with transaction(self.engine) as session:
            ids = [p.id for p in _patterns(session, cycle_id)]
            rows = routes.route_rows(session, ids)
        keys = ("pattern_id", "model_route", "trajectory_count", "mean_quality")
        return [
            {**dict(zip(keys, row[:4], strict=True)), "sum_squared_deviations": row[4]}
            for row in rows
        ]

    def _learned(self) -> tuple[PatternIndex, RouteModel]:
        """The current patterns' search index and route model, read together
        (one head cycle) and kept in memory until that cycle or its prunes change."""

        def load(head: Head) -> tuple[PatternIndex, RouteModel]:
            with transaction(self.engine) as session:
                patterns = _serving(session, head.cycle_id)
                ids = [p.id for p in patterns]
                rows = routes.route_rows(session, ids)
            index = PatternIndex(patterns)
            return index, RouteModel(index.unit, *routes.route_matrices(ids, rows))

        return self._cache.get("patterns", lambda head: head.patterns, load)

    def _pattern_index(self) -> PatternIndex:
        return self._learned()[0]

    def _query(self, query: Any) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32)
        if q.shape != (self.config.embedding_dim,) or not np.isfinite(q).all():
            raise ValidationError(
                f"query must be {self.config.embedding_dim} finite numbers", field="query"
            )
        return q

    def find_patterns(self, query: Any, k: int = 5) -> list[ScoredPattern]:
        """The k current patterns most similar (cosine) to `query`, best first,
        each with its `score` (that similarity). Served from memory; accesses
        are counted and written in batches."""
        found = self._pattern_index().search(self._query(query), k)
        if found and self._accesses.touch([p.id for p in found]):
            if self._writer is not None:
                self._writer.accesses_due()
            else:  # no background thread: written here (`background=False`)
                self._accesses.flush()
        return found

    def recommend_routes(
        self,
        query: Any,
        k: int = 5,
        routes: Iterable[str] | None = None,
        explore: str | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> list[RouteRecommendation]:
        """The k routes with the best expected quality for `query`, best first,
        each with its support (similarity-weighted trajectories) and a ~95%
        band (docs/learning.md, "Route statistics and recommendation"). `routes`: the
        candidates (default: every route the current patterns saw; one never
        seen gets the prior). `explore`: None (deterministic for a head),
        "thompson" (rank by a posterior draw, from `rng`) or "ucb" (rank by
        the band's upper end). No patterns or no routes: the prior for each
        candidate given, else an empty list."""
        q = self._query(query)
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValidationError(f"k must be an integer, got {k!r}", field="k")
        if explore is not None and explore not in EXPLORE_MODES:
            raise ValidationError(
                f"explore must be None, 'thompson' or 'ucb', got {explore!r}", field="explore"
            )
        candidates = None if routes is None else _route_names(routes)
        return self._learned()[1].recommend(q, k, candidates, explore, rng)

    def prune_patterns(self, min_quality: float, min_accesses: int, max_age_seconds: float) -> int:
        """Stop serving current patterns with avg_quality < min_quality, fewer
        than min_accesses accesses and no access for max_age_seconds (all
        three, as the reference's should_prune). They stay in history."""
        self._accesses.flush()
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=max_age_seconds)
        with transaction(self.engine, immediate=True) as session:
            head = state.get_head(session)
            result = session.execute(
                sa.update(PatternRow)
                .where(
                    PatternRow.cycle_id == head.cycle_id,
                    PatternRow.pruned_at.is_(None),
                    PatternRow.avg_quality < min_quality,
                    PatternRow.access_count < min_accesses,
                    sa.func.coalesce(PatternRow.last_accessed, PatternRow.created_at) < cutoff,
                )
                .values(pruned_at=now)
                .execution_options(synchronize_session=False)
            )
        self._wrote()
        return int(cast(sa.CursorResult[Any], result).rowcount)

    # -- instant loop ------------------------------------------------------------

    def _micro_projector(self) -> tuple[MicroProjector, float]:
        """The current micro-LoRA's projector and the largest |x| it is sure
        to map to finite values (`_safe_input`)."""

        def load(head: Head) -> tuple[MicroProjector, float]:
            with transaction(self.engine) as session:
                version = state.load_micro_lora(session, head.micro_lora_version_id)
            projector = MicroProjector.of(version)
            return projector, _safe_input(projector.down, projector.lifted)

        return self._cache.get("micro_lora", lambda head: head.micro_lora_version_id, load)

    def apply_micro_lora(self, x: Any) -> np.ndarray:
        """x + delta through the current micro-LoRA (x itself when disabled);
        x is one vector of hidden_dim values or a (n, hidden_dim) batch."""
        vector = np.asarray(x, dtype=np.float32)
        if vector.shape[-1:] != (self.config.hidden_dim,) or vector.ndim > 2:
            raise ValidationError(f"x must have {self.config.hidden_dim} values", field="x")
        # One pass finds both a NaN or infinity and an x too large for the fast path.
        peak = float(np.abs(vector).max()) if vector.size else 0.0
        if not math.isfinite(peak):
            raise ValidationError("x contains NaN or infinity", field="x")
        if not self.enabled:
            unchanged: np.ndarray = vector.copy()
            return unchanged
        projector, safe = self._micro_projector()
        if peak > safe:
            with np.errstate(over="ignore", invalid="ignore"):  # the rare, huge x
                return _finite_output(projector(vector), LoraTier.MICRO)
        return projector(vector)

    def flush(self) -> int:
        """Wait until every queued trajectory is committed, then apply every
        pending micro-LoRA signal and write counted pattern accesses (on the
        writer's thread); returns the number of signals applied."""
        if self._writer is not None:
            return self._writer.flush()
        applied = self._instant.flush()
        self._accesses.flush()
        return applied

    @property
    def pending_signals(self) -> int:
        return self._instant.pending

    # -- counts -----------------------------------------------------------------

    def pending_count(self) -> int:
        with transaction(self.engine) as session:
            return trajectories.count_pending(session)

    def stats(self) -> dict[str, Any]:
        """The reference's statistics keys, plus the store's own (see
        `sona_store.db.stats.store_stats`)."""
        with transaction(self.engine) as session:
            return {
                **store_stats(session),
                # set_enabled gates recording and apply_micro_lora (the instant
                # loop's entry points), not cycles: the reference's
                # background_enabled would always have been this same flag.
                "instant_enabled": self.enabled,
                "micro_signals_pending_here": self._instant.pending,
                "recording": self.recording_stats(),
                "database_url": mask_url(self.engine.url),
                "schema": self.schema,
            }

    def recording_stats(self) -> dict[str, Any]:
        """The writer's figures, read without the database (`background=False`:
        only that)."""
        if self._writer is None:
            return {"background": False}
        stats = self._writer.stats
        return {
            "background": True,
            "queued": self._writer.queued,
            "groups_committed": stats.groups,
            "trajectories_committed": stats.trajectories,
            "retries": stats.retries,
            "wal_checkpoints": stats.checkpoints,
            "last_error": stats.last_error,
        }

    def head(self) -> dict[str, int | None]:
        with transaction(self.engine) as session:
            head = state.get_head(session)
            return {
                "cycle_id": head.cycle_id,
                "base_lora_version_id": head.base_lora_version_id,
                "micro_lora_version_id": head.micro_lora_version_id,
                "ewc_state_id": head.ewc_state_id,
            }


def _patterns(session: Session, cycle_id: int | None) -> list[Pattern]:
    """A cycle's patterns, or (None) the current ones, by id."""
    if cycle_id is None:
        return _serving(session, state.get_head(session).cycle_id)
    cycles.get_cycle(session, cycle_id)  # unknown id: CycleNotFoundError
    rows = session.scalars(
        sa.select(PatternRow).where(PatternRow.cycle_id == cycle_id).order_by(PatternRow.id)
    )
    return [Pattern.from_row(row) for row in rows]


def _serving(session: Session, head_cycle_id: int | None) -> list[Pattern]:
    """The patterns served while `head_cycle_id` is the head: its unpruned ones."""
    if head_cycle_id is None:
        return []
    rows = session.scalars(
        sa.select(PatternRow)
        .where(PatternRow.cycle_id == head_cycle_id, PatternRow.pruned_at.is_(None))
        .order_by(PatternRow.id)
    )
    return [Pattern.from_row(row) for row in rows]


def _route_names(routes: Iterable[str]) -> list[str]:
    """Candidate routes, checked: distinct non-empty strings (as recorded)."""
    if isinstance(routes, str):
        raise ValidationError(
            "routes must be a list of route names, not one string", field="routes"
        )
    names = list(routes)
    for name in names:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValidationError(
                f"each route must be a non-empty string of at most 200 characters, got {name!r}",
                field="routes",
            )
    if len(set(names)) != len(names):
        raise ValidationError("routes has duplicates", field="routes")
    return names


def _safe_input(down: np.ndarray, lifted: np.ndarray) -> float:
    """A bound on max|x| under which x + lifted (down x) cannot overflow
    float32: |down x| and |delta| are at most |down|_F and |lifted|_F |down|_F
    times sqrt(dim) max|x|; a factor of 4 covers float32 rounding."""
    dim = down.shape[-1]
    d = float(np.linalg.norm(down.astype(np.float64)))
    g = float(np.linalg.norm(lifted.astype(np.float64))) * d
    return float(np.finfo(np.float32).max) / (4.0 * (1.0 + max(d, g, 1.0) * math.sqrt(dim)))


def _finite_output(out: np.ndarray, tier: LoraTier) -> np.ndarray:
    """Serving never returns a non-finite value: an x so large that the
    adapter's output overflows float32 is refused instead."""
    if not np.isfinite(out).all():
        raise ValidationError(
            f"x is too large: the {tier} LoRA's output overflows float32", field="x"
        )
    return out


class _GroupRecorder:
    """One recording transaction's insert and its micro-LoRA share: the
    trajectories go in, whole groups of signals (queued + fresh) are applied
    in the same transaction, and `settle` queues the rest once the outcome
    is known (or gives back what was taken, see `InstantLearner.settle`)."""

    def __init__(self, config: SonaConfig, instant: InstantLearner):
        self.config = config
        self.instant = instant
        self._inflight: InFlight | None = None

    def commit(
        self, connection: sa.Connection, items: list[Recordable], ids: list[int] | None
    ) -> list[int]:
        batch = TrajectoryBatch.gather(items, self.config)
        self._inflight = InFlight()
        ids = trajectories.insert_batch(connection, batch, ids)
        # Due micro-LoRA groups are applied in this same transaction; a
        # failing flush leaves the trajectories to commit regardless.
        gradients = fit_width(batch.signals, self.config.hidden_dim)
        self.instant.record(
            connection, BatchSignals(ids, gradients, batch.qualities), self._inflight
        )
        return ids

    def settle(self, committed: bool) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            self.instant.settle(inflight, committed=committed)

    def prepare(self) -> None:
        try:
            self.instant.adopt_orphans_once()
        except Exception as exc:
            logger.warning(
                "micro-LoRA flush deferred (its signals stay pending): %s", short_error(exc)
            )


def _start_writer(
    engine: Engine,
    config: SonaConfig,
    instant: InstantLearner,
    accesses: AccessLog,
    **options: Any,
) -> Writer:
    """The store's writer, holding only the parts it works with (not the store)."""
    recorder = _GroupRecorder(config, instant)
    checkpoint = (lambda: wal_checkpoint(engine)) if is_sqlite_file(engine) else None
    housekeeping = Housekeeping(
        flush=instant.flush,
        accesses=accesses.flush,
        checkpoint=checkpoint,
        prepare=recorder.prepare,
    )
    return Writer(engine, recorder.commit, recorder.settle, housekeeping, **options)


def _in_memory_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and not is_sqlite_file(engine)


def _check_recording_options(max_delay: float, max_queued: int, write_timeout: float) -> None:
    if not (isinstance(max_delay, int | float) and 0 <= max_delay <= 10):
        raise ConfigError(f"max_delay must be a number of seconds in [0, 10], got {max_delay!r}")
    if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
        raise ConfigError(f"max_queued must be a positive integer, got {max_queued!r}")
    if not (isinstance(write_timeout, int | float) and write_timeout > 0):
        raise ConfigError(f"write_timeout must be a positive number, got {write_timeout!r}")


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, size)):
        yield chunk


__all__ = [
    "CycleNotFoundError",
    "CycleResult",
    "GcResult",
    "Pattern",
    "RouteRecommendation",
    "ScoredPattern",
    "SonaStore",
]
