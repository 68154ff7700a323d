"""Routing benchmark: can the learned patterns pick a model route?

Simulated router traffic (queries drawn around topic directions, with noise;
route quality depending on the topic; halfway, some topics change their best
route). A policy loop per request: `recommend_routes` with Thompson
exploration -> observe the quality -> record the trajectory (batches of
RECORD_EVERY) -> a cycle every CYCLE_EVERY requests. After every cycle,
held-out queries are routed without exploration and scored by their expected
(noise-free) quality as a share of the oracle's (the best route of the
query's topic). At the end of each phase the same held-out queries go through
the baselines: best single route (in hindsight), a random route, and kNN over
the raw logged trajectories (the honest no-learning baseline).

    python -m benchmarks.routing [--quick] [--reps 3] [--url URL] [--output FILE]

Prints a table, writes benchmarks/results/routing.json and the running-regret
chart benchmarks/results/routing_regret.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One BLAS thread for every policy, set before numpy loads: a router decides
# many requests at once, one per thread, and on a shared machine a threaded
# matrix product of the kNN baseline swung 10x from run to run.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


import numpy as np  # noqa: E402

from benchmarks.timing import progress  # noqa: E402
from sona_store import SonaConfig, SonaStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROUTES = ["route-a", "route-b", "route-c", "route-d"]


@dataclass(frozen=True)
class Plan:
    dim: int = 256
    topics: int = 32
    topic_groups: int = 4  # topics of a group share a direction: sibling cosine ~0.8
    topic_spread: float = 0.5  # weight of a topic's own direction against its group's
    requests_per_phase: int = 10_000
    cycle_every: int = 500
    record_every: int = 50
    retention_window: int = 3_000
    pattern_clusters: int = 64
    held_out: int = 500
    query_noise: float = 1.5  # noise norm relative to the topic direction's (1)
    quality_noise: float = 0.1  # standard deviation of an observed quality
    shifted_topics: float = 0.5  # share of topics whose best route changes halfway
    knn_ks: tuple[int, ...] = (10, 25, 50, 100, 200, 400, 800)  # kNN gets its best k
    latency_calls: int = 300
    # kNN's decision time grows with the logs, sona_store's with the patterns:
    # both timed (paired) over these many logged trajectories at the end.
    sweep_logs: tuple[int, ...] = (2_500, 5_000, 10_000, 20_000, 40_000, 80_000)
    seeds: tuple[int, ...] = (0, 1, 2)


QUICK = Plan(
    requests_per_phase=2_000,
    cycle_every=250,
    held_out=200,
    latency_calls=100,
    seeds=(0,),
    sweep_logs=(2_500, 10_000),
)


# -- the simulated world ---------------------------------------------------------------


@dataclass
class World:
    """Topic directions and each phase's route-quality table (topics x routes)."""

    directions: np.ndarray
    quality: list[np.ndarray]  # [before the shift, after]
    shifted: np.ndarray  # topic indices whose best route changed
    plan: Plan

    @classmethod
    def make(cls, plan: Plan, seed: int) -> World:
        rng = np.random.default_rng([seed, 1])
        groups = _unit_rows(rng.normal(size=(plan.topic_groups, plan.dim)))
        own = _unit_rows(rng.normal(size=(plan.topics, plan.dim)))
        group_of = np.arange(plan.topics) % plan.topic_groups
        directions = _unit_rows(groups[group_of] + plan.topic_spread * own)
        table = rng.uniform(0.25, 0.75, (plan.topics, len(ROUTES)))
        best = rng.integers(0, len(ROUTES), plan.topics)
        table[np.arange(plan.topics), best] = rng.uniform(0.8, 0.95, plan.topics)
        after = table.copy()
        shifted = rng.choice(plan.topics, int(plan.topics * plan.shifted_topics), replace=False)
        for t in shifted:  # swap the best route with another one
            other = (best[t] + 1 + rng.integers(0, len(ROUTES) - 1)) % len(ROUTES)
            after[t, [best[t], other]] = after[t, [other, best[t]]]
        return cls(directions, [table, after], np.sort(shifted), plan)

    def queries(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        topics = rng.integers(0, self.plan.topics, n)
        noise = rng.normal(size=(n, self.plan.dim)) * (self.plan.query_noise / self.plan.dim**0.5)
        return (self.directions[topics] + noise).astype(np.float32), topics

    def observe(self, rng: np.random.Generator, phase: int, topic: int, route: int) -> float:
        q = self.quality[phase][topic, route] + rng.normal(0.0, self.plan.quality_noise)
        return float(np.clip(q, 0.0, 1.0))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


# -- policies --------------------------------------------------------------------------


class KnnOverLogs:
    """Per query: the k logged trajectories of highest cosine similarity; the
    route whose neighbours have the best mean quality (a route with no
    neighbour is not chosen unless none has one). Brute force over every
    logged trajectory, as a router joining the raw logs would."""

    def __init__(self, queries: np.ndarray, routes: np.ndarray, qualities: np.ndarray, k: int = 25):
        self.unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        self.routes, self.qualities, self.k = routes, qualities, k

    def choose(self, query: np.ndarray) -> int:
        scores = self.unit @ (query / np.linalg.norm(query))
        k = min(self.k, len(scores))
        near = np.argpartition(-scores, k - 1)[:k]
        counts = np.bincount(self.routes[near], minlength=len(ROUTES))
        sums = np.bincount(self.routes[near], weights=self.qualities[near], minlength=len(ROUTES))
        means = np.where(counts > 0, sums / np.maximum(counts, 1), -1.0)
        return int(np.argmax(means))


def sona_choice(store: SonaStore) -> Callable[[np.ndarray], int]:
    column = {r: i for i, r in enumerate(ROUTES)}

    def choose(query: np.ndarray) -> int:
        return column[store.recommend_routes(query, k=1, routes=ROUTES)[0].route]

    return choose


def share_of_oracle(world: World, phase: int, topics: np.ndarray, chosen: np.ndarray) -> float:
    table = world.quality[phase]
    return float(table[topics, chosen].mean() / table[topics].max(axis=1).mean())


def _block_us(choose: Callable[[np.ndarray], int], block: np.ndarray) -> float:
    begin = time.perf_counter()
    for q in block:
        choose(q)
    return (time.perf_counter() - begin) * 1e6 / len(block)


def decision_us(
    policies: dict[str, Callable[[np.ndarray], int]], queries: np.ndarray, calls: int
) -> dict[str, list[float]]:
    """Microseconds a decision per policy, over blocks of 20 calls; the
    policies take turns block by block, so a change in the machine's load
    (it is shared) touches all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in policies}
    for start in range(0, calls, 20):
        block = queries[start % len(queries) : start % len(queries) + 20]
        for name, choose in policies.items():
            times[name].append(_block_us(choose, block))
    return times


# -- one repetition ----------------------------------------------------------------------


@dataclass
class Run:
    seed: int
    phases: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)  # held-out share after each cycle
    regret: dict[str, list[float]] = field(default_factory=dict)  # running, per request
    sweep: list[dict[str, float]] = field(default_factory=list)  # latency by log size


def run_once(plan: Plan, seed: int, url: str) -> Run:
    world = World.make(plan, seed)
    traffic = np.random.default_rng([seed, 2])
    explore_rng = np.random.default_rng([seed, 3])
    held_rng = np.random.default_rng([seed, 4])
    held_queries, held_topics = world.queries(held_rng, plan.held_out)
    config = SonaConfig(
        hidden_dim=plan.dim,
        pattern_clusters=plan.pattern_clusters,
        retention_window=plan.retention_window,
    )
    store = SonaStore(url, config, head_refresh_seconds=3600.0)
    run = Run(seed)
    logs_q: list[np.ndarray] = []
    logs_route: list[int] = []
    logs_quality: list[float] = []
    regret = {"sona_store (Thompson)": [], "random route": [], "best single route": []}
    pending: list[dict[str, Any]] = []
    column = {r: i for i, r in enumerate(ROUTES)}
    choose = sona_choice(store)
    cycles = 0
    try:
        for phase in (0, 1):
            table = world.quality[phase]
            oracle = table.max(axis=1)
            best_single = int(np.argmax(table.mean(axis=0)))
            queries, topics = world.queries(traffic, plan.requests_per_phase)
            for i in range(plan.requests_per_phase):
                q, t = queries[i], int(topics[i])
                pick = store.recommend_routes(
                    q, k=1, routes=ROUTES, explore="thompson", rng=explore_rng
                )
                route = column[pick[0].route]
                quality = world.observe(traffic, phase, t, route)
                regret["sona_store (Thompson)"].append(oracle[t] - table[t, route])
                regret["random route"].append(oracle[t] - table[t].mean())
                regret["best single route"].append(oracle[t] - table[t, best_single])
                pending.append(
                    {
                        "query_embedding": q,
                        "steps": [],
                        "quality": quality,
                        "model_route": ROUTES[route],
                    }
                )
                logs_q.append(q)
                logs_route.append(route)
                logs_quality.append(quality)
                if len(pending) == plan.record_every:
                    store.record_trajectories(pending)
                    pending = []
                if (i + 1) % plan.cycle_every == 0:
                    store.run_cycle(force=True)
                    cycles += 1
                    chosen = np.array([choose(q) for q in held_queries])
                    run.curve.append(
                        {
                            "cycle": cycles,
                            "phase": phase,
                            "share": share_of_oracle(world, phase, held_topics, chosen),
                        }
                    )
            run.phases.append(
                evaluate(
                    plan,
                    world,
                    phase,
                    store,
                    held_queries,
                    held_topics,
                    logs_q,
                    logs_route,
                    logs_quality,
                )
            )
            progress(
                f"seed {seed} phase {phase}: "
                + ", ".join(f"{k} {v['share']:.3f}" for k, v in run.phases[-1]["policies"].items())
            )
        run.sweep = latency_sweep(plan, world, store, held_queries, np.stack(logs_q))
    finally:
        store.close()
    run.regret = {k: np.cumsum(v).tolist() for k, v in regret.items()}
    return run


def latency_sweep(
    plan: Plan, world: World, store: SonaStore, queries: np.ndarray, logs: np.ndarray
) -> list[dict[str, float]]:
    """Paired decision times of sona_store and kNN over n logged queries, for
    each n of plan.sweep_logs (beyond the run's own logs, more drawn from the
    same topics; routes and qualities do not change the time)."""
    rng = np.random.default_rng(5)
    if len(logs) < max(plan.sweep_logs):
        extra, _ = world.queries(rng, max(plan.sweep_logs) - len(logs))
        logs = np.concatenate([logs, extra])
    routes = rng.integers(0, len(ROUTES), len(logs))
    qualities = rng.uniform(0, 1, len(logs))
    out = []
    for n in plan.sweep_logs:
        knn = KnnOverLogs(logs[:n], routes[:n], qualities[:n])
        times = decision_us(
            {"sona_store": sona_choice(store), "knn": knn.choose}, queries, plan.latency_calls
        )
        out.append(
            {
                "logs": n,
                "sona_us": float(statistics.median(times["sona_store"])),
                "knn_us": float(statistics.median(times["knn"])),
                "ratio": float(
                    statistics.median(
                        k / s for k, s in zip(times["knn"], times["sona_store"], strict=True)
                    )
                ),
            }
        )
    return out


def evaluate(
    plan: Plan,
    world: World,
    phase: int,
    store: SonaStore,
    held_queries: np.ndarray,
    held_topics: np.ndarray,
    logs_q: list[np.ndarray],
    logs_route: list[int],
    logs_quality: list[float],
) -> dict[str, Any]:
    """Every policy on the held-out queries at the end of a phase. kNN gets
    its best k (of plan.knn_ks) for these very queries: a generous baseline."""
    table = world.quality[phase]
    knn = KnnOverLogs(np.stack(logs_q), np.array(logs_route), np.array(logs_quality))
    knn_shares = {}
    for k in plan.knn_ks:
        knn.k = k
        chosen = np.array([knn.choose(q) for q in held_queries])
        knn_shares[k] = share_of_oracle(world, phase, held_topics, chosen)
    knn.k = max(knn_shares, key=knn_shares.__getitem__)
    best_single = int(np.argmax(table.mean(axis=0)))
    rng = np.random.default_rng(0)
    policies: dict[str, Callable[[np.ndarray], int]] = {
        "sona_store": sona_choice(store),
        "kNN over logs": knn.choose,
        "best single route": lambda q: best_single,
        "random route": lambda q: int(rng.integers(len(ROUTES))),
    }
    times = decision_us(policies, held_queries, plan.latency_calls)
    out: dict[str, Any] = {
        "phase": phase,
        "logged": len(logs_q),
        "knn_k": knn.k,
        "knn_share_by_k": knn_shares,
        "knn_over_sona_latency": float(
            statistics.median(
                k / s for k, s in zip(times["kNN over logs"], times["sona_store"], strict=True)
            )
        ),
        "policies": {},
    }
    for name, choose in policies.items():
        if name == "random route":  # its expectation: every route equally likely
            share = float(table[held_topics].mean() / table[held_topics].max(axis=1).mean())
        else:
            chosen = np.array([choose(q) for q in held_queries])
            share = share_of_oracle(world, phase, held_topics, chosen)
        out["policies"][name] = {
            "share": share,
            "decision_us": float(statistics.median(times[name])),
            "decision_us_blocks": times[name],
        }
    return out


# -- summary, targets, chart ---------------------------------------------------------------


def recovery_cycles(run: Run, target: float) -> int | None:
    """Cycles after the shift until the held-out share first reaches `target`."""
    after = [c for c in run.curve if c["phase"] == 1]
    for n, point in enumerate(after, start=1):
        if point["share"] >= target:
            return n
    return None


def summarise(plan: Plan, runs: list[Run]) -> dict[str, Any]:
    def values(phase: int, policy: str, key: str) -> list[float]:
        return [r.phases[phase]["policies"][policy][key] for r in runs]

    rows = []
    for phase, when in ((0, "after warm-up"), (1, "after the shift")):
        for policy in ("sona_store", "kNN over logs", "best single route", "random route"):
            shares = values(phase, policy, "share")
            latency = values(phase, policy, "decision_us")
            rows.append(
                {
                    "when": when,
                    "policy": policy,
                    "share_mean": statistics.mean(shares),
                    "share_min": min(shares),
                    "share_max": max(shares),
                    "decision_us_median": statistics.median(latency),
                    "logged": runs[0].phases[phase]["logged"],
                }
            )
    sona0, knn0 = values(0, "sona_store", "share"), values(0, "kNN over logs", "share")
    sona1, knn1 = values(1, "sona_store", "share"), values(1, "kNN over logs", "share")
    speed0 = [r.phases[0]["knn_over_sona_latency"] for r in runs]
    speed1 = [r.phases[1]["knn_over_sona_latency"] for r in runs]
    recovery = [recovery_cycles(r, 0.90) for r in runs]
    targets = [
        _target("after warm-up: share of oracle >= 0.95", sona0, lambda v: v >= 0.95),
        _target(
            "after warm-up: share >= kNN's - 0.01",
            [s - k for s, k in zip(sona0, knn0, strict=True)],
            lambda v: v >= -0.01,
        ),
        _target(
            "after the shift: share >= kNN's - 0.01 (not a target, reported)",
            [s - k for s, k in zip(sona1, knn1, strict=True)],
            None,
        ),
        _target(
            "after warm-up: decision latency kNN / sona_store >= 20x", speed0, lambda v: v >= 20
        ),
        _target("after the shift: decision latency kNN / sona_store (reported)", speed1, None),
        _target(
            "after the shift: back to 0.90 of oracle within 10 cycles",
            [float("inf") if c is None else c for c in recovery],
            lambda v: v <= 10,
        ),
    ]
    sweep = [
        {
            "logs": point["logs"],
            "sona_us": statistics.median(r.sweep[i]["sona_us"] for r in runs),
            "knn_us": statistics.median(r.sweep[i]["knn_us"] for r in runs),
            "ratio_per_seed": [r.sweep[i]["ratio"] for r in runs],
        }
        for i, point in enumerate(runs[0].sweep)
    ]
    return {"rows": rows, "targets": targets, "latency_sweep": sweep}


def _target(name: str, values: list[float], ok: Callable[[float], bool] | None) -> dict[str, Any]:
    result = None if ok is None else ("PASS" if all(ok(v) for v in values) else "FAIL")
    return {"target": name, "per_seed": values, "mean": statistics.mean(values), "result": result}


def print_table(plan: Plan, summary: dict[str, Any]) -> None:
    print(f"seeds {list(plan.seeds)} ({len(plan.seeds)} repetitions); shares are means (min-max)")
    print(f"{'when':<16} {'policy':<18} {'share of oracle':<24} {'decision us':>12} {'logged':>7}")
    for r in summary["rows"]:
        share = f"{r['share_mean']:.3f} ({r['share_min']:.3f}-{r['share_max']:.3f})"
        print(
            f"{r['when']:<16} {r['policy']:<18} {share:<24} "
            f"{r['decision_us_median']:>12.1f} {r['logged']:>7}"
        )
    print()
    print(f"{'logged trajectories':>20} {'sona_store us':>14} {'kNN us':>10}  kNN/sona per seed")
    for p in summary["latency_sweep"]:
        ratios = ", ".join(f"{v:.1f}" for v in p["ratio_per_seed"])
        print(f"{p['logs']:>20} {p['sona_us']:>14.1f} {p['knn_us']:>10.1f}  [{ratios}]")
    print()
    for t in summary["targets"]:
        per_seed = ", ".join(f"{v:.3g}" for v in t["per_seed"])
        print(f"{t['target']:<62} [{per_seed}] {t['result'] or ''}")


def plot_regret(plan: Plan, runs: list[Run], path: Path) -> Path:
    """Running regret (oracle's expected quality less the chosen route's,
    summed over requests), mean over the repetitions, in the report style."""
    from sona_store.services.report import _new_figure

    fig, (ax,) = _new_figure()
    ax.set_title("Routing: running regret (mean over repetitions)")
    ax.set_xlabel("request")
    ax.set_ylabel("cumulative regret (expected quality)")
    colours = {
        "sona_store (Thompson)": "#1f77b4",
        "best single route": "#2ca02c",
        "random route": "#7f7f7f",
    }
    for name, colour in colours.items():
        curve = np.mean([r.regret[name] for r in runs], axis=0)
        ax.plot(np.arange(1, len(curve) + 1), curve, color=colour, label=name)
    ax.axvline(plan.requests_per_phase, color="#d62728", linestyle="--", label="shift")
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke)")
    parser.add_argument("--reps", type=int, help="repetitions (seeds 0..reps-1)")
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--output", type=Path, default=RESULTS / "routing.json")
    parser.add_argument("--chart", type=Path, default=RESULTS / "routing_regret.png")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.reps:
        plan = Plan(**{**plan.__dict__, "seeds": tuple(range(args.reps))})
    started = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in plan.seeds:
            url = args.url or f"sqlite:///{Path(folder) / f'routing_{seed}.db'}"
            runs.append(run_once(plan, seed, url))
    summary = summarise(plan, runs)
    print_table(plan, summary)
    chart = plot_regret(plan, runs, args.chart)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": time.time() - started,
                "plan": {**plan.__dict__, "seeds": list(plan.seeds), "routes": ROUTES},
                "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                "load_average": os.getloadavg(),
                "summary": summary,
                "runs": [{"seed": r.seed, "phases": r.phases, "curve": r.curve} for r in runs],
            },
            indent=2,
        )
    )
    progress(f"wrote {args.output} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
