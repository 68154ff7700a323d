"""Small deterministic trajectory generators for tests, and a thread fan-out."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def make_trajectories(
    n: int, dim: int, *, seed: int = 0, steps: int = 1, quality: float | None = None
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append(
            {
                "query_embedding": rng.uniform(-1, 1, dim).tolist(),
                "steps": [
                    {
                        "activations": rng.uniform(-1, 1, dim).tolist(),
                        "attention_weights": [0.5, 0.5],
                        "reward": float(rng.uniform(0, 1)),
                    }
                    for _ in range(steps)
                ],
                "quality": float(rng.uniform(0.2, 1.0)) if quality is None else quality,
            }
        )
    return out


def run_threads(worker: Callable[[int], None], seeds: Iterable[int]) -> None:
    """Run `worker(seed)` in one thread per seed and wait for them all (a
    worker records its own failures: an exception here would be lost)."""
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
