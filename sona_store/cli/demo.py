"""`sona-store demo`: a simulated LLM router learning live, a bad batch among
good traffic, and its quarantine, which leaves every learned tier bit for bit
where a twin store that never saw the batch is. Each step explained in one
line; leaves the database behind."""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sona_store.config import SonaConfig
from sona_store.enums import CycleStatus, LoraTier

if TYPE_CHECKING:
    from sona_store.store import SonaStore

DEMO_URL = "sqlite:///sona-demo.db"
DIM = 32
# Traffic comes in batches of 25 and the micro-LoRA applies signals in groups of
# 25, so a quarantined batch's signals never share a group with good ones.
CONFIG = SonaConfig(
    hidden_dim=DIM,
    pattern_clusters=6,
    base_lora_rank=4,
    base_lora_lr=0.05,
    micro_lora_lr=0.01,
    micro_flush_threshold=25,
)
BAD_SOURCE = "feedback-source-7"


@dataclass(frozen=True)
class Topic:
    name: str
    route: str
    quality: float  # how well the routed model answers this kind of query


TOPICS = (
    Topic("code", "model-coder", 0.9),
    Topic("math", "model-large", 0.75),
    Topic("facts", "model-small", 0.55),
    Topic("chit-chat", "model-small", 0.3),
)


