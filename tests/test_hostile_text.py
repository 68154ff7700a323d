"""Issue 15, points 1-3 and 7: text the databases cannot store alike is bad
input; every unusual JSONL line is one error naming its line; stored text
cannot drive the operator's terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sona_store import SonaConfig, SonaStore
from sona_store.errors import ValidationError

from .helpers import make_trajectories
from .test_cli import DIM, assert_one_line_error, counts, run

BAD_TEXT = {"nul": "route\x00x", "surrogate": "route\ud800x"}
TEXT_FIELDS = ("model_route", "steps[0].layer_name", "context_ids")


def _with_text(field: str, text: str) -> dict:
    item = make_trajectories(1, DIM, seed=3)[0]
    if field == "model_route":
        item["model_route"] = text
    elif field == "context_ids":
        item["context_ids"] = ["ok", text]
    else:
        item["steps"][0]["layer_name"] = text
    return item


@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_text_either_database_cannot_store_is_refused_on_both(store, field, kind):
    """PostgreSQL refuses NUL in text and nobody can encode a lone surrogate:
    both are ValidationErrors naming the trajectory and field, nothing written."""
    good = make_trajectories(2, DIM)
    bad = _with_text(field, BAD_TEXT[kind])
    with pytest.raises(ValidationError) as info:
        store.record_trajectories([*good, bad])
    assert info.value.index == 2
    assert info.value.field == field
    assert store.pending_count() == 0


def test_ingest_of_nul_text_is_one_line_naming_the_line(db_url, tmp_path, capsys):
    SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)).close()
    items = make_trajectories(3, DIM)
    items[1]["model_route"] = "a\x00b"
    path = tmp_path / "nul.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    code, _, err = run(capsys, "--url", db_url, "ingest", str(path))
    assert_one_line_error(code, err, "line 2", "model_route", "NUL")
    assert "INSERT" not in err and "DataError" not in err
    assert counts(db_url)["trajectories"] == 0


def _lines_with(tmp_path: Path, bad: bytes) -> Path:
    good = [json.dumps(i).encode() for i in make_trajectories(3, DIM)]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([good[0], good[1], bad, good[2]]) + b"\n")
    return path


UNUSUAL_LINES = {
    "nested 50,000 deep": b"[" * 50_000 + b"]" * 50_000,
    "5,000-digit integer": b'{"quality": ' + b"9" * 5000 + b"}",
    "invalid UTF-8": b'{"model_route": "\xff\xfe", "quality": 0.5}',
    "malformed": b'{"quality": 0.5',
}


@pytest.mark.parametrize("name", sorted(UNUSUAL_LINES))
def test_ingest_of_an_unusual_line_is_one_line_naming_it(db_url, tmp_path, capsys, name):
    SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)).close()
    path = _lines_with(tmp_path, UNUSUAL_LINES[name])
    code, _, err = run(capsys, "--url", db_url, "ingest", str(path))
    assert_one_line_error(code, err, "line 3")
    assert counts(db_url)["trajectories"] == 0


def test_library_ingest_names_the_line_of_bytes_and_text(store):
    lines = [json.dumps(i) for i in make_trajectories(2, DIM)]
    with pytest.raises(ValidationError) as info:
        store.ingest([lines[0].encode(), b"\xc3\x28", lines[1].encode()])
    assert info.value.line == 2 and "UTF-8" in str(info.value)
    with pytest.raises(ValidationError) as info:
        store.ingest([lines[0], "[" * 50_000])
    assert info.value.line == 2
    assert store.pending_count() == 0


# -- terminal escapes (point 7) ----------------------------------------------------------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\r\x9b"


def test_human_output_escapes_control_characters_json_stays_exact(db_url, capsys):
    with SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)) as s:
        s.record_trajectories(make_trajectories(12, DIM))
        cycle_id = s.run_cycle(force=True).cycle_id
        s.rollback(cycle_id, reason=f"bad {ESCAPES} batch", actor=f"eve{ESCAPES}")
    code, out, err = run(capsys, "--url", db_url, "audit")
    assert code == 0, err
    for control in "\x1b\x07\r\x9b":
        assert control not in out, repr(control)
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x9b" in out
    assert out.count("\n") == 2  # the header and one row: no line broken by \r or \n
    code, out, _ = run(capsys, "--url", db_url, "audit", "--json")
    [event] = json.loads(out)
    assert event["reason"] == f"bad {ESCAPES} batch" and event["actor"] == f"eve{ESCAPES}"


def test_error_lines_escape_control_characters(db_url, tmp_path, capsys):
    SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)).close()
    missing = tmp_path / f"no{ESCAPES}such.jsonl"
    code, _, err = run(capsys, "--url", db_url, "ingest", str(missing))
    assert_one_line_error(code, err, "\\x1b]0;pwned")
    assert "\x1b" not in err and "\x07" not in err
