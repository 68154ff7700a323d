"""Issue 15, point 4: `sona-store ingest`'s peak memory does not grow with the
file. The micro-LoRA catch-up after the commit used to load every unapplied
trajectory at once (164 MiB at 20k lines, 467 MiB at 100k, 128 dims)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sona_store import SonaConfig, SonaStore

from .conftest import create_pg_database, drop_pg_database
from .service_helpers import child_env, inspector, scalar

DIM = 128


def _write_lines(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            queries = np.round(rng.uniform(-1, 1, (k, DIM)), 2).tolist()
            acts = np.round(rng.uniform(-1, 1, (k, DIM)), 2).tolist()
            rewards = np.round(rng.uniform(0, 1, k), 2).tolist()
            for q, a, r in zip(queries, acts, rewards, strict=True):
                f.write(
                    f'{{"query_embedding": {q}, "steps": [{{"activations": {a}, "reward": {r}}}],'
                    ' "quality": 0.5}\n'
                )
    return path


# A child process runs the console script and reports its child's peak RSS.
_MEASURE = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "sona_store.cli.main", "--url", sys.argv[1],
                       "ingest", sys.argv[2]], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(done.stderr)
"""


def _peak_rss_kib(url: str, path: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, url, str(path)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=900,
    )
    code, peak = done.stdout.split()
    assert code == "0", done.stderr
    return int(peak)


@pytest.fixture
def second_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on db_url's backend."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.mark.slow
def test_ingest_peak_memory_does_not_grow_with_the_file(db_url, second_url, tmp_path):
    peaks = {}
    for n, url in ((20_000, second_url), (100_000, db_url)):
        SonaStore(url, SonaConfig(hidden_dim=DIM)).close()
        peaks[n] = _peak_rss_kib(url, _write_lines(tmp_path / f"{n}.jsonl", n))
        with inspector(url) as engine:  # all recorded, every whole group applied
            assert scalar(engine, "SELECT count(*) FROM trajectories") == n
            assert scalar(engine, "SELECT count(*) FROM micro_lora_signals") == n
    assert peaks[100_000] <= 1.2 * peaks[20_000], peaks
