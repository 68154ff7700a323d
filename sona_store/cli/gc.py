"""`sona-store gc` and `sona-store retention`: the retention policy and its
application from the command line (see `retention`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sona_store.cli.common import confirm, open_store, print_json
from sona_store.errors import InvalidInputError

if TYPE_CHECKING:
    from sona_store.store import SonaStore


def _days(value: str) -> float:
    days = float(value)
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"days must be a number >= 0, got {value!r}")
    return days


def _cycles(value: str) -> int:
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"cycles must be >= 0, got {value!r}")
    return count


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    from sona_store.db.retention import DAY_S  # lazily: fast --help

    return {
        "older_than": args.older_than_days * DAY_S if args.older_than_days is not None else None,
        "horizon_cycles": args.horizon_cycles,
    }


def cmd_gc(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        return _gc(args, store)


def _gc(args: argparse.Namespace, store: SonaStore) -> int:
    from sona_store.db.retention import Policy  # lazily: fast --help

    limits = _limits(args)
    policy = store.retention_policy()
    shown = Policy(
        limits["older_than"] if limits["older_than"] is not None else policy.max_age_seconds,
        limits["horizon_cycles"] if limits["horizon_cycles"] is not None else policy.horizon_cycles,
    )
    if not shown.deletes_anything:
        print("no retention policy and no limit given: nothing to delete")
        return 0
    archive = args.archive or policy.archive_dir
    question = (
        f"Delete the vectors of consumed trajectories {shown.describe()}, outside the "
        f"retention window ({'archived to ' + archive if archive else 'NOT archived'})?"
    )
    if not confirm(args, question):
        print("nothing done")
        return 0
    result = store.gc(archive=args.archive, **limits)
    if args.json:
        print_json(result.to_dict())
    elif not result.trajectories:
        print(f"nothing to delete under {result.policy.describe()}")
    else:
        print(
            f"deleted the vectors of {result.trajectories} trajectories "
            f"({result.first_id}..{result.last_id}), {result.steps} steps"
            + (f"; archived to {result.archive}" if result.archive else "")
            + f"; {result.bytes_reclaimed} bytes given back (audit #{result.audit_id})"
        )
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        _retention(args, store)
    return 0


def _retention(args: argparse.Namespace, store: SonaStore) -> None:
    if args.retention_command == "set":
        limits = _limits(args)
        if limits["older_than"] is None and limits["horizon_cycles"] is None:
            raise InvalidInputError(
                "give --older-than-days and/or --horizon-cycles (or use: clear)"
            )
        audit = store.set_retention_policy(archive_dir=args.archive, reason=args.reason, **limits)
        print(f"retention policy: {store.retention_policy().describe()} (audit #{audit})")
    elif args.retention_command == "clear":
        audit = store.set_retention_policy(reason=args.reason)
        print(f"retention policy removed: every vector is kept (audit #{audit})")
    else:
        policy = store.retention_policy()
        if args.json:
            print_json(policy.to_dict())
        else:
            print(f"retention policy: {policy.describe()}")
            if policy.archive_dir:
                print(f"archive directory: {policy.archive_dir}")


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than-days",
        type=_days,
        metavar="D",
        help="only trajectories recorded more than D days ago (fractions allowed)",
    )
    parser.add_argument(
        "--horizon-cycles",
        type=_cycles,
        metavar="N",
        help="keep what a rollback of any of the last N completed cycles needs",
    )
    parser.add_argument(
        "--archive", metavar="DIR", help="first write the vectors to DIR as gzip JSONL"
    )


def register_cli(subparsers: Any) -> None:
    gc = subparsers.add_parser(
        "gc",
        help="delete the vectors the retention policy lets go (metadata rows stay)",
        description=(
            "Delete the vectors (query, activations, attention) of consumed trajectories "
            "outside the retention window, older than D days and beyond a rollback horizon "
            "of N cycles. A limit not given comes from the stored policy "
            "(sona-store retention set). One audit row."
        ),
    )
    _add_limits(gc)
    gc.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    gc.add_argument("--json", action="store_true", help="print JSON instead of text")
    gc.set_defaults(func=cmd_gc)

    retention = subparsers.add_parser(
        "retention",
        help="the stored retention policy: show, set, clear",
        description="The policy gc and the scheduled service (after each cycle) apply.",
    )
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    show = retention_sub.add_parser("show", help="the stored policy")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    setter = retention_sub.add_parser("set", help="store a policy (audited)")
    _add_limits(setter)
    clear = retention_sub.add_parser("clear", help="remove the policy: keep every vector")
    for parser in (setter, clear):
        parser.add_argument("--reason", help="why, for the audit trail")
    retention.set_defaults(func=cmd_retention)
