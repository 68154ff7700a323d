"""`sona-store quarantine`, `release`, `quarantines` and `audit` for them."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sona_store import SonaStore
from sona_store.cli.main import parse_ids

from .test_cli import assert_one_line_error, run, run_json
from .test_quarantine import CONFIG, bad, good


@pytest.fixture
def cli_store(db_url: str) -> tuple[str, list[int]]:
    """G1, cycle, bad batch, G2, cycle: the URL and the bad batch's ids."""
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(good(1))
        store.run_cycle(force=True)
        ids = store.record_trajectories(bad())
        store.record_trajectories(good(2))
        store.run_cycle(force=True)
    finally:
        store.close()
    return db_url, ids


def test_parse_ids():
    assert parse_ids("1-3,7, 9-9") == [1, 2, 3, 7, 9]
    for text in ("a", "3-1", "0-2", "1-2-3", ""):
        with pytest.raises(ValueError, match="--ids"):
            parse_ids(text)


def test_quarantine_release_and_audit(cli_store, capsys):
    url, ids = cli_store
    span = f"{ids[0]}-{ids[-1]}"
    code, out, err = run(
        capsys, "--url", url, "--actor", "ops", "quarantine", "--ids", span,
        "--reason", "broken client", "--yes",
    )  # fmt: skip
    assert code == 0, err
    assert f"{len(ids)} trajectories" in out
    assert "cycles rolled back: 2;" in out and "12 other trajectories pending again" in out
    assert "micro-LoRA: 2 versions replayed (1 written, 8 signals removed)" in out
    assert "base LoRA moved" in out and "sona-store release 1" in out

    listed = run_json(capsys, "--url", url, "quarantines", "--json")
    assert [(q["id"], q["trajectories"], q["released_at"]) for q in listed] == [(1, 8, None)]
    assert listed[0]["selection"] == {"ids": span}

    code, _, err = run(capsys, "--url", url, "quarantine", "--ids", span, "--reason", "again",
                       "--yes")  # fmt: skip
    assert_one_line_error(code, err, "already quarantined", "quarantine 1")

    code, out, err = run(capsys, "--url", url, "release", "1", "--reason", "false alarm", "--yes")
    assert code == 0, err
    assert "8 trajectories eligible again, 8 pending" in out

    events = run_json(capsys, "--url", url, "audit", "--json")
    assert [(e["action"], e["actor"], e["reason"]) for e in events] == [
        ("release", events[0]["actor"], "false alarm"),
        ("quarantine", "ops", "broken client"),
    ]
    code, out, _ = run(capsys, "--url", url, "audit")
    assert "quarantine" in out and "release" in out


def test_quarantine_by_route_and_time(cli_store, capsys):
    url, ids = cli_store
    result = run_json(
        capsys, "--url", url, "quarantine", "--route", "broken-client",
        "--from", "2000-01-01T00:00:00", "--to", "2999-01-01", "--reason", "route", "--yes",
        "--json",
    )  # fmt: skip
    assert result["trajectories"] == len(ids)
    assert result["cycles_rolled_back"] == [2]


def test_quarantine_errors_are_one_line(cli_store, capsys):
    url, _ = cli_store
    code, _, err = run(capsys, "--url", url, "quarantine", "--reason", "x", "--yes")
    assert_one_line_error(code, err, "name the trajectories")
    code, _, err = run(capsys, "--url", url, "quarantine", "--ids", "9000", "--reason", "x",
                       "--yes")  # fmt: skip
    assert_one_line_error(code, err, "no trajectory with id 9000")
    code, _, err = run(capsys, "--url", url, "quarantine", "--ids", "x-", "--reason", "x", "--yes")
    assert_one_line_error(code, err, "--ids")
    code, _, err = run(capsys, "--url", url, "quarantine", "--from", "yesterday", "--reason", "x",
                       "--yes")  # fmt: skip
    assert_one_line_error(code, err, "recorded_from", "ISO")
    code, _, err = run(capsys, "--url", url, "release", "77", "--yes")
    assert_one_line_error(code, err, "no quarantine with id 77")


def test_console_script_refuses_without_yes_off_a_terminal(cli_store, tmp_path):
    url, ids = cli_store
    script = shutil.which("sona-store")
    if script is None:
        pytest.skip("the sona-store console script is not installed")
    for args in (["quarantine", "--ids", str(ids[0]), "--reason", "x"], ["release", "1"]):
        proc = subprocess.run(
            [script, "--url", url, *args],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert_one_line_error(proc.returncode, proc.stderr, "--yes")
    proc = subprocess.run(
        [script, "--url", url, "quarantines", "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(proc.stdout) == []
