"""What every command shares: opening (and closing) the store at the
command's URL, and printing rows as a table or as JSON."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sona_store.cli.console import printable, resolve_url
from sona_store.errors import InvalidInputError

if TYPE_CHECKING:
    from sona_store.store import SonaStore

JSON_HELP = "print JSON instead of a table"
LIMIT_HELP = "show at most N rows, newest first"


def url_of(args: argparse.Namespace) -> str:
    return resolve_url(args)


def schema_of(args: argparse.Namespace) -> str | None:
    """--schema, else $SONA_STORE_SCHEMA, else none (the default store)."""
    return getattr(args, "schema", None) or os.environ.get("SONA_STORE_SCHEMA") or None


@contextlib.contextmanager
def open_store(args: argparse.Namespace, *, create: bool = False) -> Iterator[SonaStore]:
    """`with open_store(args) as store:` the store at the command's URL, closed
    when the command is done with it (pending accesses written, connections
    released), whatever happens. Only commands that write trajectories
    (ingest) create one: a misspelt path must be an error, not a new empty store."""
    from sona_store.store import SonaStore  # imported lazily: fast --help

    store = SonaStore(
        url_of(args), schema=schema_of(args), create=create, actor=getattr(args, "actor", None)
    )
    try:
        yield store
    finally:
        store.close()


def json_default(value: Any) -> Any:
    """The one JSON encoding of the CLI's values: ISO 8601 times, numbers as numbers."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=json_default))


def print_rows(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    columns: list[str],
    *,
    as_json: Any = None,
    empty: str = "(none)",
) -> None:
    """How a listing command ends: with --json, `as_json` (default: the rows)
    as JSON; otherwise the rows as a table of `columns` (`empty`: the line
    printed when there are none)."""
    if getattr(args, "json", False):
        print_json(rows if as_json is None else as_json)
    else:
        print_table(rows, columns, empty=empty)


def print_table(rows: list[dict[str, Any]], columns: list[str], *, empty: str = "(none)") -> None:
    if not rows:
        print(empty)
        return
    text = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in text:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return printable(value)


def confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise InvalidInputError(f"{question} Refusing without confirmation: add --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
