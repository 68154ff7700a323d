"""Running the installed `sona-store` console script (not `python -m`), the
way a user does, so the entry point itself is under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SONA_STORE = Path(sys.executable).with_name("sona-store")
TIMEOUT_S = 120


def console_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SONA_STORE_URL"}
    env.update(extra)
    return env


def sona(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, **kwargs: Any):
    """Run the console script; the CompletedProcess (text)."""
    return subprocess.run(
        [str(SONA_STORE), *map(str, args)],
        cwd=cwd,
        env=env or console_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr
    assert err.startswith("sona-store: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
