"""`sona-store`: the command line. Thin: it parses arguments, calls SonaStore or
the schema runner, and prints. User errors become one line and exit code 1."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sona_store.console import (
    URL_ENV,
    error_line,
    printable,
    resolve_url,
    url_password,
    warn_about_exposed_password,
)
from sona_store.db.engine import (
    DEFAULT_URL,
    create_store_engine,
    describe_database_error,
    mask_url,
)
from sona_store.errors import SonaStoreError

logger = logging.getLogger("sona_store")
EXIT_USER_ERROR = 1


def _url(args: argparse.Namespace) -> str:
    return resolve_url(args)


def _open(args: argparse.Namespace):  # -> SonaStore (imported lazily: fast --help)
    from sona_store.store import SonaStore

    return SonaStore(_url(args), create=True, actor=getattr(args, "actor", None))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    text = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in text:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "isoformat"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return printable(value)


# -- commands -------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from sona_store.db import schema

    engine = create_store_engine(_url(args))
    try:
        if args.db_command == "upgrade":
            schema.upgrade(engine, args.revision)
            print(f"{mask_url(engine.url)} is at revision {schema.database_revision(engine)}")
        elif args.db_command == "vacuum":
            from sona_store.retention import vacuum

            before, after = vacuum(engine)
            print(f"{mask_url(engine.url)}: {before} -> {after} bytes")
        elif args.db_command == "downgrade":
            schema.downgrade(engine, args.revision)
            print(f"{mask_url(engine.url)} is at revision {schema.database_revision(engine)}")
        else:
            current = schema.database_revision(engine)
            head = schema.head_revision()
            if current == head:
                state = "up to date"
            elif current is None or current in schema.known_revisions():
                state = f"needs: sona-store db upgrade (to {head})"
            else:
                state = f"newer than this sona-store ({head}): upgrade the sona-store package"
            print(f"{mask_url(engine.url)}: revision {current or '(empty)'} ({state})")
    finally:
        engine.dispose()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from sona_store.retention import open_jsonl

    store = _open(args)
    # Bytes: each line is decoded on its own, so invalid UTF-8 names its line.
    stdin = getattr(sys.stdin, "buffer", sys.stdin)  # a text stand-in has no buffer
    stream = stdin if args.file == "-" else open_jsonl(args.file)  # gzip or plain
    if args.restore:
        try:
            restored = store.restore_vectors(stream)
        finally:
            if stream is not stdin:
                stream.close()
        print(f"restored the vectors of {restored} trajectories")
        return 0
    show = sys.stderr.isatty() or args.progress

    def progress(count: int) -> None:
        if show:
            print(f"\r{count} trajectories read", end="", file=sys.stderr, flush=True)

    try:
        ids = store.ingest(stream, progress=progress)
    finally:
        if stream is not stdin:
            stream.close()
        if show:
            print(file=sys.stderr)
    print(f"recorded {len(ids)} trajectories; {store.pending_count()} pending")
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    result = _open(args).run_cycle(force=args.force)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(
            f"cycle {result.cycle_id}: {result.status}"
            + (f" ({printable(result.reason)})" if result.reason else "")
            + f"; {result.trajectories_processed} trajectories, "
            f"{result.patterns_extracted} patterns, {result.elapsed:.3f} s"
        )
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    records = _open(args).history(limit=args.limit)
    if args.json:
        _print_json([r.to_dict() for r in records])
    else:
        _table(
            [dict(r.__dict__) for r in records],
            [
                "cycle_id",
                "started_at",
                "trigger",
                "status",
                "trajectories_processed",
                "patterns_extracted",
                "elapsed",
                "reason",
            ],
        )
    return 0


def _vector(text: str) -> list[float]:
    """A query vector from FILE_OR_JSON: a JSON array, an object with a
    `query_embedding` (one trajectory line), or a file holding either."""
    source = text.strip()
    if not source.startswith(("[", "{")):
        with open(text, encoding="utf-8") as f:
            source = f.read().strip()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--near: not a JSON array or object: {exc}") from None
    if isinstance(value, dict):
        value = value.get("query_embedding")
    if not isinstance(value, list):
        raise ValueError("--near: expected a JSON array of numbers or {'query_embedding': [...]}")
    return value


def cmd_patterns(args: argparse.Namespace) -> int:
    if args.near is not None:
        if args.cycle is not None:
            raise ValueError("--near searches the current patterns: it takes no --cycle")
        found = _open(args).find_patterns(_vector(args.near), k=args.k)
        if args.json:
            _print_json([p.to_dict(with_centroid=False) for p in found])
        else:
            _table(
                [p.to_dict(with_centroid=False) for p in found],
                ["id", "cycle_id", "score", "cluster_size", "avg_quality", "access_count"],
            )
        return 0
    patterns = _open(args).patterns(cycle_id=args.cycle)
    if args.json:
        _print_json([p.to_dict() for p in patterns])
    else:
        _table(
            [p.to_dict(with_centroid=False) for p in patterns],
            ["id", "cycle_id", "cluster_size", "avg_quality", "total_weight", "access_count"],
        )
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    routes = [r.strip() for r in args.routes.split(",")] if args.routes else None
    found = _open(args).recommend_routes(
        _vector(args.near), k=args.k, routes=routes, explore=args.explore
    )
    rows = [r.to_dict() for r in found]
    if args.json:
        _print_json(rows)
    elif not rows:
        print("(no routes: the current patterns saw none; name candidates with --routes)")
    else:
        _table(rows, ["route", "expected_quality", "support", "low", "high"])
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _open(args).stats()
    if args.json:
        _print_json(stats)
    else:
        for key, value in stats.items():
            print(f"{key}: {printable(value)}")
    return 0


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise ValueError(f"{question} Refusing without confirmation: add --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def cmd_rollback(args: argparse.Namespace) -> int:
    store = _open(args)
    target = store.cycle(args.cycle_id)
    what = "and requeue their trajectories" if args.requeue else "(trajectories stay consumed)"
    question = (
        f"Roll back cycle {target.cycle_id} ({target.status}, {target.started_at:%Y-%m-%d %H:%M}) "
        f"and every later cycle {what}?"
    )
    if not _confirm(args, question):
        print("nothing done")
        return 0
    move = store.rollback(args.cycle_id, requeue=args.requeue, reason=args.reason)
    print(
        f"rolled back cycles {', '.join(map(str, move.cycles_rolled_back))}; head is now "
        f"cycle {move.to_cycle_id if move.to_cycle_id is not None else '(initial state)'}"
        + (f"; {move.trajectories_requeued} trajectories pending again" if args.requeue else "")
        + f" (audit #{move.audit_id})"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    store = _open(args)
    if not _confirm(args, f"Make cycle {args.cycle_id}'s state current again?"):
        print("nothing done")
        return 0
    move = store.restore(args.cycle_id, reason=args.reason)
    print(
        f"restored cycles {', '.join(map(str, move.cycles_restored))}; head is now cycle "
        f"{move.to_cycle_id}"
        + (
            f"; rolled back {', '.join(map(str, move.cycles_rolled_back))}"
            if move.cycles_rolled_back
            else ""
        )
        + f" (audit #{move.audit_id})"
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    events = _open(args).audit_log(limit=args.limit)
    if args.json:
        _print_json(events)
    else:
        _table(
            events,
            ["id", "at", "actor", "action", "cycle_id", "from_cycle_id", "to_cycle_id", "reason"],
        )
    return 0


# -- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sona-store",
        description="Durable, auditable SONA learning on SQLite or PostgreSQL.",
    )
    parser.add_argument(
        "--url",
        help=f"database URL (default: ${URL_ENV}, else {DEFAULT_URL}); a password here "
        "is visible in ps: prefer --url-file, $SONA_STORE_URL or PGPASSFILE",
    )
    parser.add_argument(
        "--url-file",
        metavar="PATH",
        help="read the database URL from the first line of this file (keep it mode 600)",
    )
    parser.add_argument("--actor", help="name recorded in the audit trail (default: OS user)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="schema: upgrade, downgrade, current")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="create or upgrade the schema")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="downgrade the schema (destroys data)")
    down.add_argument("revision")
    db_sub.add_parser("current", help="show the schema revision")
    db_sub.add_parser(
        "vacuum",
        help="give free space back (SQLite: converts older files to incremental auto-vacuum)",
    )
    db.set_defaults(func=cmd_db)

    ingest = sub.add_parser(
        "ingest", help="record trajectories from a JSONL file, gzip or plain (or -)"
    )
    ingest.add_argument("file")
    ingest.add_argument("--progress", action="store_true", help="show progress even when piped")
    ingest.add_argument(
        "--restore",
        action="store_true",
        help="put back the vectors gc deleted, from a gc archive of this store (by id)",
    )
    ingest.set_defaults(func=cmd_ingest)

    cycle = sub.add_parser("cycle", help="run one learning cycle now")
    cycle.add_argument("--force", action="store_true", help="run even under the minimum")
    cycle.add_argument("--json", action="store_true")
    cycle.set_defaults(func=cmd_cycle)

    history = sub.add_parser("history", help="cycle records, newest first")
    history.add_argument("--limit", type=int)
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=cmd_history)

    patterns = sub.add_parser("patterns", help="current patterns, or a cycle's")
    patterns.add_argument("--cycle", type=int)
    patterns.add_argument(
        "--near",
        metavar="FILE_OR_JSON",
        help="the current patterns nearest this query (JSON array, or a file), with scores",
    )
    patterns.add_argument("-k", type=int, default=5, help="with --near: how many (default 5)")
    patterns.add_argument("--json", action="store_true")
    patterns.set_defaults(func=cmd_patterns)

    recommend = sub.add_parser("recommend", help="model routes ranked for a query")
    recommend.add_argument(
        "--near", metavar="FILE_OR_JSON", required=True, help="the query (JSON array, or a file)"
    )
    recommend.add_argument("-k", type=int, default=5, help="how many routes (default 5)")
    recommend.add_argument("--routes", help="candidate routes, comma-separated (default: all seen)")
    recommend.add_argument(
        "--explore", choices=["thompson", "ucb"], help="rank by a posterior draw or upper bound"
    )
    recommend.add_argument("--json", action="store_true")
    recommend.set_defaults(func=cmd_recommend)

    stats = sub.add_parser("stats", help="counters of the store")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    for name, func, text in (
        ("rollback", cmd_rollback, "make current what was current before a cycle"),
        ("restore", cmd_restore, "make a rolled-back cycle's state current again"),
    ):
        move = sub.add_parser(name, help=text)
        move.add_argument("cycle_id", type=int, metavar="CYCLE")
        if name == "rollback":
            move.add_argument(
                "--requeue", action="store_true", help="make the cycles' trajectories pending again"
            )
        move.add_argument("--reason", help="why, for the audit trail")
        move.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        move.set_defaults(func=func)

    audit = sub.add_parser(
        "audit", help="rollbacks, restores, imports, gc and policy changes, newest first"
    )
    audit.add_argument("--limit", type=int)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register_cli(sub)
    return parser


# Modules that add commands of their own, each through `register_cli(subparsers)`.
COMMAND_MODULES = (
    "sona_store.scheduler",  # run
    "sona_store.lora_io",  # export-lora, import-lora, lora-use
    "sona_store.report",  # report
    "sona_store.demo",  # demo
    "sona_store.gc_cli",  # gc, retention
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # psycopg warns of an aborted pipeline the error line reports
        logging.getLogger("psycopg").setLevel(logging.ERROR)
    warn_about_exposed_password(args)
    password = None
    try:
        password = url_password(resolve_url(args))
        return args.func(args)
    except (SonaStoreError, ValueError, LookupError, OSError, ArgumentError) as exc:
        print(error_line(exc, password), file=sys.stderr)
        return EXIT_USER_ERROR
    except SQLAlchemyError as exc:  # e.g. a full disk: what the database said, no SQL
        logger.debug("database error", exc_info=True)
        print(
            error_line(f"database error: {describe_database_error(exc)}", password), file=sys.stderr
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sona-store: interrupted", file=sys.stderr)
        return 130
    except (RecursionError, MemoryError) as exc:
        print(error_line(f"{type(exc).__name__}: {exc}", password), file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
