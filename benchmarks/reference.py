"""The reference engine (npm @ruvector/sona, through seed_bench.js) on the same
JSONL, so ratios come from one run on one machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.timing import median

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_BENCH = REPO_ROOT.parent / "shared" / "reference" / "seed_bench.js"
RECORD_ONLY = REPO_ROOT / "benchmarks" / "reference_record.js"  # its recording loop alone
PACKAGE = "@ruvector/sona"
KEYS = ("record_per_s", "cycle_s", "micro_lora_us", "find_patterns_us", "rss_mb")


@dataclass
class ReferenceResult:
    available: bool
    message: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [run[key] for run in self.runs if isinstance(run.get(key), (int, float))]
        return median(values) if values else None

    def summary(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "message": self.message,
            "script": str(SEED_BENCH),
            "median": {key: self.median(key) for key in KEYS},
            "runs": self.runs,
        }


def _environment(node_modules: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if node_modules:
        env["NODE_PATH"] = node_modules
    return env


def check(node_modules: str | None) -> ReferenceResult:
    """Whether node, seed_bench.js and the package are all there (why not, if not)."""
    node = shutil.which("node")
    if node is None:
        return ReferenceResult(False, "reference skipped: `node` is not on PATH")
    if not SEED_BENCH.is_file():
        return ReferenceResult(False, f"reference skipped: {SEED_BENCH} not found")
    if not node_modules and not os.environ.get("NODE_PATH"):
        return ReferenceResult(
            False, "reference skipped: give --seed-engine PATH_TO_NODE_MODULES (or NODE_PATH)"
        )
    probe = subprocess.run(
        [node, "-e", f"require.resolve('{PACKAGE}')"],
        env=_environment(node_modules),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        where = node_modules or os.environ.get("NODE_PATH")
        return ReferenceResult(
            False,
            f"reference skipped: {PACKAGE} not found in {where} (npm install {PACKAGE}@0.1.8)",
        )
    return ReferenceResult(True, f"{PACKAGE} via {SEED_BENCH.name}")


def run(jsonl: Path, clusters: int, node_modules: str | None, reps: int) -> ReferenceResult:
    """Run seed_bench.js `reps` times; each run prints one JSON line."""
    result = check(node_modules)
    if not result.available:
        return result
    for _ in range(reps):
        done = _node(SEED_BENCH, jsonl, clusters, node_modules, timeout=1800)
        if done.returncode != 0:
            result.available = False
            result.message = f"reference failed: {done.stderr.strip()[-500:]}"
            return result
        result.runs.append(_last_json(done))
    return result


def record_rate(jsonl: Path, clusters: int, node_modules: str | None) -> float:
    """The reference's recording rate on the JSONL, from seed_bench.js's
    recording loop alone (reference_record.js): quick enough to run between
    our own repetitions."""
    done = _node(RECORD_ONLY, jsonl, clusters, node_modules, timeout=600)
    done.check_returncode()
    return float(_last_json(done)["record_per_s"])


def _node(
    script: Path, jsonl: Path, clusters: int, node_modules: str | None, *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a reference script on the JSONL (it prints one JSON line)."""
    return subprocess.run(
        ["node", str(script), str(jsonl), str(clusters)],
        env=_environment(node_modules),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(done.stdout.strip().splitlines()[-1])
