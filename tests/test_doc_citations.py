"""The code cites the reference's behaviour from docs/reference.md by section
anchor, never from a description kept outside the repository: every cited
anchor exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = ("sona_store", "tests", "benchmarks", "migrations", "docs")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".ini", ".js"}


def _files() -> list[Path]:
    found = [ROOT / "README.md"]
    for folder in CITED:
        found += [
            p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
        ]
    return found


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped,
    spaces as hyphens."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", doc.read_text(), flags=re.M)
    return {_anchor(h) for h in headings}


def test_every_cited_section_of_the_reference_page_exists():
    anchors = _anchors(ROOT / "docs" / "reference.md")
    cited: dict[str, list[str]] = {}
    for path in _files():
        text = path.read_text(errors="replace")
        for anchor in re.findall(r"reference\.md#([\w\-]+)", text):
            cited.setdefault(anchor, []).append(str(path.relative_to(ROOT)))
    assert len(cited) >= 8  # the learning modules cite their sections
    missing = {a: where for a, where in cited.items() if a not in anchors}
    assert not missing, f"cited sections missing from docs/reference.md: {missing}"


def test_no_file_cites_a_description_outside_the_repository():
    name = "SEED" + ".md"  # spelled apart so this file does not match itself
    citing = [str(p.relative_to(ROOT)) for p in _files() if name in p.read_text(errors="replace")]
    assert citing == []
