"""`sona-store`: the command line. Thin: it parses arguments, calls SonaStore or
the schema runner, and prints. User errors become one line and exit code 1."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, cast

from sona_store.cli import demo, gc, lora, report, run
from sona_store.cli.common import (
    JSON_HELP,
    LIMIT_HELP,
    confirm,
    open_store,
    print_json,
    print_rows,
    schema_of,
    url_of,
)
from sona_store.cli.console import (
    error_line,
    printable,
    resolve_url,
    url_password,
    warn_about_exposed_password,
)
from sona_store.cli.ingest_files import open_jsonl
from sona_store.config import DEFAULT_URL, URL_ENV
from sona_store.enums import CycleStatus
from sona_store.errors import FileAccessError, InvalidInputError, SonaStoreError

if TYPE_CHECKING:
    pass

logger = logging.getLogger("sona_store")
EXIT_USER_ERROR = 1
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE
LOG_LEVELS = ("debug", "info", "warning", "error")
URL_HELP = (
    f"database URL (default: ${URL_ENV}, else {DEFAULT_URL}); a password here "
    "is visible in ps: prefer --url-file, $SONA_STORE_URL or PGPASSFILE"
)


# -- commands -------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from sona_store.db import schema
    from sona_store.db.engine import create_store_engine, mask_url, store_label

    if getattr(args, "all_schemas", False):
        return _upgrade_every_store(args)
    engine = create_store_engine(url_of(args), schema=schema_of(args))
    where = store_label(engine)
    try:
        if args.db_command == "upgrade":
            schema.upgrade(engine, args.revision)
            print(f"{where} is at revision {schema.database_revision(engine)}")
        elif args.db_command == "vacuum":
            from sona_store.services.retention import vacuum

            before, after = vacuum(engine)
            print(f"{where}: {before} -> {after} bytes")
        elif args.db_command == "downgrade":
            question = f"Downgrade {mask_url(engine.url)} to {args.revision}? " + (
                "This drops every table and all the data in them."
                if args.revision == "base"
                else "Columns and tables newer than it are dropped, with their data."
            )
            if not confirm(args, question):
                print("nothing done")
                return 0
            schema.downgrade(engine, args.revision)
            print(f"{where} is at revision {schema.database_revision(engine)}")
        else:
            current = schema.database_revision(engine)
            print(f"{where}: revision {current or '(empty)'} ({_revision_state(current)})")
    finally:
        engine.dispose()
    return 0


def _revision_state(current: str | None) -> str:
    from sona_store.db import schema

    head = schema.head_revision()
    if current == head:
        return "up to date"
    if current is None or current in schema.known_revisions():
        return f"needs: sona-store db upgrade (to {head})"
    return f"newer than this sona-store ({head}): upgrade the sona-store package"


def _upgrade_every_store(args: argparse.Namespace) -> int:
    """`db upgrade --all-schemas`: each store of a PostgreSQL database, one
    schema (and one transaction) at a time."""
    from sona_store.db import schema
    from sona_store.db.engine import create_store_engine, mask_url, store_label
    from sona_store.db.stores import list_stores

    if schema_of(args) is not None:
        raise InvalidInputError("--all-schemas upgrades every store: leave out --schema")
    probe = create_store_engine(url_of(args))
    try:
        stores = list_stores(probe)
    finally:
        probe.dispose()
    for found in stores:
        engine = create_store_engine(url_of(args), schema=found.schema)
        try:
            schema.upgrade(engine, args.revision)
            print(f"{store_label(engine)} is at revision {schema.database_revision(engine)}")
        finally:
            engine.dispose()
    if not stores:
        print(f"no stores in {mask_url(url_of(args))}")
    return 0


def cmd_stores(args: argparse.Namespace) -> int:
    from sona_store.db.engine import create_store_engine
    from sona_store.db.stores import list_stores

    engine = create_store_engine(url_of(args))
    try:
        stores = list_stores(engine)
    finally:
        engine.dispose()
    rows = [
        {"schema": s.schema, "revision": s.revision, "state": _revision_state(s.revision)}
        for s in stores
    ]
    print_rows(args, rows, ["schema", "revision", "state"])
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    if args.restore:
        from sona_store.services.retention import open_jsonl as open_archive

        stdin = getattr(sys.stdin, "buffer", sys.stdin)  # a text stand-in has no buffer
        with open_store(args) as store:
            archive = stdin if args.file == "-" else open_archive(args.file)  # gzip or plain
            try:
                restored = store.restore_vectors(cast(Any, archive))
            finally:
                if archive is not stdin:
                    archive.close()
        print(f"restored the vectors of {restored} trajectories")
        return 0
    # First: a missing file must not create a store. Plain or gzip, each line
    # decoded on its own, so invalid UTF-8 names its file and line.
    stream = open_jsonl(args.file)
    show = sys.stderr.isatty() or args.progress

    def progress(count: int) -> None:
        if show:
            print(f"\r{count} trajectories read", end="", file=sys.stderr, flush=True)

    try:
        with open_store(args, create=True) as store:
            ids = store.ingest(stream, progress=progress)
            pending = store.pending_count()
    finally:
        stream.close()
        if show:
            print(file=sys.stderr)
    print(f"recorded {len(ids)} trajectories; {pending} pending")
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        result = store.run_cycle(force=args.force)
    if args.json:
        print_json(result.to_dict())
    else:
        print(
            f"cycle {result.cycle_id}: {result.status}"
            + (f" ({printable(result.reason)})" if result.reason else "")
            + f"; {result.trajectories_processed} trajectories, "
            f"{result.patterns_extracted} patterns, {result.elapsed:.3f} s"
        )
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        records = store.history(limit=args.limit, status=args.status, since=args.since)
    print_rows(
        args,
        [{**r.__dict__, "status": r.status_text} for r in records],
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
        as_json=[r.to_dict() for r in records],
    )
    return 0


def parse_since(text: str) -> dt.datetime:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise), or an
    age such as 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip()
    if value[-1:].lower() in units and value[:-1].replace(".", "", 1).isdigit():
        seconds = float(value[:-1]) * units[value[-1].lower()]
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date/time (2026-11-28, 2026-11-28T02:00) "
            "nor an age (30m, 12h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _vector(text: str) -> list[float]:
    """A query vector from FILE_OR_JSON: a JSON array, an object with a
    `query_embedding` (one trajectory line), or a file holding either."""
    source = text.strip()
    if not source.startswith(("[", "{")):
        try:
            with open(text, encoding="utf-8") as f:
                source = f.read().strip()
        except OSError as exc:
            raise FileAccessError(f"--near {text}: cannot read it ({exc.strerror or exc})") from exc
        except UnicodeDecodeError:
            raise InvalidInputError(f"--near {text}: not UTF-8 text") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--near: not a JSON array or object: {exc}") from None
    if isinstance(value, dict):
        value = value.get("query_embedding")
    if not isinstance(value, list):
        raise InvalidInputError(
            "--near: expected a JSON array of numbers or {'query_embedding': [...]}"
        )
    return value


def cmd_patterns(args: argparse.Namespace) -> int:
    if args.near is not None:
        if args.cycle is not None:
            raise InvalidInputError("--near searches the current patterns: it takes no --cycle")
        query = _vector(args.near)
        with open_store(args) as store:
            found = store.find_patterns(query, k=args.k)
        print_rows(
            args,
            [p.to_dict(with_centroid=False) for p in found],
            ["id", "cycle_id", "score", "cluster_size", "avg_quality", "access_count"],
        )
        return 0
    with open_store(args) as store:
        patterns = store.patterns(cycle_id=args.cycle)
    print_rows(
        args,
        [p.to_dict(with_centroid=False) for p in patterns],
        ["id", "cycle_id", "cluster_size", "avg_quality", "total_weight", "access_count"],
        as_json=[p.to_dict() for p in patterns],
    )
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    routes = [r.strip() for r in args.routes.split(",")] if args.routes else None
    query = _vector(args.near)
    with open_store(args) as store:
        found = store.recommend_routes(query, k=args.k, routes=routes, explore=args.explore)
    print_rows(
        args,
        [r.to_dict() for r in found],
        ["route", "expected_quality", "support", "low", "high"],
        empty="(no routes: the current patterns saw none; name candidates with --routes)",
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        stats = store.stats()
    if args.json:
        print_json(stats)
    else:
        for key, value in stats.items():
            print(f"{key}: {printable(value)}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        target = store.cycle(args.cycle_id)
        what = "and requeue their trajectories" if args.requeue else "(trajectories stay consumed)"
        question = (
            f"Roll back cycle {target.cycle_id} ({target.status}, "
            f"{target.started_at:%Y-%m-%d %H:%M}) and every later cycle {what}?"
        )
        if not confirm(args, question):
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
    with open_store(args) as store:
        if not confirm(args, f"Make cycle {args.cycle_id}'s state current again?"):
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


def parse_ids(text: str) -> list[int]:
    """'1-500,700' -> [1, ..., 500, 700]."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise InvalidInputError(f"--ids: {part!r} is not an id or a range like 1-500") from None
        if lo < 1 or hi < lo:
            raise InvalidInputError(f"--ids: {part!r} is not a range of positive ids, low to high")
        ids.extend(range(lo, hi + 1))
    return ids


