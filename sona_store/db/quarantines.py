"""Quarantine rows: which trajectories a selection names, who is quarantined
now, and the membership and release writes. A trajectory is quarantined while
one of its quarantines is not released."""

from __future__ import annotations

import datetime as dt
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from sona_store.db.models import Quarantine, QuarantinedTrajectory, Trajectory
from sona_store.db.types import utcnow
from sona_store.errors import QuarantineError, QuarantineNotFoundError

CHUNK = 5000  # ids a statement: under every backend's bound-parameter limit
RANGES_A_STATEMENT = 400


def quarantined(
    trajectory_id: ColumnElement[Any] | InstrumentedAttribute[Any],
) -> ColumnElement[bool]:
    """True where the trajectory is in a quarantine not released."""
    return sa.exists().where(
        QuarantinedTrajectory.trajectory_id == trajectory_id,
        Quarantine.id == QuarantinedTrajectory.quarantine_id,
        Quarantine.released_at.is_(None),
    )


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, distinct ids as inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def format_ranges(runs: list[tuple[int, int]], limit: int = 20) -> str:
    """'1-500,700' (the CLI's --ids syntax), cut after `limit` runs."""
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:limit])
    return text + (f",... ({len(runs) - limit} more runs)" if len(runs) > limit else "")


@dataclass(frozen=True)
class Selection:
    """The trajectories a quarantine names: every given criterion must hold.
    `recorded_from` is inclusive, `recorded_to` exclusive (UTC)."""

    ids: tuple[int, ...] | None = None
    recorded_from: dt.datetime | None = None
    recorded_to: dt.datetime | None = None
    model_route: str | None = None
    context_id: str | None = None

    @classmethod
    def of(
        cls,
        ids: Iterable[int] | None,
        recorded_from: dt.datetime | str | None,
        recorded_to: dt.datetime | str | None,
        model_route: str | None,
        context_id: str | None,
    ) -> Selection:
        """Checked input: ids are positive integers, times datetimes or ISO
        strings (naive means UTC), routes and contexts non-empty text."""
        checked = None
        if ids is not None:
            if isinstance(ids, str | bytes):
                raise QuarantineError("ids must be integers (the CLI takes ranges like 1-500,700)")
            checked = tuple(_trajectory_id(i) for i in ids)
            if not checked:
                raise QuarantineError("ids is empty: name at least one trajectory")
        selection = cls(
            ids=checked,
            recorded_from=_moment(recorded_from, "recorded_from"),
            recorded_to=_moment(recorded_to, "recorded_to"),
            model_route=_text(model_route, "model_route"),
            context_id=_text(context_id, "context_id"),
        )
        if selection.is_empty():
            raise QuarantineError(
                "name the trajectories to quarantine: ids, recorded_from/recorded_to, "
                "model_route or context_id"
            )
        if (
            selection.recorded_from is not None
            and selection.recorded_to is not None
            and selection.recorded_from >= selection.recorded_to
        ):
            raise QuarantineError("recorded_from must be before recorded_to")
        return selection

    def is_empty(self) -> bool:
        return all(value is None for value in self.__dict__.values())

    def to_dict(self) -> dict[str, Any]:
        """As stored in `quarantines.selection` (ids as ranges)."""
        out: dict[str, Any] = {}
        if self.ids is not None:
            out["ids"] = format_ranges(id_ranges(self.ids), limit=10_000)
        for name in ("recorded_from", "recorded_to"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        for name in ("model_route", "context_id"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def describe(self) -> str:
        parts = []
        for key, value in self.to_dict().items():
            parts.append(
                f"{key} {format_ranges(id_ranges(self.ids or ())) if key == 'ids' else value}"
            )
        return ", ".join(parts)


def _trajectory_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise QuarantineError(f"trajectory id {value!r} is not an integer")
    if value < 1:
        raise QuarantineError(f"trajectory id {value} is not positive")
    return int(value)


def _moment(value: dt.datetime | str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise QuarantineError(f"{name}: {value!r} is not an ISO date or time") from None
    if not isinstance(value, dt.datetime):
        raise QuarantineError(f"{name} must be a datetime or an ISO string, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _text(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise QuarantineError(f"{name} must be non-empty text")
    return value


def _context_clause(session: Session, context_id: str) -> sa.TextClause:
    """The trajectory's `context_ids` (a JSON list) holds `context_id`."""
    if session.get_bind().dialect.name == "postgresql":
        sql = (
            "EXISTS (SELECT 1 FROM json_array_elements_text(trajectories.context_ids) AS e(v)"
            " WHERE e.v = :context_id)"
        )
    else:
        sql = (
            "EXISTS (SELECT 1 FROM json_each(trajectories.context_ids) AS e"
            " WHERE e.value = :context_id)"
        )
    return sa.text(sql).bindparams(context_id=context_id)


def select_ids(session: Session, selection: Selection) -> list[int]:
    """Ids of the trajectories the selection names, ascending. Explicit ids
    that do not exist are an error (a typo must not quarantine less)."""
    where: list[Any] = []
    if selection.recorded_from is not None:
        where.append(Trajectory.created_at >= selection.recorded_from)
    if selection.recorded_to is not None:
        where.append(Trajectory.created_at < selection.recorded_to)
    if selection.model_route is not None:
        where.append(Trajectory.model_route == selection.model_route)
    if selection.context_id is not None:
        where.append(_context_clause(session, selection.context_id))
    if selection.ids is None:
        return list(session.scalars(sa.select(Trajectory.id).where(*where).order_by(Trajectory.id)))
    runs = id_ranges(selection.ids)
    existing: list[int] = []
    found: list[int] = []
    for start in range(0, len(runs), RANGES_A_STATEMENT):
        part = sa.or_(
            *(Trajectory.id.between(a, b) for a, b in runs[start : start + RANGES_A_STATEMENT])
        )
        rows = session.execute(
            sa.select(Trajectory.id, sa.and_(sa.true(), *where)).where(part).order_by(Trajectory.id)
        ).all()
        existing += [r[0] for r in rows]
        found += [r[0] for r in rows if r[1]]
    missing = sorted(set(selection.ids) - set(existing))
    if missing:
        raise QuarantineError(
            f"no trajectory with id {format_ranges(id_ranges(missing), limit=5)}: nothing quarantined"
        )
    return found


def chunks(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def active_quarantines_of(session: Session, ids: list[int]) -> dict[int, int]:
    """{quarantine id: how many of `ids` it holds} over unreleased quarantines."""
    held: dict[int, int] = {}
    for chunk in chunks(ids):
        for quarantine_id, count in session.execute(
            sa.select(QuarantinedTrajectory.quarantine_id, sa.func.count())
            .join(Quarantine, Quarantine.id == QuarantinedTrajectory.quarantine_id)
            .where(QuarantinedTrajectory.trajectory_id.in_(chunk), Quarantine.released_at.is_(None))
            .group_by(QuarantinedTrajectory.quarantine_id)
        ):
            held[quarantine_id] = held.get(quarantine_id, 0) + count
    return held


def add(
    session: Session, *, actor: str, reason: str, selection: Selection, ids: list[int]
) -> Quarantine:
    """The quarantine row and one membership row per trajectory."""
    row = Quarantine(
        created_at=utcnow(),
        actor=actor,
        reason=reason,
        selection=selection.to_dict(),
        trajectory_count=len(ids),
    )
    session.add(row)
    session.flush()
    for chunk in chunks(ids):
        session.execute(
            sa.insert(QuarantinedTrajectory),
            [{"quarantine_id": row.id, "trajectory_id": i} for i in chunk],
        )
    return row


def consumers(session: Session, ids: list[int]) -> dict[int, int]:
    """{trajectory id: the cycle that consumed it} for the consumed ones."""
    out: dict[int, int] = {}
    for chunk in chunks(ids):
        for trajectory_id, cycle_id in session.execute(
            sa.select(Trajectory.id, Trajectory.consumed_by_cycle_id).where(
                Trajectory.id.in_(chunk), Trajectory.consumed_by_cycle_id.is_not(None)
            )
        ):
            if cycle_id is not None:  # the query's own condition, for the type checker
                out[trajectory_id] = cycle_id
    return out


def get(session: Session, quarantine_id: int, *, for_update: bool = False) -> Quarantine:
    statement = sa.select(Quarantine).where(Quarantine.id == quarantine_id)
    if for_update:
        statement = statement.with_for_update()
    row = session.scalars(statement).one_or_none()
    if row is None:
        raise QuarantineNotFoundError(f"no quarantine with id {quarantine_id}")
    return row


def members(session: Session, quarantine_id: int) -> list[int]:
    return list(
        session.scalars(
            sa.select(QuarantinedTrajectory.trajectory_id)
            .where(QuarantinedTrajectory.quarantine_id == quarantine_id)
            .order_by(QuarantinedTrajectory.trajectory_id)
        )
    )


def all_quarantines(session: Session) -> list[Quarantine]:
    return list(session.scalars(sa.select(Quarantine).order_by(Quarantine.id.desc())))
