"""Opening a JSONL input for `ingest`: a file, plain or gzip-compressed (told
by its first bytes, whatever its name), or stdin. Bytes that are not UTF-8 are
a one-line error naming the file and the line, not a bare codec error."""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, cast

from sona_store.errors import FileAccessError, InvalidInputError

GZIP_MAGIC = b"\x1f\x8b"


class JsonlSource:
    """The lines of one JSONL input as text; `close()` releases the file."""

    def __init__(self, name: str, stream: IO[bytes] | Iterable[str], *, owned: bool):
        self.name = name
        self._stream = stream
        self._owned = owned
        peek = getattr(stream, "peek", None)
        self.compressed = bool(peek and peek(2)[:2] == GZIP_MAGIC)

    def __iter__(self) -> Iterator[str]:
        stream = self._stream
        if not hasattr(stream, "peek"):  # already text (a StringIO standing in for stdin)
            yield from stream  # type: ignore[misc]
            return
        binary = cast(IO[bytes], stream)
        lines: Iterable[bytes] = gzip.GzipFile(fileobj=binary) if self.compressed else binary
        number = 0
        try:
            for number, raw in enumerate(lines, start=1):  # noqa: B007
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInputError(
                        f"{self.name}: line {number} is not UTF-8 text (byte {exc.start + 1} "
                        f"of the line: {raw[exc.start : exc.start + 1]!r}); JSONL input must "
                        "be UTF-8, plain or gzip-compressed"
                    ) from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InvalidInputError(
                f"{self.name}: the gzip data is damaged after line {number} ({exc})"
            ) from None

    def close(self) -> None:
        if self._owned and hasattr(self._stream, "close"):
            self._stream.close()


def open_jsonl(path: str) -> JsonlSource:
    """`-` is stdin; any other path is opened (one that cannot be is a
    FileAccessError naming it)."""
    if path == "-":
        return JsonlSource("<stdin>", getattr(sys.stdin, "buffer", sys.stdin), owned=False)
    try:
        stream = open(path, "rb")  # noqa: SIM115 (closed by JsonlSource.close)
    except OSError as exc:
        raise FileAccessError(f"{path}: cannot open it ({exc.strerror or exc})") from exc
    return JsonlSource(path, stream, owned=True)
