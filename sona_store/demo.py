"""`sona-store demo`: a simulated LLM router learning live, a bad batch, and
its rollback, each step explained in one line. Leaves the database behind."""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from sona_store.config import SonaConfig
from sona_store.db.engine import mask_url
from sona_store.scheduler import SonaScheduler
from sona_store.store import SonaStore

DEMO_URL = "sqlite:///sona-demo.db"
DIM = 32
CONFIG = SonaConfig(
    hidden_dim=DIM, pattern_clusters=6, base_lora_rank=4, base_lora_lr=0.05, micro_lora_lr=0.01
)


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
    path = Path(make_url(url).database or "")
    if path.exists():
        say(f"Removing the previous demo database {path}.")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _state_probe(store: SonaStore, router: Router) -> dict[str, Any]:
    lora = store.lora_state()
    # How strongly the adapter pulls a chit-chat query toward chit-chat: the
    # cosine between its output delta and the topic's direction.
    probe = router.directions[3].astype(np.float32)
    delta = store.apply_base_lora(0, probe) - probe
    return {
        "lora_version": lora.version_id,
        "up": lora.up.copy(),
        "norm": float(np.linalg.norm(lora.up)),
        "pull": float(np.linalg.norm(delta)),
        "alignment": float(delta @ probe / (np.linalg.norm(delta) or 1.0)),
        "patterns": len(store.patterns()),
    }


def run_demo(
    url: str | None = None, say: Callable[[str], None] = print, seconds: float = 6.0
) -> int:
    url = url or DEMO_URL
    if url == DEMO_URL:
        _fresh_sqlite(url, say)
    say(f"1. Opening a store at {mask_url(url)} (schema created by the migrations).")
    store = SonaStore(url, CONFIG, head_refresh_seconds=0.0)
    router = Router()
    scheduler = SonaScheduler(store, interval=1.0)
    try:
        say("2. Starting the scheduler: a learning cycle every second, in the background.")
        scheduler.start()
        say(f"3. Simulating a router for {seconds:.0f} s: 4 topics, answers of different quality.")
        deadline = time.monotonic() + seconds
        recorded = 0
        while time.monotonic() < deadline:
            batch = [router.request(i % len(TOPICS)) for i in range(recorded, recorded + 25)]
            for item in batch:  # the live path: begin, step, end
                t = store.begin_trajectory(item["query_embedding"])
                step = item["steps"][0]
                t.add_step(step["activations"], step["attention_weights"], step["reward"], "router")
                t.set_route(item["model_route"])
                t.add_context(item["context_ids"][0])
                store.end_trajectory(t, item["quality"])
            recorded += len(batch)
            say(f"   recorded {recorded} trajectories; {store.pending_count()} waiting for a cycle")
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

    before = _state_probe(store, router)
    say("5. Injecting a bad batch: 80 chit-chat queries wrongly scored as perfect answers.")
    store.record_trajectories([router.request(3, quality=1.0) for _ in range(80)])
    bad = store.run_cycle(force=True)
    after = _state_probe(store, router)
    say(
        f"   cycle {bad.cycle_id} learned from it: base LoRA now version "
        f"{after['lora_version']} (was {before['lora_version']}; version ids are shared "
        f"with the micro-LoRA's live updates), weight norm {before['norm']:.4f} -> {after['norm']:.4f}, "
        f"adapter delta on a chit-chat query {before['pull']:.4f} -> {after['pull']:.4f} "
        f"(cosine with chit-chat {before['alignment']:+.2f} -> {after['alignment']:+.2f})"
    )
    assert bad.cycle_id is not None  # a cycle that ran has its record
    move = store.rollback(bad.cycle_id, reason="demo: bad batch of mis-scored chit-chat")
    restored = _state_probe(store, router)
    same = np.array_equal(restored["up"], before["up"])
    say(
        f"6. Rolled back cycle {bad.cycle_id}: head moved {move.from_cycle_id} -> "
        f"{move.to_cycle_id}; LoRA version {restored['lora_version']} is current again, "
        f"weights bit-for-bit as before: {same}; audit record #{move.audit_id}."
    )
    say(
        f"   The bad cycle and its patterns stay in history (status rolled_back); "
        f"{restored['patterns']} patterns are current."
    )
    store.close()
    shown = mask_url(url)
    say("7. Explore next:")
    say(f"   sona-store --url {shown} history")
    say(f"   sona-store --url {shown} audit")
    needs = (
        "" if importlib.util.find_spec("matplotlib") else "   (pip install 'sona-store[report]')"
    )
    say(f"   sona-store --url {shown} report --out sona-report{needs}")
    if make_url(url).get_backend_name() == "sqlite":
        say(f"   sqlite3 {make_url(url).database} 'SELECT * FROM cycle_audit ORDER BY at'")
    else:
        say(f"   psql '{shown}' -c 'SELECT * FROM cycle_audit ORDER BY at'")
    return 0 if same else 1


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
        "demo", help="simulate a router learning live, inject a bad batch, roll it back"
    )
    demo.add_argument("--seconds", type=float, default=6.0, help="how long to simulate traffic")
    demo.set_defaults(func=cmd_demo)
