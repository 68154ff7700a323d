"""The deterministic workload every benchmark (and the reference) runs on.

Trajectories are drawn around `topics` latent centres, so clustering meets
structure as real embeddings would, rather than uniform noise. Chunk c of
1000 trajectories always comes from the same seed, so the first 1k of a 10k
workload are the 1k workload. Values are rounded to 4 decimals so the JSONL
is compact and Python and Node parse exactly the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1000
ATTENTION_LEN = 8
SEED = 20240601


@dataclass(frozen=True)
class Workload:
    """n one-step trajectories of `dim` dimensions, as arrays."""

    queries: np.ndarray  # (n, dim) float64 (values exact to 4 decimals)
    activations: np.ndarray  # (n, dim)
    attention: np.ndarray  # (n, ATTENTION_LEN)
    rewards: np.ndarray  # (n,)
    qualities: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.qualities)

    @property
    def dim(self) -> int:
        return int(self.queries.shape[1])

    def items(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """The JSON shape (plain lists), as parsed from the JSONL."""
        return [_item(self, i, tolist=True) for i in range(start, stop or len(self))]

    def array_items(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """The same trajectories with numpy vectors (cheap to build for large n)."""
        return [_item(self, i, tolist=False) for i in range(start, stop or len(self))]

    def batches(self, size: int, *, arrays: bool = False) -> Iterator[list[dict[str, Any]]]:
        make = self.array_items if arrays else self.items
        for start in range(0, len(self), size):
            yield make(start, min(start + size, len(self)))

    def write_jsonl(self, path: Path) -> Path:
        with path.open("w") as out:
            for start in range(0, len(self), CHUNK):
                for item in self.items(start, min(start + CHUNK, len(self))):
                    out.write(json.dumps(item, separators=(",", ":")))
                    out.write("\n")
        return path


def _item(w: Workload, i: int, *, tolist: bool) -> dict[str, Any]:
    def vec(a: np.ndarray) -> Any:
        return a.tolist() if tolist else a

    return {
        "query_embedding": vec(w.queries[i]),
        "steps": [
            {
                "activations": vec(w.activations[i]),
                "attention_weights": vec(w.attention[i]),
                "reward": float(w.rewards[i]),
            }
        ],
        "quality": float(w.qualities[i]),
    }


def make_workload(n: int, dim: int = 256, *, topics: int = 100, seed: int = SEED) -> Workload:
    """n trajectories; deterministic for (dim, topics, seed), prefix-stable in n."""
    parts = list(iter_chunks(n, dim, topics=topics, seed=seed))
    arrays = [np.concatenate(column) for column in zip(*(_fields(p) for p in parts), strict=True)]
    return Workload(*arrays)


def iter_chunks(
    n: int, dim: int = 256, *, topics: int = 100, seed: int = SEED
) -> Iterator[Workload]:
    """The same trajectories as make_workload(n), CHUNK at a time (for large n)."""
    centres = np.random.default_rng([seed, dim, topics]).normal(0.0, 1.0, (topics, dim))
    for chunk in range((n + CHUNK - 1) // CHUNK):
        rng = np.random.default_rng([seed, dim, topics, chunk])
        size = min(CHUNK, n - chunk * CHUNK)
        topic = rng.integers(0, topics, size)
        queries = centres[topic] + rng.normal(0.0, 0.6, (size, dim))
        activations = centres[topic] + rng.normal(0.0, 0.8, (size, dim))
        attention = rng.dirichlet(np.ones(ATTENTION_LEN), size)
        rewards = rng.uniform(0.0, 1.0, size)
        qualities = rng.uniform(0.2, 1.0, size)
        fields = (queries, activations, attention, rewards, qualities)
        yield Workload(*(np.round(a, 4) for a in fields))


def _fields(w: Workload) -> tuple[np.ndarray, ...]:
    return (w.queries, w.activations, w.attention, w.rewards, w.qualities)
