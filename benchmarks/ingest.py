"""Benchmark 3: recording trajectories, batched (JSON-shaped lists, and numpy
vectors) and one commit each, against floors: raw sqlite3 `executemany` of the
same bytes into the store's own three tables (trajectories, trajectory_vectors,
trajectory_steps), one transaction per batch; on PostgreSQL raw psycopg 3
`executemany` and raw binary COPY of the same rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from benchmarks.backends import Backend
from benchmarks.cycle import cycle_config
from benchmarks.report import Figure
from benchmarks.timing import median, progress, timed
from benchmarks.workload import Workload
from sona_store import SonaStore
from sona_store.db.types import FLOAT32, utcnow

BATCH = 1000
SMALL_BATCH = 100  # the instant-loop issue's "batches of 100 or more"
SUSTAINED_REPEATS = 5


def _record_batched(store: SonaStore, items: list[dict[str, Any]], size: int = BATCH) -> None:
    for start in range(0, len(items), size):
        store.record_trajectories(items[start : start + size])


def _record_single(store: SonaStore, items: list[dict[str, Any]]) -> None:
    if hasattr(store, "begin_trajectory") and hasattr(store, "end_trajectory"):
        for item in items:
            step = item["steps"][0]
            t = store.begin_trajectory(item["query_embedding"])
            t.add_step(step["activations"], step["attention_weights"], step["reward"])
            store.end_trajectory(t, item["quality"])
    else:
        for item in items:
            store.record_trajectories([item])


def _as_numpy(item: dict[str, Any]) -> dict[str, Any]:
    return {
        **item,
        "query_embedding": np.asarray(item["query_embedding"], dtype=np.float32),
        "steps": [
            {**step, "activations": np.asarray(step["activations"], dtype=np.float32)}
            for step in item["steps"]
        ],
    }


def _on_fresh_store(backend: Backend, n: int, body: Any) -> float:
    url = backend.new_url("ingest")
    store = SonaStore(url, cycle_config(n))
    try:
        return timed(lambda: body(store))
    finally:
        store.close()
        backend.drop(url)


def bench_ingest(
    backend: Backend,
    workload: Workload,
    single_n: int,
    reps: int,
    reference_rate: Callable[[], float] | None = None,
) -> list[Figure]:
    """Each repetition runs the reference's recording (`reference_rate`, when
    given), every batched variant and, on SQLite, the floor, back to back:
    the ratios are taken repetition by repetition (see Figure.compare_paired)."""
    n = len(workload)
    items = workload.items()  # the JSON shape, as parsed from the JSONL
    # The same trajectories as a Python caller holding numpy vectors sends them.
    arrays = [_as_numpy(item) for item in items]
    lists, vectors = "JSON-shaped dicts of lists", "dicts holding float32 numpy vectors"
    batched_runs = [  # figures[0] and [1] are the ones compared with the floor
        ("ingest_batched_per_s", f"ingest, batches of {BATCH}", lists, items, BATCH),
        (
            "ingest_batched_numpy_per_s",
            f"ingest, batches of {BATCH}, numpy vectors",
            vectors,
            arrays,
            BATCH,
        ),
        (
            "ingest_batched_100_per_s",
            f"ingest, batches of {SMALL_BATCH}",
            lists,
            items,
            SMALL_BATCH,
        ),
        (
            "ingest_batched_100_numpy_per_s",
            f"ingest, batches of {SMALL_BATCH}, numpy vectors",
            vectors,
            arrays,
            SMALL_BATCH,
        ),
    ]
    measured: dict[str, list[float]] = {name: [] for name, *_ in batched_runs}
    paired: list[float] = []  # the reference's rate, measured in each repetition
    floor: list[float] = []
    copy_floor: list[float] = []  # PostgreSQL: raw binary COPY
    for rep in range(reps):
        if reference_rate is not None:
            paired.append(reference_rate())
        for name, _label, _kind, data, size in batched_runs:
            body = lambda s, d=data, z=size: _record_batched(s, d, z)  # noqa: E731
            measured[name].append(n / _on_fresh_store(backend, n, body))
        if backend.name == "sqlite":
            floor.append(_floor_rate(backend, workload))
        elif backend.name == "postgresql":
            floor.append(_pg_floor_rate(backend, workload, copy=False))
            copy_floor.append(_pg_floor_rate(backend, workload, copy=True))
        rates = ", ".join(f"{values[-1]:,.0f}" for values in measured.values())
        extra = f"; reference {paired[-1]:,.0f}/s" if paired else ""
        progress(f"{backend.name} ingest rep {rep + 1}/{reps}: {rates}/s{extra}")
    figures = []
    for name, label, kind, _data, size in batched_runs:
        details = {"trajectories": n, "input": kind, "batch": size}
        figure = _rate_figure(backend, name, label, measured[name], details)
        figures.append(figure.compare_paired(paired) if paired else figure)

    def rates(what: str, count: int, body: Any) -> list[float]:
        out = []
        for rep in range(reps):
            out.append(count / _on_fresh_store(backend, n, body))
            progress(f"{backend.name} ingest {what} rep {rep + 1}/{reps}: {out[-1]:,.0f}/s")
        return out

    # Sustained: the workload five times over in one store, so SQLite's own
    # checkpoint (which bounds the log at 64 MiB under writing that never
    # pauses) runs inside the measurement; no target, for the record.
    sustained = SUSTAINED_REPEATS * n
    measured_sustained = rates(
        "sustained",
        sustained,
        lambda s: [_record_batched(s, arrays, SMALL_BATCH) for _ in range(SUSTAINED_REPEATS)],
    )
    details = {"trajectories": sustained, "input": vectors, "batch": SMALL_BATCH}
    label = f"ingest, batches of {SMALL_BATCH}, numpy, {sustained // 1000}k in a row"
    figures.append(
        _rate_figure(backend, "ingest_sustained_100_per_s", label, measured_sustained, details)
    )
    few = items[:single_n]
    single = rates("single", single_n, lambda s: _record_single(s, few))
    api = "begin/end_trajectory" if hasattr(SonaStore, "end_trajectory") else "record([one])"
    single_details = {"trajectories": single_n, "api": api}
    figures.append(
        _rate_figure(
            backend,
            "ingest_single_per_s",
            f"ingest, one commit each ({api})",
            single,
            single_details,
        )
    )
    if backend.name == "sqlite":
        figures.extend(_floor_figures(backend, workload, reps, floor, figures[0], figures[1]))
    elif backend.name == "postgresql":
        figures.extend(_pg_floor_figures(backend, floor, copy_floor, figures[0], figures[1]))
    return figures


def _pg_floor_figures(
    backend: Backend, floor: list[float], copy_floor: list[float], lists: Figure, numpy: Figure
) -> list[Figure]:
    """PostgreSQL's two floors (raw psycopg executemany, raw binary COPY),
    measured in the same repetitions as `lists` and `numpy`, and the two
    shares of the COPY floor, taken repetition by repetition."""
    progress(f"postgresql ingest floors: {median(floor):,.0f}/s, COPY {median(copy_floor):,.0f}/s")
    figures = [
        _rate_figure(
            backend,
            "ingest_floor_per_s",
            "ingest floor: raw psycopg executemany",
            floor,
            {"batch": BATCH},
        ),
        _rate_figure(
            backend,
            "ingest_copy_floor_per_s",
            "ingest floor: raw psycopg binary COPY",
            copy_floor,
            {"batch": BATCH},
        ),
    ]
    return figures + _share_figures(
        backend, copy_floor, 0.6, lists, numpy, suffix="of_copy_floor", floor_label="COPY floor"
    )


def _floor_figures(
    backend: Backend,
    workload: Workload,
    reps: int,
    floor: list[float],
    lists: Figure,
    numpy: Figure,
) -> list[Figure]:
    """The floor (measured in the same repetitions as `lists` and `numpy`),
    the floor without checkpoints (for comparison), and the two shares of
    the floor, taken repetition by repetition."""
    # The store checkpoints its WAL from a thread of its own; a raw writer
    # checkpoints in its commits (SQLite's default). For comparison, the
    # same writer with no checkpoint at all during the run:
    deferred = [_floor_rate(backend, workload, autocheckpoint=0) for _ in range(reps)]
    progress(f"sqlite ingest floor: {median(floor):,.0f}/s ({median(deferred):,.0f}/s)")
    figures = [
        _rate_figure(
            backend,
            "ingest_floor_per_s",
            "ingest floor: raw sqlite3 executemany",
            floor,
            {"wal_autocheckpoint": 1000},
        ),
        _rate_figure(
            backend,
            "ingest_floor_no_checkpoint_per_s",
            "ingest floor, no WAL checkpoint in the run",
            deferred,
            {"wal_autocheckpoint": 0},
        ),
    ]
    return figures + _share_figures(
        backend, floor, 0.5, lists, numpy, suffix="of_floor", floor_label="floor"
    )


def _share_figures(
    backend: Backend,
    floor: list[float],
    target: float,
    lists: Figure,
    numpy: Figure,
    *,
    suffix: str,
    floor_label: str,
) -> list[Figure]:
    """Our batched rates (lists, numpy) as shares of a floor measured in the
    same repetitions, taken repetition by repetition."""
    figures = []
    for name, label, ours in (
        (f"ingest_batched_{suffix}", f"ingest batched / {floor_label}", lists),
        (f"ingest_batched_numpy_{suffix}", f"ingest batched (numpy) / {floor_label}", numpy),
    ):
        shares = [o / f for o, f in zip(ours.reps, floor, strict=True)]
        share = median(shares)
        figures.append(
            Figure(
                name=name,
                backend=backend.name,
                label=label,
                unit="x",
                ours=share,
                reps=shares,
                higher_is_better=True,
            ).check(f">= {target}", share >= target)
        )
    return figures


def _rate_figure(
    backend: Backend, name: str, label: str, measured: list[float], details: dict[str, Any]
) -> Figure:
    """A per-second figure: the median of the repetitions, higher is better."""
    return Figure(
        name=name,
        backend=backend.name,
        label=label,
        unit="/s",
        ours=median(measured),
        reps=measured,
        higher_is_better=True,
        details=details,
    )


def _floor_rows(
    workload: Workload,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows the store writes, as bytes and text, computed outside the timing."""
    n = len(workload)
    queries = workload.queries.astype(FLOAT32)
    activations = workload.activations.astype(FLOAT32)
    created = utcnow().replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    no_context = json.dumps([])
    trajectories = [
        (i + 1, float(workload.qualities[i]), None, None, no_context, created) for i in range(n)
    ]
    vectors = [(i + 1, queries[i].tobytes()) for i in range(n)]
    steps = [
        (
            i + 1,
            0,
            activations[i].tobytes(),
            workload.attention[i].astype(FLOAT32).tobytes(),
            float(workload.rewards[i]),
            None,
        )
        for i in range(n)
    ]
    return trajectories, vectors, steps


