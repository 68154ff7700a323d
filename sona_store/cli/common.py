"""What every command shares: opening the store at the command's URL, and
printing rows as a table or as JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
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


def open_store(args: argparse.Namespace, *, create: bool = False) -> SonaStore:
    """The store at the command's URL. Only commands that write trajectories
    (ingest) create one: a misspelt path must be an error, not a new empty store."""
    from sona_store.store import SonaStore  # imported lazily: fast --help

    return SonaStore(
        url_of(args), schema=schema_of(args), create=create, actor=getattr(args, "actor", None)
    )


def json_default(value: Any) -> Any:
    """The one JSON encoding of the CLI's values: ISO 8601 times, numbers as numbers."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=json_default))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
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
