"""A quarantine's micro-LoRA tier: re-apply, without the quarantined signals,
every micro-LoRA version on the head's line from the first one that applied
one of them.

The head's line is the chain of `parent_id`s from the head's micro-LoRA
version. A flush version's signal group is its rows of `micro_lora_signals`,
applied in trajectory-id order (as `InstantLearner._apply` does); a replayed
version's group is that of the flush it replays (`micro_lora_replays`), less
what is quarantined. An imported version (or the initial one) replaced the
weights whole: nothing before it on the line is replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.config import SonaConfig
from sona_store.db import state
from sona_store.db.models import LoraVersion, MicroLoraReplay, MicroLoraSignal
from sona_store.db.quarantines import chunks, quarantined
from sona_store.db.retention import dropped_among
from sona_store.enums import LoraTier
from sona_store.learning.micro_lora import apply_groups
from sona_store.services.instant import stored_signals
from sona_store.services.rollback import vectors_dropped_error

RESETS = ("initial", "import")  # versions whose weights owe nothing to their parents


@dataclass(frozen=True)
class MicroReplay:
    """What the replay did. `head_version_id` is the micro-LoRA version to make
    current (an existing one when every replayed group was left empty)."""

    head_version_id: int
    versions_replayed: int  # versions of the line re-applied (empty ones included)
    versions_written: int  # new versions (a group left empty writes none)
    signals_removed: int  # quarantined signals taken out of the line
    signals_reapplied: int


@dataclass(frozen=True)
class _Version:
    id: int
    parent_id: int | None
    source: str
    origin: int  # the flush whose ledger rows are its group


def replay_without_quarantined(
    session: Session, config: SonaConfig, head_version_id: int, quarantine_id: int, ids: list[int]
) -> MicroReplay | None:
    """Replay the head's line without the (just quarantined) trajectories `ids`
    and every other quarantined one; None when none of `ids` is in the head's
    weights. Writes the new versions, their `micro_lora_replays` rows, and
    removes the ledger rows of the signals taken out (so a release makes them
    unapplied, for the next flush to apply)."""
    applied_in = _ledger_versions(session, ids)
    if not applied_in:
        return None
    line = _line_from(session, head_version_id, min(applied_in.values()))
    origins = set(applied_in.values())
    first = next((i for i, v in enumerate(line) if v.origin in origins), None)
    if first is None:
        return None
    todo = line[first:]
    parent = todo[0].parent_id
    assert parent is not None, "a flushed micro-LoRA version always has a parent"
    base = state.load_micro_lora_version(session.connection(), parent)
    groups = _groups(session, [v.origin for v in todo])
    every = sorted({i for members in groups.values() for i in members})
    dropped = dropped_among(session, every)
    if dropped:  # the replay recomputes their signals from the stored vectors
        raise vectors_dropped_error(
            session,
            f"cannot replay the micro-LoRA without quarantine {quarantine_id}: {dropped} of "
            f"the {len(every)} trajectories whose signals it re-applies",
            "Quarantine a later batch only",
        )
    signals = stored_signals(session, every, config)
    row_of = {trajectory_id: k for k, trajectory_id in enumerate(signals.ids)}
    current = base
    replays: list[dict[str, int]] = []
    for version in todo:
        members = groups.get(version.origin, [])
        if not members:
            continue  # a group left empty is skipped
        rows = np.fromiter((row_of[i] for i in members), dtype=np.int64, count=len(members))
        weights = apply_groups(
            current.weights,
            signals.gradients[rows],
            signals.qualities[rows].astype(np.float32),
            config.micro_flush_threshold,
            config.micro_lora_lr,
        )
        current = state.append_micro_lora(
            session.connection(),
            weights,
            current,
            f"replay of version {version.origin} without quarantine {quarantine_id}",
            source="replay",
        )
        replays.append(
            {
                "lora_version_id": current.version_id,
                "replay_of_id": version.origin,
                "quarantine_id": quarantine_id,
            }
        )
    if replays:  # one statement: a round trip a version was a large share of the replay
        session.execute(sa.insert(MicroLoraReplay), replays)
    replayed = {v.origin for v in todo}
    removed = [t for t, v in applied_in.items() if v in replayed]
    for chunk in chunks(removed):
        session.execute(sa.delete(MicroLoraSignal).where(MicroLoraSignal.trajectory_id.in_(chunk)))
    return MicroReplay(
        head_version_id=current.version_id,
        versions_replayed=len(todo),
        versions_written=len(replays),
        signals_removed=len(removed),
        signals_reapplied=len(every),
    )


def _ledger_versions(session: Session, ids: list[int]) -> dict[int, int]:
    """{trajectory id: the flush version that applied its signal}."""
    out: dict[int, int] = {}
    for chunk in chunks(ids):
        for trajectory_id, version_id in session.execute(
            sa.select(MicroLoraSignal.trajectory_id, MicroLoraSignal.micro_lora_version_id).where(
                MicroLoraSignal.trajectory_id.in_(chunk)
            )
        ):
            out[trajectory_id] = version_id
    return out


def _line_from(session: Session, head_version_id: int, lowest: int) -> list[_Version]:
    """The head's line, oldest first, from its first version with an id of at
    least `lowest` (a version's parent is always older), after its last reset."""
    rows = session.execute(
        sa.select(LoraVersion.id, LoraVersion.parent_id, LoraVersion.source).where(
            LoraVersion.tier == LoraTier.MICRO, LoraVersion.id >= lowest
        )
    ).all()
    by_id = {r.id: r for r in rows}
    replays: dict[int, int] = {
        version_id: replay_of
        for version_id, replay_of in session.execute(
            sa.select(MicroLoraReplay.lora_version_id, MicroLoraReplay.replay_of_id).where(
                MicroLoraReplay.lora_version_id >= lowest
            )
        )
    }
    line: list[_Version] = []
    version: int | None = head_version_id
    while version is not None and version in by_id:
        row = by_id[version]
        if row.source in RESETS:
            break
        line.append(_Version(row.id, row.parent_id, row.source, replays.get(row.id, row.id)))
        version = row.parent_id
    line.reverse()
    return line


def _groups(session: Session, origins: list[int]) -> dict[int, list[int]]:
    """{flush version: its trajectories not quarantined, ascending}."""
    groups: dict[int, list[int]] = {}
    for chunk in chunks(sorted(set(origins))):
        for trajectory_id, version in session.execute(
            sa.select(MicroLoraSignal.trajectory_id, MicroLoraSignal.micro_lora_version_id)
            .where(
                MicroLoraSignal.micro_lora_version_id.in_(chunk),
                ~quarantined(MicroLoraSignal.trajectory_id),
            )
            .order_by(MicroLoraSignal.trajectory_id)
        ):
            groups.setdefault(version, []).append(trajectory_id)
    return groups


__all__ = ["MicroReplay", "replay_without_quarantined"]