def _floor_rate(backend: Backend, workload: Workload, *, autocheckpoint: int = 1000) -> float:
    url = backend.new_url("floor")
    SonaStore(url, cycle_config(len(workload))).close()  # the store's own tables, empty
    trajectories, vectors, steps = _floor_rows(workload)
    conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
    try:
        for pragma in (
            "foreign_keys = ON",
            "busy_timeout = 30000",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            f"wal_autocheckpoint = {int(autocheckpoint)}",
        ):
            conn.execute(f"PRAGMA {pragma}")

        def insert() -> None:
            for start in range(0, len(trajectories), BATCH):
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO trajectories (id, quality, latency_us, model_route,"
                    " context_ids, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    trajectories[start : start + BATCH],
                )
                conn.executemany(
                    "INSERT INTO trajectory_vectors (trajectory_id, query_embedding) VALUES (?, ?)",
                    vectors[start : start + BATCH],
                )
                conn.executemany(
                    "INSERT INTO trajectory_steps (trajectory_id, step_index, activations,"
                    " attention_weights, reward, layer_name) VALUES (?, ?, ?, ?, ?, ?)",
                    steps[start : start + BATCH],
                )
                conn.execute("COMMIT")

        return len(trajectories) / timed(insert)
    finally:
        conn.close()
        backend.drop(url)