def cmd_quarantine(args: argparse.Namespace) -> int:
    ids = parse_ids(args.ids) if args.ids is not None else None
    criteria = [
        f"{name} {printable(value)}"
        for name, value in (
            ("ids", args.ids),
            ("recorded from", args.recorded_from),
            ("recorded before", args.recorded_to),
            ("route", args.route),
            ("context", args.context),
        )
        if value is not None
    ]
    question = (
        f"Quarantine the trajectories with {', '.join(criteria) or '(nothing named)'}, "
        "roll back the cycles that learned from them and replay the micro-LoRA without them?"
    )
    with open_store(args) as store:
        if not confirm(args, question):
            print("nothing done")
            return 0
        result = store.quarantine(
            ids,
            recorded_from=args.recorded_from,
            recorded_to=args.recorded_to,
            model_route=args.route,
            context_id=args.context,
            reason=args.reason,
        )
    if args.json:
        print_json(result.to_dict())
        return 0
    cut = result.cycles_rolled_back
    print(
        f"quarantine {result.quarantine_id}: {result.trajectories} trajectories (audit "
        f"#{result.audit_id})\n"
        f"  cycles rolled back: {', '.join(map(str, cut)) if cut else 'none'}"
        + (f"; {result.trajectories_requeued} other trajectories pending again" if cut else "")
        + f"\n  micro-LoRA: {result.micro_versions_replayed} versions replayed "
        f"({result.micro_versions_written} written, {result.micro_signals_removed} signals "
        f"removed); moved {result.micro_lora_distance:.6g}\n"
        f"  base LoRA moved {result.base_lora_distance:.6g}\n"
        f"  undo with: sona-store release {result.quarantine_id}"
    )
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    question = f"Release quarantine {args.quarantine_id} (its trajectories learn again)?"
    with open_store(args) as store:
        if not confirm(args, question):
            print("nothing done")
            return 0
        result = store.release(args.quarantine_id, reason=args.reason)
    print(
        f"released quarantine {result.quarantine_id}: {result.trajectories} trajectories "
        f"eligible again, {result.pending_again} pending for the next cycle; their "
        f"micro-LoRA signals are applied by the next flush (audit #{result.audit_id})"
    )
    return 0


