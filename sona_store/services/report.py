"""`sona-store report`: PNG charts of a store's learning history and an
`index.html` that shows them, for a person checking that learning behaves
(cycles take work, quality holds up, EWC++ engages, rollbacks are visible).

Data comes from plain selects on the store's tables, so the report reads any
store, live or a copy, without going through the learning code. matplotlib is
an optional extra and is imported only here; figures are drawn through
`matplotlib.figure.Figure` with the Agg canvas, never pyplot, so a report
neither needs a display nor changes the backend of a program that imports us.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sona_store.db import state
from sona_store.db.engine import mask_url, transaction
from sona_store.db.models import AuditEvent, Cycle, LoraVersion, Pattern, VectorBlob
from sona_store.db.models import EwcState as EwcStateRow
from sona_store.db.types import FLOAT32, utcnow
from sona_store.enums import RAN_STATUSES, CycleStatus, LoraTier
from sona_store.errors import MissingExtraError
from sona_store.files import private_dir, write_private

TABLE_ROWS = 20
STATUS_COLOURS = {
    CycleStatus.COMPLETED: "#1f77b4",
    CycleStatus.ROLLED_BACK: "#d62728",
    CycleStatus.SKIPPED: "#7f7f7f",
    CycleStatus.FAILED: "#ff7f0e",
}
EVENT_STYLES = {  # audit action -> (colour, line style, legend label)
    "rollback": ("#d62728", "--", "rollback"),
    "restore": ("#2ca02c", "--", "restore"),
    "quarantine": ("#e377c2", "--", "quarantine"),
    "release": ("#17becf", "--", "release"),
    "import_lora": ("#9467bd", ":", "LoRA import"),
    "use_lora_version": ("#8c564b", ":", "LoRA version change"),
}


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.style
    except ImportError as exc:  # an optional extra
        raise MissingExtraError(
            "the report needs matplotlib: pip install 'sona-store[report]'"
        ) from exc
    return matplotlib


# -- data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportData:
    cycles: list[dict[str, Any]]  # oldest first
    quality: list[tuple[int, dt.datetime, float, str]]  # cycle id, finished, mean quality, status
    versions: list[tuple[int, dt.datetime, float, str]]  # version id, created, |up|_F, source
    rolled_back_versions: set[int]
    head_version: int | None
    events: list[tuple[dt.datetime, str, str | None]]  # at, action, reason
    store_url: str


def load_report_data(engine: Engine) -> ReportData:
    """Everything the charts need, in one read transaction."""
    with transaction(engine) as session:
        rows = session.execute(
            sa.select(Cycle, EwcStateRow.ewc_lambda, EwcStateRow.task_boundary)
            .outerjoin(EwcStateRow, EwcStateRow.id == Cycle.ewc_state_id)
            .order_by(Cycle.id)
        ).all()
        cycle_list = [
            {
                "id": c.id,
                "started_at": c.started_at,
                "finished_at": c.finished_at,
                "trigger": c.trigger,
                "status": c.status,
                "trajectories": c.trajectories_processed,
                "patterns": c.patterns_extracted,
                "elapsed": c.elapsed_seconds,
                "ewc_updated": c.ewc_updated,
                "ewc_lambda": ewc_lambda,
                "task_boundary": bool(c.ewc_updated and boundary),
                "base_lora_version_id": c.base_lora_version_id,
                "reason": c.reason,
            }
            for c, ewc_lambda, boundary in rows
        ]
        quality = [
            (r.id, r.finished_at or r.started_at, float(r.mean_quality), r.status)
            for r in session.execute(
                sa.select(
                    Cycle.id,
                    Cycle.started_at,
                    Cycle.finished_at,
                    Cycle.status,
                    sa.func.avg(Pattern.avg_quality).label("mean_quality"),
                )
                .join(Pattern, Pattern.cycle_id == Cycle.id)
                .where(Cycle.status.in_(RAN_STATUSES))
                .group_by(Cycle.id, Cycle.started_at, Cycle.finished_at, Cycle.status)
                .order_by(Cycle.id)
            )
        ]
        # One blob at a time: a long history of 12 x 8 x 256 adapters is large.
        versions = [
            (r.id, r.created_at, _norm(r.data), r.source)
            for r in session.execute(
                sa.select(
                    LoraVersion.id, LoraVersion.created_at, LoraVersion.source, VectorBlob.data
                )
                .join(VectorBlob, VectorBlob.id == LoraVersion.up_blob_id)
                .where(LoraVersion.tier == LoraTier.BASE)
                .order_by(LoraVersion.id)
                .execution_options(yield_per=64)
            )
        ]
        rolled_back: set[int] = {
            cast(int, c["base_lora_version_id"])
            for c in cycle_list
            if c["status"] == CycleStatus.ROLLED_BACK
            and c["ewc_updated"]
            and c["base_lora_version_id"] is not None
        }
        events = [
            (e.at, e.action, e.reason)
            for e in session.execute(
                sa.select(
                    AuditEvent.at, AuditEvent.action, AuditEvent.reason, AuditEvent.details
                ).order_by(AuditEvent.id)
            )
            if e.action in ("rollback", "restore", "quarantine", "release")
            or (isinstance(e.details, dict) and e.details.get("tier") == LoraTier.BASE)
        ]
        try:
            head_version = state.get_head(session).base_lora_version_id
        except LookupError:
            head_version = None
    return ReportData(
        cycle_list, quality, versions, rolled_back, head_version, events, mask_url(engine.url)
    )


def _norm(data: bytes) -> float:
    return float(np.linalg.norm(np.frombuffer(bytes(data), dtype=FLOAT32).astype(np.float64)))


# -- charts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Chart:
    filename: str
    title: str
    explanation: str


CHARTS = (
    Chart(
        "trajectories_patterns.png",
        "Trajectories and patterns per cycle",
        "Trajectories each cycle consumed (top) and patterns it extracted (bottom); "
        "colour is the cycle's status.",
    ),
    Chart(
        "pattern_quality.png",
        "Average pattern quality over time",
        "For each cycle that extracted patterns, the mean avg_quality of its patterns; "
        "hollow markers are rolled-back cycles.",
    ),
    Chart(
        "ewc_lambda.png",
        "EWC++ lambda and task boundaries",
        "The EWC++ lambda each cycle left current; dashed lines mark cycles where EWC++ "
        "detected a new task (lambda grows with each remembered task).",
    ),
    Chart(
        "lora_norm.png",
        "Base LoRA weight norm per version",
        "Frobenius norm of every base-LoRA version's learned 'up' weights; red crosses are "
        "versions of rolled-back cycles, the star is the current version, vertical lines "
        "are rollbacks, restores, quarantines, releases and LoRA imports or version changes.",
    ),
    Chart(
        "cycle_durations.png",
        "Cycle durations",
        "Wall-clock seconds each cycle took, at its start time; colour is the status.",
    ),
)


def _new_figure(rows: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.8 if rows == 1 else 6.4), dpi=100, facecolor="white")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.set_facecolor("white")
        ax.grid(True, color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


# Tick labels by the locator's resolution: years, months, days, hours, minutes, seconds.
TICK_FORMATS = ["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S"]
TICK_ZERO_FORMATS = ["", "%Y", "%b", "%b %d", "%H:%M", "%H:%M:%S"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 rollback`, `2 rollbacks`."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def _time_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=dt.timezone.utc)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    # ConciseDateFormatter's ticks a few seconds apart read "15", "30": bare
    # numbers that look like seconds of something. A time of day says it.
    formatter = mdates.ConciseDateFormatter(  # type: ignore[no-untyped-call]
        locator, tz=dt.timezone.utc, formats=TICK_FORMATS, zero_formats=TICK_ZERO_FORMATS
    )
    ax.xaxis.set_major_formatter(formatter)
    ax.set_xlabel("time (UTC)")


def _no_data(ax: Any, text: str = "no data yet") -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="#555555",
        fontsize=14,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _status_legend(ax: Any, statuses: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    shown = [s for s in STATUS_COLOURS if s in set(statuses)]
    if shown:
        handles = [Patch(color=STATUS_COLOURS[s], label=s.replace("_", " ")) for s in shown]
        ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=True)


def _chart_per_cycle(data: ReportData, chart: Chart) -> Any:
    fig, (top, bottom) = _new_figure(rows=2)
    top.set_title(chart.title)
    top.set_ylabel("trajectories consumed")
    bottom.set_ylabel("patterns extracted")
    bottom.set_xlabel("cycle id")
    if not data.cycles:
        _no_data(top)
        _no_data(bottom)
        return fig
    from matplotlib.ticker import MaxNLocator

    ids = [c["id"] for c in data.cycles]
    colours = [STATUS_COLOURS.get(c["status"], "#333333") for c in data.cycles]
    width = 0.8 if len(ids) < 2 else 0.8 * min(np.diff(ids))
    top.bar(ids, [c["trajectories"] for c in data.cycles], color=colours, width=width)
    bottom.bar(ids, [c["patterns"] for c in data.cycles], color=colours, width=width)
    for ax in (top, bottom):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1] * 1.3))  # headroom for the legend
    _status_legend(top, [c["status"] for c in data.cycles])
    return fig


def _chart_quality(data: ReportData, chart: Chart) -> Any:
    fig, (ax,) = _new_figure()
    ax.set_title(chart.title)
    ax.set_ylabel("mean pattern quality (0-1)")
    if not data.quality:
        ax.set_xlabel("time (UTC)")
        _no_data(ax)
        return fig
    current = [(t, q) for _, t, q, status in data.quality if status == CycleStatus.COMPLETED]
    cut = [(t, q) for _, t, q, status in data.quality if status != CycleStatus.COMPLETED]
    if current:
        ax.plot(*zip(*current, strict=True), "o-", color="#1f77b4", label="completed cycle")
    if cut:
        ax.plot(
            *zip(*cut, strict=True), "o", mfc="white", color="#d62728", label="rolled-back cycle"
        )
    ax.set_ylim(0, 1.05)
    _time_axis(ax)
    ax.legend(loc="best", fontsize=8)
    return fig


def _chart_ewc(data: ReportData, chart: Chart) -> Any:
    fig, (ax,) = _new_figure()
    ax.set_title(chart.title)
    ax.set_ylabel("EWC++ lambda (penalty strength)")
    points = [
        (c["started_at"], c["ewc_lambda"]) for c in data.cycles if c["ewc_lambda"] is not None
    ]
    if not points:
        ax.set_xlabel("time (UTC)")
        _no_data(ax)
        return fig
    ax.plot(
        *zip(*points, strict=True),
        "o-",
        drawstyle="steps-post",
        color="#1f77b4",
        label="lambda after the cycle",
    )
    boundaries = [c["started_at"] for c in data.cycles if c["task_boundary"]]
    for i, moment in enumerate(boundaries):
        ax.axvline(
            moment,
            color="#d62728",
            linestyle="--",
            linewidth=1,
            label="task boundary" if i == 0 else None,
        )
    _time_axis(ax)
    ax.legend(loc="best", fontsize=8)
    return fig


def _chart_lora_norm(data: ReportData, chart: Chart) -> Any:
    fig, (ax,) = _new_figure()
    ax.set_title(chart.title)
    ax.set_ylabel("Frobenius norm of 'up' (all layers)")
    if not data.versions:
        ax.set_xlabel("time (UTC)")
        _no_data(ax)
        return fig
    times = [v[1] for v in data.versions]
    norms = [v[2] for v in data.versions]
    ax.plot(times, norms, ".-", color="#1f77b4", linewidth=1, label="base LoRA version")
    cut = [(v[1], v[2]) for v in data.versions if v[0] in data.rolled_back_versions]
    if cut:
        ax.plot(
            *zip(*cut, strict=True),
            "x",
            color="#d62728",
            markersize=9,
            mew=2,
            label="version of a rolled-back cycle",
        )
    head = [(v[1], v[2]) for v in data.versions if v[0] == data.head_version]
    if head:
        ax.plot(*head[0], "*", color="#2ca02c", markersize=15, label="current version")
    labelled: set[str] = set()
    for moment, action, _reason in data.events:
        colour, style, label = EVENT_STYLES.get(action, ("#555555", ":", action))
        ax.axvline(
            moment,
            color=colour,
            linestyle=style,
            linewidth=1.2,
            label=None if label in labelled else label,
        )
        labelled.add(label)
    _time_axis(ax)
    ax.legend(loc="best", fontsize=8)
    return fig


def _chart_durations(data: ReportData, chart: Chart) -> Any:
    fig, (ax,) = _new_figure()
    ax.set_title(chart.title)
    ax.set_ylabel("duration (seconds)")
    if not data.cycles:
        ax.set_xlabel("time (UTC)")
        _no_data(ax)
        return fig
    for status, colour in STATUS_COLOURS.items():
        points = [(c["started_at"], c["elapsed"]) for c in data.cycles if c["status"] == status]
        if points:
            ax.plot(*zip(*points, strict=True), "o", color=colour, label=status.replace("_", " "))
    ax.set_ylim(bottom=0)
    _time_axis(ax)
    ax.legend(loc="best", fontsize=8)
    return fig


_DRAW = {
    "trajectories_patterns.png": _chart_per_cycle,
    "pattern_quality.png": _chart_quality,
    "ewc_lambda.png": _chart_ewc,
    "lora_norm.png": _chart_lora_norm,
    "cycle_durations.png": _chart_durations,
}


# -- the page ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def render_html(data: ReportData, charts: Sequence[Chart]) -> str:
    """The index page: each chart with one line saying what it shows, then the
    last cycles as a table."""
    completed = sum(1 for c in data.cycles if c["status"] == CycleStatus.COMPLETED)
    sections = "\n".join(
        f"<section>\n<h2>{html.escape(c.title)}</h2>\n<p>{html.escape(c.explanation)}</p>\n"
        f'<img src="{html.escape(c.filename)}" alt="{html.escape(c.title)}" width="900">\n'
        "</section>"
        for c in charts
    )
    columns = {
        "id": "cycle",
        "started_at": "started (UTC)",
        "trigger": "trigger",
        "status": "status",
        "trajectories": "trajectories",
        "patterns": "patterns",
        "elapsed": "duration (s)",
        "reason": "reason",
    }
    headers = "".join(f"<th>{label}</th>" for label in columns.values())
    recent = list(reversed(data.cycles[-TABLE_ROWS:]))
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(c[k])}</td>" for k in columns) + "</tr>" for c in recent
    )
    table = (
        f"<table>\n<thead><tr>{headers}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
        if recent
        else "<p>No cycles yet.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sona-store report</title>
<style>
body {{ font-family: sans-serif; background: #fff; color: #222; max-width: 960px;
       margin: 2em auto; padding: 0 1em; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f4f4f4; }}
</style>
</head>
<body>
<h1>sona-store report</h1>
<p>Store {html.escape(data.store_url)}, generated {_cell(utcnow())} UTC:
{plural(len(data.cycles), "cycle")} ({completed} completed),
{plural(len(data.versions), "base LoRA version")},
{plural(len(data.events), "audit event")} (rollbacks, restores, quarantines, releases,
base-LoRA changes).</p>
{sections}
<section>
<h2>Last cycles</h2>
{table}
</section>
</body>
</html>
"""


def _save_png(fig: Any, path: str) -> None:
    fig.savefig(path, format="png", facecolor="white")


def write_report(engine: Engine, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the charts and `index.html` into `out_dir`; returns the files
    written (the PNGs, then the page)."""
    mpl = _matplotlib()
    data = load_report_data(engine)
    out = private_dir(out_dir)
    written: list[Path] = []
    # The default style: a user's matplotlibrc (a dark theme, say) must not
    # make the charts unreadable on the white page.
    with mpl.style.context("default"):
        for chart in CHARTS:
            fig = _DRAW[chart.filename](data, chart)
            fig.tight_layout()
            path = out / chart.filename
            write_private(path, partial(_save_png, fig))
            written.append(path)
    page = out / "index.html"
    text = render_html(data, CHARTS)
    write_private(page, lambda p: Path(p).write_text(text, encoding="utf-8"))
    written.append(page)
    return written


__all__ = ["CHARTS", "ReportData", "load_report_data", "render_html", "write_report"]
