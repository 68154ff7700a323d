"""Issue 15, point 8: files sona_store creates are its owner's only (0600;
folders it creates 0700), whatever the umask; see sona_store/files.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main

from .helpers import make_trajectories

DIM = 8


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The common umask 022, under which files are world-readable by default."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_store_and_its_wal_and_shm_are_0600(tmp_path, open_umask):
    db = tmp_path / "new.db"
    with SonaStore(f"sqlite:///{db}", SonaConfig(hidden_dim=DIM)) as store:
        store.record_trajectories(make_trajectories(3, DIM))
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}


def test_the_cli_creates_a_private_store_in_a_new_file(tmp_path, open_umask):
    db = tmp_path / "cli.db"
    assert main(["--url", f"sqlite:///{db}", "db", "upgrade"]) == 0
    assert mode(db) == 0o600


def test_a_file_the_user_made_keeps_its_mode(tmp_path, open_umask):
    db = tmp_path / "mine.db"
    db.touch(mode=0o640)
    os.chmod(db, 0o640)
    SonaStore(f"sqlite:///{db}", SonaConfig(hidden_dim=DIM)).close()
    assert mode(db) == 0o640


def test_exported_adapters_and_report_files_are_0600_in_0700_folders(db_url, tmp_path, open_umask):
    pytest.importorskip("safetensors")
    pytest.importorskip("matplotlib")
    with SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)) as store:
        store.record_trajectories(make_trajectories(12, DIM))
        store.run_cycle(force=True)
    export, report = tmp_path / "new" / "adapter", tmp_path / "report"
    assert main(["--url", db_url, "export-lora", str(export)]) == 0
    assert main(["--url", db_url, "report", "--out", str(report)]) == 0
    for folder in (export, report):
        assert mode(folder) == 0o700
        files = list(folder.iterdir())
        assert files and {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
