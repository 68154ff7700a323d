"""`sona-store` on a small store: the schema commands, ingest, cycle, history,
patterns, stats, and the error path (one line on stderr, exit code 1).

The CLI has no option for dimensions: the store is made with the Python API
(hidden_dim=8) and the CLI opens it with the configuration stored in it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main
from sona_store.db import schema
from sona_store.db.engine import create_store_engine

from .helpers import make_trajectories

DIM = 8
ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("sona-store: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def write_jsonl(path: Path, items: list[dict[str, Any]], *, blank_after: int | None = None) -> Path:
    lines = [json.dumps(item) for item in items]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def counts(url: str) -> dict[str, int]:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("trajectories", "trajectory_steps", "cycles", "patterns")
            }
    finally:
        engine.dispose()


@pytest.fixture
def small_store(db_url: str) -> str:
    """A store with non-default dimensions, made with the Python API; its URL."""
    SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)).close()
    return db_url


# -- db ----------------------------------------------------------------------------


def test_db_upgrade_and_current(db_url, capsys):
    head = schema.head_revision()
    code, out, _ = run(capsys, "--url", db_url, "db", "current")
    assert code == 0
    assert "up to date" not in out and head in out  # empty: names the revision it needs

    code, out, err = run(capsys, "--url", db_url, "db", "upgrade")
    assert code == 0, err
    assert head in out
    engine = create_store_engine(db_url)
    try:
        assert schema.database_revision(engine) == head
        assert {"trajectories", "cycles", "store_settings"} <= set(
            sa.inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()

    code, out, _ = run(capsys, "--url", db_url, "db", "current")
    assert code == 0
    assert head in out and "up to date" in out

    code, out, _ = run(capsys, "--url", db_url, "db", "upgrade")  # again: nothing to do
    assert code == 0 and head in out


def test_db_downgrade_to_base_and_back(db_url, capsys):
    assert run(capsys, "--url", db_url, "db", "upgrade")[0] == 0
    code, _, err = run(capsys, "--url", db_url, "db", "downgrade", "base", "--yes")
    assert code == 0, err
    engine = create_store_engine(db_url)
    try:
        assert schema.database_revision(engine) is None
        assert "trajectories" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert run(capsys, "--url", db_url, "db", "upgrade")[0] == 0
    code, out, _ = run(capsys, "--url", db_url, "db", "current")
    assert "up to date" in out


def test_db_upgrade_then_a_store_opens_it(db_url, capsys):
    """`db upgrade` makes the schema only; the first open adds the initial state."""
    assert run(capsys, "--url", db_url, "db", "upgrade")[0] == 0
    store = SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4), create=False)
    try:
        assert store.config.hidden_dim == DIM
    finally:
        store.close()


# -- the workflow ------------------------------------------------------------------


def test_ingest_cycle_history_patterns_stats(small_store, tmp_path, capsys):
    url = small_store
    first = write_jsonl(tmp_path / "a.jsonl", make_trajectories(12, DIM, seed=1), blank_after=4)
    second = write_jsonl(tmp_path / "b.jsonl", make_trajectories(5, DIM, seed=2, steps=2))

    # ingest reports what it recorded and what is now pending
    code, out, err = run(capsys, "--url", url, "ingest", str(first))
    assert code == 0, err
    assert [int(n) for n in re.findall(r"\d+", out)] == [12, 12]
    code, out, err = run(capsys, "--url", url, "ingest", str(second))
    assert code == 0, err
    assert [int(n) for n in re.findall(r"\d+", out)] == [5, 17]
    assert counts(url)["trajectories"] == 17
    assert counts(url)["trajectory_steps"] == 12 + 10

    result = run_json(capsys, "--url", url, "cycle", "--force", "--json")
    assert result["status"] == "completed"
    assert result["trigger"] == "forced"
    assert result["trajectories_processed"] == 17
    assert 1 <= result["patterns_extracted"] <= 4
    assert result["config"]["hidden_dim"] == DIM  # the stored configuration was used

    # a second, empty cycle: skipped, and history shows both, newest first
    skipped = run_json(capsys, "--url", url, "cycle", "--force", "--json")
    assert skipped["status"] == "skipped"
    history = run_json(capsys, "--url", url, "history", "--json")
    assert [h["cycle_id"] for h in history] == [skipped["cycle_id"], result["cycle_id"]]
    assert [h["status"] for h in history] == ["skipped", "completed"]
    assert run_json(capsys, "--url", url, "history", "--limit", "1", "--json") == history[:1]

    store = SonaStore(url)
    try:
        api_patterns = store.patterns()
        api_stats = store.stats()
        api_history = store.history()
    finally:
        store.close()
    assert [h["cycle_id"] for h in history] == [r.cycle_id for r in api_history]

    patterns = run_json(capsys, "--url", url, "patterns", "--json")
    assert len(patterns) == result["patterns_extracted"]
    assert {p["cycle_id"] for p in patterns} == {result["cycle_id"]}
    assert sum(p["cluster_size"] for p in patterns) == 17
    assert [p["id"] for p in patterns] == [p.id for p in api_patterns]
    for shown, stored in zip(patterns, api_patterns, strict=True):
        assert len(shown["centroid"]) == DIM
        np.testing.assert_array_equal(np.asarray(shown["centroid"], np.float32), stored.centroid)
    by_cycle = run_json(
        capsys, "--url", url, "patterns", "--cycle", str(result["cycle_id"]), "--json"
    )
    assert by_cycle == patterns

    stats = run_json(capsys, "--url", url, "stats", "--json")
    assert stats == json.loads(json.dumps(api_stats, default=str))
    assert stats["trajectories_recorded"] == 17
    assert stats["trajectories_buffered"] == 0
    assert stats["cycles"] == 2
    assert stats["patterns_stored"] == len(patterns)
    assert stats["head_cycle_id"] == result["cycle_id"]


def test_cycle_without_force_respects_the_minimum(small_store, tmp_path, capsys):
    url = small_store
    path = write_jsonl(tmp_path / "few.jsonl", make_trajectories(3, DIM))
    assert run(capsys, "--url", url, "ingest", str(path))[0] == 0
    result = run_json(capsys, "--url", url, "cycle", "--json")
    assert result["status"] == "skipped"
    assert result["trajectories_processed"] == 0
    assert run_json(capsys, "--url", url, "stats", "--json")["trajectories_buffered"] == 3


def test_text_output_of_each_command(small_store, tmp_path, capsys):
    url = small_store
    path = write_jsonl(tmp_path / "t.jsonl", make_trajectories(10, DIM))
    assert run(capsys, "--url", url, "ingest", str(path))[0] == 0
    code, out, _ = run(capsys, "--url", url, "cycle", "--force")
    assert code == 0 and "completed" in out and "10" in out
    code, out, _ = run(capsys, "--url", url, "history")
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["cycle_id", "started_at"]
    assert len(out.splitlines()) == 2  # header and one cycle
    code, out, _ = run(capsys, "--url", url, "patterns")
    store = SonaStore(url)
    try:
        n_patterns = len(store.patterns())
    finally:
        store.close()
    assert code == 0 and len(out.splitlines()) == 1 + n_patterns
    code, out, _ = run(capsys, "--url", url, "stats")
    assert code == 0 and "trajectories_recorded: 10" in out.splitlines()


def test_ingest_from_stdin(small_store, capsys, monkeypatch):
    import io

    text = "\n".join(json.dumps(t) for t in make_trajectories(4, DIM)) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, err = run(capsys, "--url", small_store, "ingest", "-")
    assert code == 0, err
    assert counts(small_store)["trajectories"] == 4


# -- where the URL comes from ---------------------------------------------------------


def test_url_comes_from_sona_store_url(small_store, tmp_path, capsys, monkeypatch):
    with SonaStore(small_store) as store:
        store.record_trajectories(make_trajectories(3, DIM))
    monkeypatch.setenv("SONA_STORE_URL", small_store)
    monkeypatch.chdir(tmp_path)
    assert run_json(capsys, "stats", "--json")["trajectories_recorded"] == 3
    # --url wins over the environment
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert run(capsys, "--url", other, "db", "upgrade")[0] == 0
    assert run_json(capsys, "--url", other, "stats", "--json")["trajectories_recorded"] == 0
    assert not (tmp_path / "sona.db").exists()


def test_default_url_is_sona_db_in_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SONA_STORE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "db", "upgrade")
    assert code == 0, err
    assert (tmp_path / "sona.db").is_file()
    engine = create_store_engine(f"sqlite:///{tmp_path / 'sona.db'}")
    try:
        assert schema.database_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()


# -- errors ---------------------------------------------------------------------------


def test_unknown_cycle_is_one_line_and_exit_1(small_store, capsys):
    code, out, err = run(capsys, "--url", small_store, "patterns", "--cycle", "999")
    assert out == ""
    assert_one_line_error(code, err, "999")


BAD_LINES = [
    ("wrong-embedding-length", lambda t: t["query_embedding"].pop(), "query_embedding"),
    ("wrong-activation-length", lambda t: t["steps"][0]["activations"].append(1.0), "activations"),
    (
        "nan-in-query",
        lambda t: t["query_embedding"].__setitem__(0, float("nan")),
        "query_embedding",
    ),
    ("inf-reward", lambda t: t["steps"][0].__setitem__("reward", float("inf")), "reward"),
    ("quality-out-of-range", lambda t: t.__setitem__("quality", 2), "quality"),
    ("quality-string", lambda t: t.__setitem__("quality", "high"), "quality"),
    ("missing-quality", lambda t: t.pop("quality"), "quality"),
    ("missing-activations", lambda t: t["steps"][0].pop("activations"), "activations"),
    ("unknown-field", lambda t: t.__setitem__("extra", 1), "extra"),
    ("unknown-step-field", lambda t: t["steps"][0].__setitem__("extra", 1), "extra"),
    (
        "bool-in-activations",
        lambda t: t["steps"][0]["activations"].__setitem__(1, True),
        "activations",
    ),
    ("empty-embedding", lambda t: t.__setitem__("query_embedding", []), "query_embedding"),
]


@pytest.mark.parametrize(
    ("change", "field"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_ingest_bad_line_names_the_line_and_writes_nothing(
    small_store, tmp_path, capsys, change, field
):
    items = make_trajectories(6, DIM, seed=3)
    change(items[4])
    path = write_jsonl(tmp_path / "bad.jsonl", items, blank_after=2)  # item 4 is on line 6
    before = counts(small_store)
    code, out, err = run(capsys, "--url", small_store, "ingest", str(path))
    assert out == ""
    assert_one_line_error(code, err, "line 6", field)
    assert counts(small_store) == before


def test_ingest_malformed_json_names_the_line(small_store, tmp_path, capsys):
    good = [json.dumps(t) for t in make_trajectories(3, DIM)]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join([*good, '{"query_embedding": [1, 2', good[0]]) + "\n")
    before = counts(small_store)
    code, _, err = run(capsys, "--url", small_store, "ingest", str(path))
    assert_one_line_error(code, err, "line 4", "JSON")
    assert counts(small_store) == before


def test_db_commands_on_a_database_from_a_newer_release(db_url, capsys):
    assert run(capsys, "--url", db_url, "db", "upgrade")[0] == 0
    engine = create_store_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {schema.VERSION_TABLE} SET version_num = 'ffff_future'"))
    finally:
        engine.dispose()
    for command in (["db", "upgrade"], ["db", "downgrade", "base", "--yes"], ["stats"]):
        code, out, err = run(capsys, "--url", db_url, *command)
        assert out == ""
        assert_one_line_error(code, err, "ffff_future", "upgrade the sona-store package")


def test_db_upgrade_to_an_unknown_revision_is_one_line(db_url, capsys):
    code, _, err = run(capsys, "--url", db_url, "db", "upgrade", "nonsense")
    assert_one_line_error(code, err, "nonsense")
    assert run(capsys, "--url", db_url, "db", "upgrade")[0] == 0
    code, _, err = run(capsys, "--url", db_url, "db", "downgrade", "nonsense", "--yes")
    assert_one_line_error(code, err, "nonsense")


def test_ingest_of_a_missing_file_is_one_line(small_store, tmp_path, capsys):
    code, _, err = run(capsys, "--url", small_store, "ingest", str(tmp_path / "nope.jsonl"))
    assert_one_line_error(code, err, "nope.jsonl")


def test_ingest_with_the_wrong_dimension_for_the_store(small_store, tmp_path, capsys):
    """The CLI opens the store with its stored dimensions, not the defaults."""
    path = write_jsonl(tmp_path / "wide.jsonl", make_trajectories(2, 2 * DIM))
    code, _, err = run(capsys, "--url", small_store, "ingest", str(path))
    assert_one_line_error(code, err, "line 1", "query_embedding", str(DIM))
    assert counts(small_store)["trajectories"] == 0


def test_unreachable_database_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("SONA_STORE_URL", "postgresql://nobody:secret@127.0.0.1:1/none")
    code, _, err = run(capsys, "stats")
    assert_one_line_error(code, err, "unavailable")
    assert "secret" not in err


def test_unsupported_url_is_one_line(capsys):
    code, _, err = run(capsys, "--url", "mysql://user@host/db", "db", "current")
    assert_one_line_error(code, err, "mysql")


def test_unparsable_url_is_one_line(capsys):
    code, _, err = run(capsys, "--url", "not a url", "db", "current")
    assert_one_line_error(code, err)


def test_subprocess_error_is_one_line_without_traceback(small_store, tmp_path):
    """The real process: stderr is the one line, the exit status is 1."""
    items = make_trajectories(4, DIM)
    items[3]["quality"] = float("nan")
    path = write_jsonl(tmp_path / "bad.jsonl", items)
    before = counts(small_store)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sona_store.cli.main", "--url", small_store, "ingest", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "line 4", "quality")
    assert counts(small_store) == before
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sona_store.cli.main",
            "--url",
            small_store,
            "patterns",
            "--cycle",
            "999",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "999")
