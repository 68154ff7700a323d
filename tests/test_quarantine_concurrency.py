"""Recording while a quarantine runs loses nothing: every trajectory recorded
meanwhile is pending for the next cycle, and its micro-LoRA signal is applied
exactly once, on the replayed line."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaStore
from sona_store.db import state
from sona_store.db.engine import transaction
from sona_store.db.models import LoraVersion, MicroLoraSignal
from sona_store.db.quarantines import quarantined
from sona_store.learning.micro_lora import apply_groups
from sona_store.services import quarantine as quarantine_module
from sona_store.services.instant import stored_signals

from .helpers import make_trajectories
from .test_quarantine import CONFIG, DIM, bad, good

WAIT_S = 120.0


def head_line(store: SonaStore) -> list[tuple[int, int]]:
    """(version, the flush whose ledger rows are its group), oldest first,
    after the initial version."""
    with store.engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                sa.text("SELECT id, parent_id, source FROM lora_versions WHERE tier = 'micro'")
            )
        }
        replays = dict(
            conn.execute(
                sa.text("SELECT lora_version_id, replay_of_id FROM micro_lora_replays")
            ).all()
        )
    line = []
    version = store.head()["micro_lora_version_id"]
    while rows[version].source != "initial":
        line.append((version, replays.get(version, version)))
        version = rows[version].parent_id
    return line[::-1]


def recomputed_micro_head(store: SonaStore) -> np.ndarray:
    """The micro-LoRA `up` rebuilt from the initial version by applying each
    head-line version's ledger group (less the quarantined) once, in order."""
    line = head_line(store)
    with transaction(store.engine) as session:
        version = session.get(LoraVersion, line[0][0]) if line else None
        first_parent = version.parent_id if version else store.head()["micro_lora_version_id"]
        weights = state.load_micro_lora(session, first_parent)
        for _, origin in line:
            ids = list(
                session.scalars(
                    sa.select(MicroLoraSignal.trajectory_id)
                    .where(
                        MicroLoraSignal.micro_lora_version_id == origin,
                        ~quarantined(MicroLoraSignal.trajectory_id),
                    )
                    .order_by(MicroLoraSignal.trajectory_id)
                )
            )
            signals = stored_signals(session, ids, store.config)
            weights = apply_groups(
                weights,
                signals.gradients,
                signals.qualities.astype(np.float32),
                store.config.micro_flush_threshold,
                store.config.micro_lora_lr,
            )
    return weights.up


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_recording_during_a_quarantine_loses_nothing(db_url, monkeypatch):
    main = SonaStore(db_url, CONFIG, head_refresh_seconds=0.0)
    writer = SonaStore(db_url, CONFIG, head_refresh_seconds=0.0)
    recorded: list[int] = []
    errors: list[BaseException] = []
    calls = threading.Condition()
    started, finished = [0], [0]  # the writer's record calls
    after_quarantine = threading.Event()
    stop = threading.Event()

    def write() -> None:
        seed = 1000
        try:
            while not stop.is_set():
                seed += 1
                with calls:
                    started[0] += 1
                    calls.notify_all()
                # 5 a batch with groups of 4: signals wait in memory across batches.
                recorded.extend(writer.record_trajectories(make_trajectories(5, DIM, seed=seed)))
                with calls:
                    finished[0] += 1
                if after_quarantine.is_set() and len(recorded) >= after_count[0] + 20:
                    stop.set()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    try:
        main.record_trajectories(good(1))
        main.run_cycle(force=True)
        bad_ids = main.record_trajectories(bad())
        main.record_trajectories(good(2))
        main.run_cycle(force=True)

        real_replay = quarantine_module.replay_without_quarantined

        def replay_while_recording(*args, **kwargs):
            # Inside the quarantine's transaction: go on once the writer is
            # inside a record call (waiting for the locks this one holds).
            with calls:
                assert calls.wait_for(lambda: started[0] > finished[0], WAIT_S)
            return real_replay(*args, **kwargs)

        monkeypatch.setattr(quarantine_module, "replay_without_quarantined", replay_while_recording)
        after_count = [0]
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        with calls:
            assert calls.wait_for(lambda: started[0] > 0, WAIT_S)
        result = main.quarantine(bad_ids, reason="broken client")
        after_count[0] = len(recorded)
        after_quarantine.set()
        thread.join(WAIT_S)
        assert not thread.is_alive() and not errors, errors
        assert result.cycles_rolled_back and result.micro_versions_written >= 1

        writer.flush()
        main.flush()
        with main.engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT id FROM trajectories")).scalars())
            ledger = dict(
                conn.execute(
                    sa.text("SELECT trajectory_id, micro_lora_version_id FROM micro_lora_signals")
                ).all()
            )
        # Nothing lost: every trajectory the writer recorded is stored, pending
        # for the next cycle, and its signal applied once on the head's line.
        assert len(recorded) >= 20 and set(recorded) <= stored
        on_line = {origin for _, origin in head_line(main)}
        assert all(ledger.get(i) in on_line for i in recorded)
        assert not any(ledger.get(i) in on_line for i in bad_ids)
        assert main.pending_count() == len(recorded) + result.trajectories_requeued
        assert np.array_equal(main.lora_state(tier="micro").up[0], recomputed_micro_head(main))
    finally:
        stop.set()
        writer.close()
        main.close()
