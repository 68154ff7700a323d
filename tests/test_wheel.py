"""The built wheel works on its own: installed (not editable) into a fresh
virtualenv, `sona-store db upgrade` run from an empty folder finds the
migrations inside the installed package and brings a new database to the head
revision.

pip may use the package registry (and its cache) for the build backend and the
dependencies. If an isolated build cannot get its backend, the wheel is built
with this interpreter's hatchling instead (`--no-build-isolation`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sona_store.db import schema

from .helpers import make_trajectories

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def clean_env() -> dict[str, str]:
    """This environment without anything that would let the venv see the checkout
    or another database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "SONA_STORE_URL", "VIRTUAL_ENV")
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    return env


def run(args: list[str | Path], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (
        f"{proc.args}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from this checkout installed."""
    base = tmp_path_factory.mktemp("wheel")
    venv_dir, dist = base / "venv", base / "dist"
    check(run([sys.executable, "-m", "venv", venv_dir], cwd=base, timeout=RUN_TIMEOUT_S))
    python = venv_dir / "bin" / "python"

    built = run(
        [python, "-m", "pip", "wheel", "--no-deps", "-w", dist, ROOT],
        cwd=base,
        timeout=PIP_TIMEOUT_S,
    )
    if built.returncode != 0:  # no build backend to be had: use ours
        check(
            run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-w", dist, ROOT],
                cwd=base,
                timeout=PIP_TIMEOUT_S,
            )
        )  # fmt: skip
    (wheel,) = dist.glob("sona_store-*.whl")
    check(run([python, "-m", "pip", "install", wheel], cwd=base, timeout=PIP_TIMEOUT_S))
    return venv_dir


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_wheel_ships_the_migrations(venv: Path):
    (wheel,) = (venv.parent / "dist").glob("sona_store-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sona_store/migrations/env.py" in names
    assert "sona_store/migrations/script.py.mako" in names
    shipped = {
        n.rsplit("/", 1)[1] for n in names if n.startswith("sona_store/migrations/versions/")
    }
    in_checkout = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert in_checkout <= shipped


def test_installed_package_is_the_wheel_not_the_checkout(venv: Path, empty_dir: Path):
    code = (
        "import json, sona_store; from sona_store.db.schema import migrations_dir; "
        "print(json.dumps([sona_store.__file__, str(migrations_dir())]))"
    )
    out = check(run([venv / "bin" / "python", "-c", code], cwd=empty_dir, timeout=RUN_TIMEOUT_S))
    package_file, migrations = (Path(p).resolve() for p in json.loads(out))
    assert package_file.is_relative_to(venv.resolve())
    assert migrations == package_file.parent / "migrations"
    assert not package_file.is_relative_to(ROOT)


def test_db_upgrade_from_an_empty_folder_reaches_head(venv: Path, empty_dir: Path):
    sona_store = venv / "bin" / "sona-store"
    out = check(
        run(
            [sona_store, "--url", "sqlite:///x.db", "db", "upgrade"],
            cwd=empty_dir,
            timeout=RUN_TIMEOUT_S,
        )
    )
    head = schema.head_revision()  # this checkout's head: the wheel was built from it
    assert head in out
    assert (empty_dir / "x.db").is_file()
    with sqlite3.connect(empty_dir / "x.db") as conn:
        versions = conn.execute(f"SELECT version_num FROM {schema.VERSION_TABLE}").fetchall()
    assert versions == [(head,)]
    out = check(
        run(
            [sona_store, "--url", "sqlite:///x.db", "db", "current"],
            cwd=empty_dir,
            timeout=RUN_TIMEOUT_S,
        )
    )
    assert head in out and "up to date" in out


def test_installed_cli_ingests_and_runs_a_cycle(venv: Path, empty_dir: Path):
    """Beyond the schema: the installed package records and learns."""
    sona_store = venv / "bin" / "sona-store"
    items = make_trajectories(12, 256, seed=4)  # the default dimensions
    (empty_dir / "t.jsonl").write_text("\n".join(json.dumps(t) for t in items) + "\n")
    url = "sqlite:///store.db"
    check(
        run([sona_store, "--url", url, "ingest", "t.jsonl"], cwd=empty_dir, timeout=RUN_TIMEOUT_S)
    )
    out = check(
        run([sona_store, "--url", url, "cycle", "--json"], cwd=empty_dir, timeout=RUN_TIMEOUT_S)
    )
    result = json.loads(out)
    assert result["status"] == "completed"
    assert result["trajectories_processed"] == 12
    stats = json.loads(
        check(
            run([sona_store, "--url", url, "stats", "--json"], cwd=empty_dir, timeout=RUN_TIMEOUT_S)
        )
    )
    assert stats["patterns_stored"] == result["patterns_extracted"] > 0


def test_installed_demo_runs(venv: Path, empty_dir: Path):
    """The README's first command, from the installed wheel (no test extras).
    The timeout only stops a hung demo: how long it takes on a loaded machine
    is not what this tests."""
    out = check(run([venv / "bin" / "sona-store", "demo"], cwd=empty_dir, timeout=600))
    assert out.count("bit for bit the same: True") == 4  # every tier, after the quarantine
    assert (empty_dir / "sona-demo.db").exists()


def test_wheel_metadata_for_a_new_user(venv: Path, empty_dir: Path):
    """Typed (py.typed), licensed (LICENSE, classifiers), psycopg only with the
    postgres extra, and one version: the metadata's, shown by --version."""
    (wheel,) = (venv.parent / "dist").glob("sona_store-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(meta_name).decode()
    assert "sona_store/py.typed" in names
    assert any(n.endswith("LICENSE") for n in names)
    assert "Classifier: License :: OSI Approved :: MIT License" in meta
    assert "Classifier: Typing :: Typed" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: psycopg")]
    assert requires and all("extra ==" in line for line in requires), requires
    version = next(
        line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Version: ")
    )
    out = check(
        run([venv / "bin" / "sona-store", "--version"], cwd=empty_dir, timeout=RUN_TIMEOUT_S)
    )
    assert out.strip() == f"sona-store {version}"
    installed = check(
        run(
            [venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"],
            cwd=empty_dir,
            timeout=RUN_TIMEOUT_S,
        )
    )
    assert "psycopg" not in installed.lower()  # the plain install is SQLite-only