def cmd_quarantines(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        rows = store.quarantines()
    print_rows(
        args,
        [{**r, "selection": json.dumps(r["selection"])} for r in rows],
        ["id", "created_at", "actor", "trajectories", "released_at", "reason", "selection"],
        as_json=rows,
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        events = store.audit_log(limit=args.limit)
    print_rows(
        args,
        events,
        ["id", "at", "actor", "action", "cycle_id", "from_cycle_id", "to_cycle_id", "reason"],
    )
    return 0


# -- parser -----------------------------------------------------------------------


def _version() -> str:
    try:
        return str(version("sona-store"))
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sona-store",
        description="Durable, auditable SONA learning on SQLite or PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--url", help=URL_HELP)
    parser.add_argument(
        "--url-file",
        metavar="PATH",
        help="read the database URL from the first line of this file (keep it mode 600)",
    )
    parser.add_argument(
        "--schema",
        help="PostgreSQL: the schema of the store, one database holding several "
        "(default: $SONA_STORE_SCHEMA, else none: the database's default schema)",
    )
    parser.add_argument("--actor", help="name recorded in the audit trail (default: OS user)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level (--log-level info)"
    )
    noise.add_argument(
        "-q", "--quiet", action="store_true", help="log errors only (--log-level error)"
    )
    noise.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="what to log on stderr (default: warning; `run` logs each cycle at info)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="schema: upgrade, downgrade, current")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    up = db_sub.add_parser("upgrade", help="create or upgrade the schema")
    up.add_argument(
        "revision", nargs="?", default="head", help="target revision (default: %(default)s)"
    )
    up.add_argument(
        "--all-schemas",
        action="store_true",
        help="PostgreSQL: upgrade every store of the database (see `stores`)",
    )
    down = db_sub.add_parser("downgrade", help="downgrade the schema (destroys data; asks first)")
    down.add_argument(
        "revision", help="target revision; 'base' drops every table (see: db current)"
    )
    down.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    db_sub.add_parser("current", help="show the schema revision")
    db_sub.add_parser(
        "vacuum",
        help="give free space back (SQLite: converts older files to incremental auto-vacuum)",
    )
    db.set_defaults(func=cmd_db)

    stores = sub.add_parser("stores", help="PostgreSQL: the stores (schemas) of the database")
    stores.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stores.set_defaults(func=cmd_stores)

    ingest = sub.add_parser(
        "ingest",
        help="record trajectories from a JSONL file, gzip or plain (or -); creates the store",
    )
    ingest.add_argument(
        "file", metavar="FILE", help="JSONL file, gzip-compressed or not; - reads stdin"
    )
    ingest.add_argument("--progress", action="store_true", help="show progress even when piped")
    ingest.add_argument(
        "--restore",
        action="store_true",
        help="put back the vectors gc deleted, from a gc archive of this store (by id)",
    )
    ingest.set_defaults(func=cmd_ingest)

    cycle = sub.add_parser("cycle", help="run one learning cycle now")
    cycle.add_argument("--force", action="store_true", help="run even under the minimum")
    cycle.add_argument("--json", action="store_true", help=JSON_HELP)
    cycle.set_defaults(func=cmd_cycle)

    history = sub.add_parser("history", help="cycle records, newest first")
    history.add_argument("--limit", type=int, metavar="N", help=LIMIT_HELP)
    history.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in CycleStatus],
        help="only cycles with this status (repeat for several)",
    )
    history.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only cycles active since WHEN: an ISO date/time (UTC) or an age (30m, 12h, 7d)",
    )
    history.add_argument("--json", action="store_true", help=JSON_HELP)
    history.set_defaults(func=cmd_history)

    patterns = sub.add_parser("patterns", help="current patterns, or a cycle's")
    patterns.add_argument("--cycle", type=int, metavar="CYCLE", help="the patterns of this cycle")
    patterns.add_argument(
        "--near",
        metavar="FILE_OR_JSON",
        help="the current patterns nearest this query (JSON array, or a file), with scores",
    )
    patterns.add_argument("-k", type=int, default=5, help="with --near: how many (default 5)")
    patterns.add_argument("--json", action="store_true", help=JSON_HELP)
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
    recommend.add_argument("--json", action="store_true", help=JSON_HELP)
    recommend.set_defaults(func=cmd_recommend)

    stats = sub.add_parser("stats", help="counters of the store")
    stats.add_argument("--json", action="store_true", help=JSON_HELP)
    stats.set_defaults(func=cmd_stats)

    for name, func, text in (
        ("rollback", cmd_rollback, "make current what was current before a cycle"),
        ("restore", cmd_restore, "make a rolled-back cycle's state current again"),
    ):
        move = sub.add_parser(name, help=text)
        move.add_argument("cycle_id", type=int, metavar="CYCLE", help="cycle id (see: history)")
        if name == "rollback":
            move.add_argument(
                "--requeue", action="store_true", help="make the cycles' trajectories pending again"
            )
        move.add_argument("--reason", help="why, for the audit trail")
        move.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        move.set_defaults(func=func)

    quarantine = sub.add_parser(
        "quarantine",
        help="undo a batch of trajectories in every learned tier, as if never recorded",
    )
    quarantine.add_argument("--ids", help="trajectory ids and ranges, e.g. 1-500,700")
    quarantine.add_argument(
        "--from",
        dest="recorded_from",
        metavar="ISO",
        help="recorded at or after (UTC if no offset)",
    )
    quarantine.add_argument(
        "--to", dest="recorded_to", metavar="ISO", help="recorded before (UTC if no offset)"
    )
    quarantine.add_argument("--route", help="model_route equal to this")
    quarantine.add_argument("--context", help="context_ids holding this id")
    quarantine.add_argument("--reason", required=True, help="why, for the audit trail")
    quarantine.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    quarantine.add_argument("--json", action="store_true", help=JSON_HELP)
    quarantine.set_defaults(func=cmd_quarantine)

    release = sub.add_parser("release", help="end a quarantine: its trajectories learn again")
    release.add_argument(
        "quarantine_id", type=int, metavar="QID", help="the quarantine to end (see: quarantines)"
    )
    release.add_argument("--reason", help="why, for the audit trail")
    release.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    release.set_defaults(func=cmd_release)

    quarantines = sub.add_parser("quarantines", help="every quarantine, newest first")
    quarantines.add_argument("--json", action="store_true", help=JSON_HELP)
    quarantines.set_defaults(func=cmd_quarantines)

    audit = sub.add_parser(
        "audit",
        help="rollbacks, restores, quarantines, releases, imports, gc and policy changes, "
        "newest first",
    )
    audit.add_argument("--limit", type=int, metavar="N", help=LIMIT_HELP)
    audit.add_argument("--json", action="store_true", help=JSON_HELP)
    audit.set_defaults(func=cmd_audit)

    for register in (
        run.register_cli,
        lora.register_cli,
        report.register_cli,
        demo.register_cli,
        gc.register_cli,
    ):
        register(sub)
    _accept_url_after_command(sub)
    return parser