class Router:
    """Fake traffic: each topic is a direction in embedding space."""

    def __init__(self, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        directions = self.rng.normal(size=(len(TOPICS), DIM))
        self.directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def request(self, topic_index: int, *, quality: float | None = None) -> dict[str, Any]:
        topic = TOPICS[topic_index]
        query = self.directions[topic_index] + self.rng.normal(scale=0.25, size=DIM)
        q = topic.quality if quality is None else quality
        q = float(np.clip(q + self.rng.normal(scale=0.05), 0.0, 1.0))
        return {
            "query_embedding": query.tolist(),
            "steps": [
                {
                    "activations": (query + self.rng.normal(scale=0.1, size=DIM)).tolist(),
                    "attention_weights": [0.5, 0.5],
                    "reward": q,
                    "layer_name": "router",
                }
            ],
            "quality": q,
            "model_route": topic.route,
            "context_ids": [f"{topic.name}-doc-{int(self.rng.integers(100))}"],
        }

    def nearest_topic(self, vector: np.ndarray) -> str:
        scores = self.directions @ (vector / (np.linalg.norm(vector) or 1.0))
        return TOPICS[int(np.argmax(scores))].name


def _fresh_sqlite(url: str, say: Callable[[str], None]) -> None:
    from sqlalchemy.engine import make_url

    path = Path(make_url(url).database or "")
    if path.exists():
        say(f"Removing the previous demo database {path}.")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _learned(store: SonaStore) -> dict[str, Any]:
    """Every learned tier as arrays; patterns by content (ids and times differ)."""
    ewc = store.ewc_state()
    patterns = sorted(
        (p.centroid.tobytes(), p.cluster_size, p.total_weight, p.avg_quality)
        for p in store.patterns()
    )
    return {
        "micro-LoRA": store.lora_state(tier=LoraTier.MICRO).up.copy(),
        "base LoRA": store.lora_state().up.copy(),
        "EWC++": np.concatenate([ewc.fisher, ewc.weights, ewc.grad_mean, ewc.grad_var]),
        "patterns": patterns,
    }


def _difference(a: Any, b: Any) -> tuple[bool, str]:
    """(bit for bit equal, how far apart) for one tier."""
    if isinstance(a, np.ndarray):
        same = bool(np.array_equal(a, b))
        return same, f"distance {float(np.linalg.norm(a.astype(np.float64) - b)):.6f}"
    same = a == b
    return same, f"{len(a)} vs {len(b)} patterns, {len(set(a) ^ set(b))} differ"


def _twin(
    store: SonaStore, live: list[dict[str, Any]], later: list[dict[str, Any]], folder: str
) -> dict[str, Any]:
    """A store that never saw the bad batch: the same traffic, each cycle of the
    demo store's history taking the same trajectories, then `later` and a cycle."""
    from sona_store.store import SonaStore

    twin = SonaStore(f"sqlite:///{folder}/twin.db", CONFIG)
    try:
        taken = 0
        for record in reversed(store.history()):
            if record.status == CycleStatus.SKIPPED:
                continue
            batch = live[taken : taken + record.trajectories_processed]
            taken += len(batch)
            if batch:
                twin.record_trajectories(batch)
            twin.run_cycle(force=True)
            if taken == len(live):
                break
        twin.record_trajectories(later)
        twin.run_cycle(force=True)
        return _learned(twin)
    finally:
        twin.close()


def run_demo(
    url: str | None = None, say: Callable[[str], None] = print, seconds: float = 6.0
) -> int:
    from sqlalchemy.engine import make_url

    from sona_store.db.engine import mask_url
    from sona_store.store import SonaStore

    url = url or DEMO_URL
    if url == DEMO_URL:
        _fresh_sqlite(url, say)
    say(f"1. Opening a store at {mask_url(url)} (schema created by the migrations).")
    with SonaStore(url, CONFIG, head_refresh_seconds=0.0) as store:
        all_same = _story(store, say, seconds)
    shown = mask_url(url)
    say("7. Explore next:")
    say(f"   sona-store --url {shown} history")
    say(f"   sona-store --url {shown} quarantines")
    say(f"   sona-store --url {shown} audit")
    needs = (
        "" if importlib.util.find_spec("matplotlib") else "   (pip install 'sona-store[report]')"
    )
    say(f"   sona-store --url {shown} report --out sona-report{needs}")
    if make_url(url).get_backend_name() == "sqlite":
        say(f"   sqlite3 {make_url(url).database} 'SELECT * FROM cycle_audit ORDER BY at'")
    else:
        say(f"   psql '{shown}' -c 'SELECT * FROM cycle_audit ORDER BY at'")
    return 0 if all_same else 1


def _story(store: SonaStore, say: Callable[[str], None], seconds: float) -> bool:
    """Steps 2 to 6: live traffic, a bad batch, its quarantine; True when the
    quarantined store ends bit for bit equal to a twin that never saw it."""
    from sona_store.scheduler.service import SonaScheduler

    router = Router()
    scheduler = SonaScheduler(store, interval=1.0)
    live: list[dict[str, Any]] = []
    try:
        say("2. Starting the scheduler: a learning cycle every second, in the background.")
        scheduler.start()
        say(f"3. Simulating a router for {seconds:.0f} s: 4 topics, answers of different quality.")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = [router.request(i % len(TOPICS)) for i in range(len(live), len(live) + 25)]
            for item in batch:  # the live path: begin, step, end
                t = store.begin_trajectory(item["query_embedding"])
                step = item["steps"][0]
                t.add_step(step["activations"], step["attention_weights"], step["reward"], "router")
                t.set_route(item["model_route"])
                t.add_context(item["context_ids"][0])
                store.end_trajectory(t, item["quality"])
            live += batch
            say(
                f"   recorded {len(live)} trajectories; {store.pending_count()} waiting for a cycle"
            )
            time.sleep(0.25)
    finally:
        scheduler.shutdown()
    waiting = store.pending_count()
    if waiting:
        last = store.run_cycle(force=True)
        say(
            f"4. Scheduler stopped; a forced cycle {last.cycle_id} learned from the "
            f"{last.trajectories_processed} trajectories still waiting."
        )
    else:
        say("4. Scheduler stopped; its cycles learned from every trajectory (none waiting).")
    _show_history(store, say)
    _show_patterns(store, router, say)

    say(
        f"5. A broken feedback source ({BAD_SOURCE}) sends 75 chit-chat queries scored as "
        "perfect answers; 100 good requests follow, and a cycle learns from all of them."
    )
    bad = [router.request(3, quality=1.0) for _ in range(75)]
    for item in bad:
        item["context_ids"] = [BAD_SOURCE]
    good = [router.request(i % len(TOPICS)) for i in range(100)]
    store.record_trajectories(bad)
    store.record_trajectories(good)
    polluted = store.run_cycle(force=True)
    with tempfile.TemporaryDirectory(prefix="sona-demo-twin-") as folder:
        clean = _twin(store, live, good, folder)
    say(
        f"   cycle {polluted.cycle_id} learned from it. Against a twin store fed the same "
        "traffic without the bad batch:"
    )
    for tier, value in _learned(store).items():
        say(f"     {tier:<11} differs: {_difference(value, clean[tier])[1]}")

    result = store.quarantine(
        context_id=BAD_SOURCE, reason="demo: broken feedback source scored chit-chat as perfect"
    )
    say(
        f"6. Quarantined the source's {result.trajectories} trajectories (quarantine "
        f"{result.quarantine_id}, audit record #{result.audit_id}): rolled back cycle(s) "
        f"{', '.join(map(str, result.cycles_rolled_back))} and requeued their "
        f"{result.trajectories_requeued} good trajectories; replayed "
        f"{result.micro_versions_replayed} micro-LoRA versions without the bad signals "
        f"(micro-LoRA moved {result.micro_lora_distance:.6f}, base LoRA "
        f"{result.base_lora_distance:.6f})."
    )
    relearned = store.run_cycle(force=True)
    after = _learned(store)
    say(
        f"   cycle {relearned.cycle_id} relearned the {relearned.trajectories_processed} good "
        "ones. Against the twin that never saw the batch:"
    )
    all_same = True
    for tier, value in after.items():
        same, how = _difference(value, clean[tier])
        all_same = all_same and same
        say(f"     {tier:<11} bit for bit the same: {same}" + ("" if same else f" ({how})"))
    say(
        "   The bad trajectories, the rolled-back cycle and the old micro-LoRA versions stay "
        f"in history; `sona-store release {result.quarantine_id}` would let them learn again."
    )
    return all_same


def _show_history(store: SonaStore, say: Callable[[str], None]) -> None:
    records = store.history(limit=6)
    say("   Recent cycles (newest first):")
    for r in records:
        say(
            f"     #{r.cycle_id:<3} {r.trigger:<9} {r.status:<11} "
            f"{r.trajectories_processed:>4} trajectories {r.patterns_extracted:>2} patterns "
            f"{r.elapsed * 1000:6.1f} ms" + (f"  ({r.reason})" if r.reason else "")
        )


def _show_patterns(store: SonaStore, router: Router, say: Callable[[str], None]) -> None:
    patterns = sorted(store.patterns(), key=lambda p: -p.avg_quality)
    say("   Current patterns (best first), labelled with the nearest topic:")
    for p in patterns:
        say(
            f"     pattern {p.id:<4} ~{router.nearest_topic(p.centroid):<10} "
            f"size {p.cluster_size:>4}  avg quality {p.avg_quality:.2f}"
        )


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.url, seconds=args.seconds)


def register_cli(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="simulate a router learning live, inject a bad batch, quarantine it"
    )
    demo.add_argument("--seconds", type=float, default=6.0, help="how long to simulate traffic")
    demo.set_defaults(func=cmd_demo)
