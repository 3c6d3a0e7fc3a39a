"""Every citation resolves inside the repository.

Code, tests, benchmarks and docs cite the facts they rely on as ``docs/<page>.md#<anchor>``
(docs/reference/README.md); Markdown pages link each other as ``[text](page.md#anchor)``. This
test finds every such citation in hatchway/, tests/, bench/, docs/ and README.md and fails if
the page or the anchor does not exist. It also fails on citations of documents that are not in
the repository (the research notes the code was first written from): their names are below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("hatchway", "tests", "bench", "docs")
SKIPPED = {"node_modules", "__pycache__", ".hypothesis", ".pytest_cache"}
SUFFIXES = {".py", ".md", ".toml", ".cfg", ".txt", ".sh", ".json", ".yml", ".yaml"}

# Documents outside the repository. (Written so that this file does not match itself.)
OUTSIDE = re.compile(
    r"\b(?:iam|ssm|protocol|wire|sigv4)-spe[c]\b"  # the research notes, by name
    r"|\bspe[c] \u00a7|\bSpe[c] \u00a7|\(\u00a7\d"  # their numbered sections
    r"|peers\.m[d]|/work/share[d]"
    r"|docs/architectur[e](?!\.md)"  # the architecture page without its file name
)
# Cheap tests for whether OUTSIDE can match at all (the regular expression is slow on 3 MB).
OUTSIDE_HINTS = (
    "-spe" + "c",
    "\u00a7",
    "peers.m" + "d",
    "/work/share" + "d",
    "docs/architectur" + "e",
)
# A cited page of the docs, from the repository's root, optionally with an anchor.
ROOTED = re.compile(r"(?<![\w/.-])(docs/[\w./-]*?\.md)(#[\w-]+)?")
# A Markdown link, relative to the page it is in.
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors a Markdown page defines: its headings (outside code blocks), ``<a id>``s."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(EXPLICIT.findall(line))
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def scanned_files(root: Path = ROOT) -> Iterator[Path]:
    for top in SCANNED:
        for folder, dirs, files in os.walk(root / top):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
            for name in sorted(files):
                if Path(name).suffix in SUFFIXES:
                    yield Path(folder) / name
    if (root / "README.md").exists():
        yield root / "README.md"


def citations(path: Path, root: Path = ROOT) -> Iterator[tuple[int, Path, str | None]]:
    """(line, page, anchor) for every citation in ``path``; the page resolved in the tree."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for m in ROOTED.finditer(text):
        anchor = m.group(2)[1:] if m.group(2) else None
        yield _line(text, m.start()), root / m.group(1), anchor
    if path.suffix != ".md":
        return
    for m in LINK.finditer(text):
        target = m.group(1).strip("<>")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: …
            continue
        page, _, anchor = target.partition("#")
        if page and not page.endswith(".md"):
            continue  # a file that is not a page
        resolved = (path.parent / page).resolve() if page else path
        yield _line(text, m.start()), resolved, anchor or None


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def problems(root: Path = ROOT) -> list[str]:
    """Every citation that does not resolve, and every citation of an outside document."""
    found: list[str] = []
    cache: dict[Path, set[str]] = {}
    for path in scanned_files(root):
        if path.resolve() == Path(__file__).resolve():
            continue
        where = path.relative_to(root)
        text = path.read_text(encoding="utf-8", errors="replace")
        hinted = any(hint in text for hint in OUTSIDE_HINTS)
        for m in OUTSIDE.finditer(text) if hinted else ():
            number = _line(text, m.start())
            found.append(
                f"{where}:{number}: cites a document outside the repository: {m.group(0)!r}"
            )
        for number, page, anchor in citations(path, root):
            if not page.is_file():
                found.append(f"{where}:{number}: no such page {page.relative_to(root)}")
                continue
            if anchor is None:
                continue
            if page not in cache:
                cache[page] = anchors(page)
            if anchor not in cache[page]:
                found.append(f"{where}:{number}: {page.relative_to(root)} has no #{anchor}")
    return found


def test_every_citation_resolves_inside_the_repository() -> None:
    assert problems() == []


def test_the_code_cites_the_reference_pages() -> None:
    """The scan sees the citations (a broken pattern would pass the test above vacuously)."""
    cited = {
        (page.relative_to(ROOT).as_posix(), anchor)
        for path in scanned_files()
        if path.suffix == ".py"
        for _, page, anchor in citations(path)
    }
    pages = {page for page, _ in cited}
    assert {
        "docs/reference/iam-evaluation.md",
        "docs/reference/session-manager.md",
        "docs/reference/data-channel.md",
    } <= pages
    assert ("docs/reference/iam-evaluation.md", "decision-order") in cited
    assert len(cited) >= 30


def test_a_missing_page_a_missing_anchor_and_an_outside_document_are_reported(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Known limits\n\n```text\n## not a heading\n```\n"
        "See [limits](#known-limits), [gone](#not-a-heading) and [other](other.md).\n"
    )
    (tmp_path / "hatchway").mkdir()
    (tmp_path / "hatchway" / "m.py").write_text(
        '"""Cites docs/page.md#known-limits, docs/page.md#nowhere, docs/none.md and\n'
        + "ssm-spe"
        + 'c 6.2."""\n'
    )
    assert sorted(problems(tmp_path)) == [
        "docs/page.md:8: docs/page.md has no #not-a-heading",
        "docs/page.md:8: no such page docs/other.md",
        "hatchway/m.py:1: docs/page.md has no #nowhere",
        "hatchway/m.py:1: no such page docs/none.md",
        "hatchway/m.py:2: cites a document outside the repository: 'ssm-spec'",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("The reliable stream", "the-reliable-stream"),
        ("Session preferences (inputs)", "session-preferences-inputs"),
        ("`hatchway.protocol`: frames", "hatchwayprotocol-frames"),
        ("NotAction and NotResource", "notaction-and-notresource"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