def _accept_url_after_command(subparsers: Any) -> None:
    """`sona-store history --url ...` works as `sona-store --url ... history`.
    SUPPRESS: an option not given leaves the one before the command in place."""
    for command in subparsers.choices.values():
        nested = [
            action for action in command._actions if isinstance(action, argparse._SubParsersAction)
        ]
        for action in nested:
            _accept_url_after_command(action)
        if not nested and "--url" not in command._option_string_actions:
            command.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)


def log_level(args: argparse.Namespace) -> int:
    if args.log_level:
        return int(getattr(logging, args.log_level.upper()))
    if args.quiet:
        return logging.ERROR
    return logging.INFO if args.verbose else logging.WARNING


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic logs "Context impl SQLiteImpl." and each migration step at INFO:
    # noise for every command; shown with --log-level debug.
    quiet_alembic = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.getLogger("alembic").setLevel(quiet_alembic)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Past --help (which exits above): SQLAlchemy is loaded for commands only.
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from sona_store.db.engine import describe_database_error

    level = log_level(args)
    _configure_logging(level)
    if level > logging.INFO:  # psycopg warns of an aborted pipeline the error line reports
        logging.getLogger("psycopg").setLevel(logging.ERROR)
    warn_about_exposed_password(args)
    password = None
    try:
        password = url_password(resolve_url(args))
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    # What a user can cause or meet is a SonaStoreError (or a URL SQLAlchemy
    # cannot parse); what the database itself refused (a full disk, a table
    # gone) is said in its own words. Anything else is a bug: its traceback shows.
    except (SonaStoreError, ArgumentError) as exc:
        print(error_line(exc, password), file=sys.stderr)
        return EXIT_USER_ERROR
    except DBAPIError as exc:  # e.g. a full disk: what the database said, no SQL
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


def _broken_pipe() -> int:
    """The reader went away (`sona-store patterns | head -2`): stop quietly, as
    Unix tools killed by SIGPIPE do. Python's own flush at exit would raise
    again, so stdout now points at /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
