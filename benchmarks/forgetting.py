"""Two-task forgetting: does EWC++ keep what the base LoRA learned on task A
while it learns task B?

Task A and task B are trajectories around different directions of embedding
space. A store learns A for `cycles_a` cycles (enough for EWC++ to collect the
50 samples its task-boundary test needs), then B for `cycles_b` cycles. The
drift is how far the adapter's output on task-A probes moves while B is
learned, relative to how far learning A moved it: with EWC++ on it should be
smaller than with EWC++ off (ewc_lambda = 0).

    python -m benchmarks.forgetting [--cycles-a 60] [--cycles-b 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from sona_store import SonaConfig, SonaStore

DIM = 32


def _task(rng: np.random.Generator, direction: np.ndarray, n: int) -> list[dict]:
    items = []
    for _ in range(n):
        query = direction + rng.normal(scale=0.3, size=DIM)
        items.append(
            {
                "query_embedding": query.tolist(),
                "steps": [{"activations": query.tolist(), "reward": 0.9}],
                "quality": 0.9,
            }
        )
    return items


def _outputs(store: SonaStore, probes: np.ndarray) -> np.ndarray:
    layers = store.config.base_lora_layers
    return np.stack([store.apply_base_lora(layer, probes) for layer in range(layers)])


def run(ewc_lambda: float, cycles_a: int, cycles_b: int, seed: int = 3) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(2, DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    probes = np.stack([directions[0] + rng.normal(scale=0.3, size=DIM) for _ in range(16)])
    probes = probes.astype(np.float32)
    config = SonaConfig(
        hidden_dim=DIM,
        pattern_clusters=2,
        base_lora_rank=4,
        base_lora_lr=0.5,
        ewc_lambda=ewc_lambda,
        retention_window=40,
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = SonaStore(
            f"sqlite:///{Path(tmp) / 'forgetting.db'}", config, head_refresh_seconds=0
        )
        start = _outputs(store, probes)
        for _ in range(cycles_a):
            store.record_trajectories(_task(rng, directions[0], 20))
            store.run_cycle(force=True)
        after_a = _outputs(store, probes)
        boundaries = 0
        for _ in range(cycles_b):
            store.record_trajectories(_task(rng, directions[1], 20))
            store.run_cycle(force=True)
            boundaries += int(store.ewc_state().task_id > 0 and boundaries == 0)
        after_b = _outputs(store, probes)
        tasks = len(store.ewc_state().tasks)
        store.close()
    learned = float(np.linalg.norm(after_a - start))
    drift = float(np.linalg.norm(after_b - after_a))
    return {
        "ewc_lambda": ewc_lambda,
        "learned_on_a": learned,
        "drift_on_a_probes": drift,
        "relative_drift": drift / learned if learned else float("nan"),
        "tasks_remembered": tasks,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles-a", type=int, default=60)
    parser.add_argument("--cycles-b", type=int, default=30)
    parser.add_argument("--ewc-lambda", type=float, default=SonaConfig().ewc_lambda)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results = {
        "ewc_on": run(args.ewc_lambda, args.cycles_a, args.cycles_b),
        "ewc_off": run(0.0, args.cycles_a, args.cycles_b),
    }
    on, off = results["ewc_on"]["drift_on_a_probes"], results["ewc_off"]["drift_on_a_probes"]
    results["drift_ratio_on_over_off"] = {"value": on / off if off else float("nan")}
    print(f"{'':10} {'learned on A':>14} {'drift on A':>12} {'relative':>9} {'tasks':>6}")
    for name in ("ewc_on", "ewc_off"):
        r = results[name]
        print(
            f"{name:10} {r['learned_on_a']:14.5f} {r['drift_on_a_probes']:12.5f} "
            f"{r['relative_drift']:9.3f} {r['tasks_remembered']:6d}"
        )
    print(f"drift with EWC++ / without: {on / off:.3f}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
