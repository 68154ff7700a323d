"""What the command line shows and where its URL comes from: text made safe
for a terminal, one-line errors, and ways to pass a password that keep it off
the command line (where `ps` shows it to every local user)."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from sona_store.config import URL_ENV
from sona_store.errors import FileAccessError, InvalidInputError

MAX_URL_FILE_BYTES = 64 * 1024
# C0 controls, DEL and C1 controls: ESC sequences, OSC titles, bells, CR, ...
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: Any) -> str:
    """`text` with every control character escaped as \\xNN, so stored text
    (a reason, an actor) cannot move the cursor, clear the screen or retitle
    the operator's terminal. For human-readable output; --json stays exact."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def resolve_url(args: Any) -> str:
    """--url, else the first line of --url-file, else $SONA_STORE_URL, else
    the default SQLite file."""
    url, path = getattr(args, "url", None), getattr(args, "url_file", None)
    if url and path:
        raise InvalidInputError("give --url or --url-file, not both")
    if url:
        return str(url)
    if path:
        return read_url_file(path)
    from sona_store.db.engine import resolve_url as store_url  # lazily: fast --help

    return str(store_url(None))  # $SONA_STORE_URL, else the default: as SonaStore()


def read_url_file(path: str | os.PathLike[str]) -> str:
    """The first line of `path` that is neither blank nor a # comment."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise FileAccessError(f"--url-file {file}: {exc.strerror}") from None
    if size > MAX_URL_FILE_BYTES:
        raise InvalidInputError(f"--url-file {file}: larger than {MAX_URL_FILE_BYTES} bytes")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileAccessError(f"--url-file {file}: cannot read it ({type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"--url-file {file}: cannot read it ({type(exc).__name__})"
        ) from None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise InvalidInputError(f"--url-file {file}: holds no URL")


def url_password(url: str | None) -> str | None:
    """The password in a URL (user:password@ or ?password=), if any."""
    if not url:
        return None
    from sqlalchemy.engine import make_url  # lazily: fast --help

    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL fails later with its own message
        return None
    query = parsed.query.get("password")
    return parsed.password or (query if isinstance(query, str) else None)


def warn_about_exposed_password(args: Any) -> None:
    """A password given in --url stays readable in `ps` for the process's
    lifetime; a --url-file others can read exposes it too. Say so on stderr."""
    if url_password(getattr(args, "url", None)):
        warn(
            "the password in --url is visible to every local user (ps, /proc) while "
            f"this runs; pass the URL in ${URL_ENV} or --url-file, or the password in "
            "PGPASSWORD or a PGPASSFILE"
        )
    path = getattr(args, "url_file", None)
    if path:
        try:
            mode = os.stat(path).st_mode
            secret = url_password(read_url_file(path))
        except (OSError, ValueError):
            return  # resolve_url reports it
        if secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
            warn(
                f"--url-file {path} is readable by other users (mode {mode & 0o777:04o}): chmod 600"
            )


def warn(message: str) -> None:
    print(f"sona-store: warning: {printable(message)}", file=sys.stderr)


def error_line(exc: BaseException | str, password: str | None = None) -> str:
    """One line for stderr: the message's first line, control characters
    escaped, the password (if any) masked."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return f"sona-store: error: {printable(text)}"


__all__ = [
    "printable",
    "read_url_file",
    "resolve_url",
    "url_password",
    "warn_about_exposed_password",
]
