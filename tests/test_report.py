"""`sona-store report`: non-empty PNG charts and an index.html that shows them,
for a store with history (cycles, a skipped one, a rollback, an import) and
for an empty one (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main
from sona_store.services.lora_io import MissingExtraError
from sona_store.services.report import CHARTS, load_report_data

from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3, base_lora_rank=2, base_lora_lr=0.05)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_report(files: list[Path], out: Path) -> str:
    """Every chart a real PNG over 1 kB, the page last and showing each; its text."""
    names = [c.filename for c in CHARTS]
    assert [f.name for f in files] == [*names, "index.html"]
    assert all(f.parent == out for f in files)
    for png in files[:-1]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC), png
        assert len(data) > 1024, (png, len(data))
    page = files[-1].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == names
    for chart in CHARTS:
        assert chart.title in page
    return page


@pytest.fixture
def history_store(db_url: str, tmp_path: Path) -> SonaStore:
    store = SonaStore(db_url, CONFIG)
    for seed in range(4):
        store.record_trajectories(make_trajectories(12, DIM, seed=seed))
        store.run_cycle(force=True)
    store.run_cycle(force=True)  # nothing pending: skipped
    store.rollback(3, reason="bad patterns")
    store.export_lora(tmp_path / "initial", version=1)
    store.import_lora(tmp_path / "initial", "reset the adapter")
    # A task boundary (EWC++ needs 50+ samples to detect one): mark cycle 2's state.
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE ewc_states SET task_boundary = :t, ewc_lambda = 2200 "
                "WHERE id = (SELECT ewc_state_id FROM cycles WHERE id = 2)"
            ),
            {"t": True},
        )
    yield store
    store.close()


def test_report_of_a_store_with_history(history_store, tmp_path):
    out = tmp_path / "report"
    files = history_store.report(out)
    page = _check_report(files, out)
    # The table of last cycles, newest first, with statuses and the skip reason.
    rows = re.findall(r"<tr><td>(\d+)</td>", page)
    assert rows == ["5", "4", "3", "2", "1"]
    assert "rolled_back" in page and "skipped" in page and "no trajectories" in page
    assert "5 cycles (2 completed)" in page

    data = load_report_data(history_store.engine)
    assert [c["id"] for c in data.cycles] == [1, 2, 3, 4, 5]
    assert [c["task_boundary"] for c in data.cycles] == [False, True, False, False, False]
    assert [q[0] for q in data.quality] == [1, 2, 3, 4]  # the skipped cycle has no patterns
    assert all(0 <= q[2] <= 1 for q in data.quality)
    sources = [v[3] for v in data.versions]
    assert sources == ["initial", "cycle", "cycle", "cycle", "cycle", "import"]
    assert data.versions[0][2] == 0.0 and data.versions[1][2] > 0
    assert data.rolled_back_versions == {
        c["base_lora_version_id"] for c in data.cycles if c["id"] in (3, 4)
    }
    assert data.head_version == data.versions[-1][0]
    assert [e[1] for e in data.events] == ["rollback", "import_lora"]


def test_report_of_an_empty_store(db_url, tmp_path):
    with SonaStore(db_url, CONFIG) as store:
        files = store.report(tmp_path / "empty")
    page = _check_report(files, tmp_path / "empty")
    assert "No cycles yet." in page
    text = " ".join(page.split())
    assert "0 cycles (0 completed), 1 base LoRA version, 0 audit events" in text


def test_report_cli(history_store, tmp_path, capsys):
    out = tmp_path / "cli-report"
    capsys.readouterr()
    assert main(["--url", history_store.url, "report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 files" in printed and "index.html" in printed
    _check_report([out / c.filename for c in CHARTS] + [out / "index.html"], out)


def test_report_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    SonaStore(url, CONFIG).close()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with SonaStore(url) as store, pytest.raises(MissingExtraError, match=r"sona-store\[report\]"):
        store.report(tmp_path / "r")
    capsys.readouterr()
    assert main(["--url", url, "report", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'sona-store[report]'" in err


def test_time_ticks_seconds_apart_read_as_times_of_day():
    """A demo's cycles are seconds apart: ticks say 02:16:04, not a bare 04."""
    pytest.importorskip("matplotlib")
    import datetime as dt

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sona_store.services.report import _time_axis

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    start = dt.datetime(2026, 11, 28, 2, 16, 0, tzinfo=dt.timezone.utc)
    times = [start + dt.timedelta(seconds=s) for s in range(0, 40, 2)]
    ax.plot(times, range(len(times)))
    _time_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"02:1[67]:\d\d", label) for label in labels), labels


def test_the_summary_counts_in_words_that_agree(db_url, tmp_path):
    """One rollback is "1 audit event", not "1 rollbacks"."""
    pytest.importorskip("matplotlib")
    from sona_store.services.report import render_html

    with SonaStore(db_url, CONFIG) as store:
        for seed in range(2):
            store.record_trajectories(make_trajectories(12, DIM, seed=seed))
            store.run_cycle(force=True)
        store.rollback(2, reason="one")
        page = render_html(load_report_data(store.engine), CHARTS)
    text = " ".join(page.split())
    assert "2 cycles (1 completed)" in text
    assert "1 audit event (" in text
    assert "1 audit events" not in text and "1 rollbacks" not in text
