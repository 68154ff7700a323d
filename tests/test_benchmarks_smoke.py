"""`python -m benchmarks --quick` runs every section and writes every figure.
No timing is asserted: the machine is shared and figures are noisy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sona_store import SonaStore

REPO_ROOT = Path(__file__).resolve().parent.parent

FIGURES = [
    "cycle_s",
    "cycle_busy_limited_s",
    "cycle_busy_unlimited_s",
    "cycle_busy_speedup_x",
    "scaling_small_s",
    "scaling_small_rss_mb",
    "scaling_mid_s",
    "scaling_mid_rss_mb",
    "scaling_large_s",
    "scaling_large_rss_mb",
    "scaling_growth_x",
    "ingest_batched_per_s",
    "ingest_batched_numpy_per_s",
    "ingest_batched_100_per_s",
    "ingest_batched_100_numpy_per_s",
    "ingest_sustained_100_per_s",
    "ingest_single_per_s",
    "ingest_floor_per_s",
    "ingest_floor_no_checkpoint_per_s",
    "ingest_batched_of_floor",
    "ingest_batched_numpy_of_floor",
    "writers_1_per_s",
    "writers_4_per_s",
    "writers_scaling_x",
    *(
        f"record_{threads}t_{mode}_{what}"
        for threads in (1, 8)
        for mode in ("wait", "nowait")
        for what in ("per_s", "p99_us", "wal_bytes")
    ),
    "micro_lora_us",
    "find_patterns_us",
    "base_lora_us",
    "recommend_routes_us",
    "rollback_short_ms",
    "restore_short_ms",
    "rollback_long_ms",
    "restore_long_ms",
    "rollback_growth_x",
    "quarantine_ms",
    "storage_whole_bytes",
    "storage_gc_freed_bytes",
    "storage_metadata_bytes",
    "storage_month_today_gb",
    "storage_month_policy_gb",
    "storage_day_today_gb",
    "storage_day_policy_gb",
    "storage_policy_bytes_per_trajectory",
]
# Figures measured only once the store has the method (else "n/a (not implemented)").
NEEDS_METHOD = {
    "micro_lora_us": "apply_micro_lora",
    "find_patterns_us": "find_patterns",
    "base_lora_us": "apply_base_lora",
    "recommend_routes_us": "recommend_routes",
    "rollback_short_ms": "rollback",
    "restore_short_ms": "restore",
    "rollback_long_ms": "rollback",
    "restore_long_ms": "restore",
    "rollback_growth_x": "rollback",
    "quarantine_ms": "quarantine",
}


@pytest.mark.slow
def test_quick_benchmarks_write_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["errors"] == []
    assert results["quick"] is True
    ours = {f["name"]: f for f in results["figures"] if f["backend"] == "sqlite"}
    missing = [name for name in FIGURES if name not in ours]
    assert not missing, f"figures missing from the results: {missing}"
    for name in FIGURES:
        figure = ours[name]
        method = NEEDS_METHOD.get(name)
        if method is not None and not hasattr(SonaStore, method):
            assert figure["status"] == "n/a (not implemented)", figure
            continue
        assert figure["status"] == "ok", figure
        assert isinstance(figure["ours"], (int, float)) and figure["ours"] > 0, figure
    forgetting = {f["name"]: f for f in results["figures"] if f["backend"] == "numpy"}
    assert set(forgetting) == {
        "forgetting_lost_a_on_over_off",
        "forgetting_drift_per_b_on",
        "forgetting_drift_per_b_off",
        "forgetting_retained_a_off_default",
    }
    assert "figure" in done.stdout and "results:" in done.stdout


@pytest.mark.slow
def test_quick_routing_benchmark_reports_every_figure(tmp_path: Path) -> None:
    """`python -m benchmarks.routing --quick`: every policy at both points,
    every target with a figure per seed, and the regret chart."""
    output, chart = tmp_path / "routing.json", tmp_path / "regret.png"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.routing", "--quick", "--output", str(output),
         "--chart", str(chart)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    rows = results["summary"]["rows"]
    policies = {"sona_store", "kNN over logs", "best single route", "random route"}
    for when in ("after warm-up", "after the shift"):
        assert {r["policy"] for r in rows if r["when"] == when} == policies
    for r in rows:
        assert 0 < r["share_mean"] <= 1 and r["decision_us_median"] > 0
    for target in results["summary"]["targets"]:
        assert len(target["per_seed"]) == len(results["plan"]["seeds"])
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert "after warm-up" in done.stdout


def test_paired_ratios_follow_a_drifting_machine():
    """A reference measured right before each of our repetitions: the ratio is
    the median of the per-repetition ratios, not a ratio of medians taken at
    different speeds of the machine."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.report import Figure

    # The machine halves its speed after the second repetition; we are 1.2x.
    ours = [120.0, 120.0, 60.0, 60.0, 60.0]
    reference = [100.0, 100.0, 50.0, 50.0, 50.0]
    rate = Figure("r", "sqlite", "r", "/s", ours=60.0, reps=ours, higher_is_better=True)
    rate.compare_paired(reference)
    assert rate.ratio == 1.2 and rate.reference == 50.0
    assert rate.details["paired_ratios"] == [1.2] * 5
    # Times: lower is better, ratio = reference / ours.
    times = Figure("t", "sqlite", "t", "s", ours=2.0, reps=[1.0, 2.0, 4.0])
    times.compare_paired([3.0, 4.0, 4.0])
    assert times.ratio == 2.0  # per repetition 3.0, 2.0, 1.0
