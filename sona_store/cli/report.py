"""`report`: the learning history as charts and one HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sona_store.cli.common import open_store


def cmd_report(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        files = store.report(args.out)
    print(f"wrote {len(files)} files to {Path(args.out)}; open {files[-1]}")
    return 0


def register_cli(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report", help="write PNG charts and an index.html of the learning history"
    )
    report.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    report.set_defaults(func=cmd_report)