_PG_TABLES = (
    (
        "trajectories",
        ("id", "quality", "context_ids", "created_at"),
        ("int8", "float8", "text", "timestamptz"),
    ),
    ("trajectory_vectors", ("trajectory_id", "query_embedding"), ("int8", "bytea")),
    (
        "trajectory_steps",
        ("trajectory_id", "step_index", "activations", "attention_weights", "reward"),
        ("int8", "int4", "bytea", "bytea", "float8"),
    ),
)


def _pg_floor_rate(backend: Backend, workload: Workload, *, copy: bool) -> float:
    """Raw psycopg 3 into a fresh store's own (empty) tables, one transaction
    per 1000: `executemany` of INSERTs, or one binary COPY a table
    (`set_types`, rows written with `write_row`). The rows are the store's
    (NULL columns left out, as the store does), precomputed outside the
    timing; the ids are the floor's own (no sequence)."""
    import psycopg

    url = backend.new_url("floor")
    SonaStore(url, cycle_config(len(workload))).close()
    trajectories, vectors, steps = _floor_rows(workload)
    created = utcnow()
    rows = (
        [(r[0], r[1], r[4], created) for r in trajectories],
        vectors,
        [s[:5] for s in steps],
    )
    parsed = make_url(url)
    conn = psycopg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        dbname=parsed.database,
    )
    try:
        cursor = conn.cursor()

        def insert() -> None:
            for start in range(0, len(trajectories), BATCH):
                for (table, columns, types), table_rows in zip(_PG_TABLES, rows, strict=True):
                    part = table_rows[start : start + BATCH]
                    names = ", ".join(columns)
                    if copy:
                        with cursor.copy(
                            f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
                        ) as stream:
                            stream.set_types(list(types))
                            for row in part:
                                stream.write_row(row)
                    else:
                        marks = ", ".join(["%s"] * len(columns))
                        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", part)
                conn.commit()

        return len(trajectories) / timed(insert)
    finally:
        conn.close()
        backend.drop(url)
