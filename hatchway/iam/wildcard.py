"""IAM's two wildcard characters, matched in linear time without regular expressions.

``*`` matches any run of characters (newlines included) and ``?`` exactly one; everything else
is literal. A pattern is compiled once into a :class:`Glob`: the fixed-length *segments* between
runs of ``*`` (each a list of literal chunks at fixed offsets, the ``?`` positions being the gaps
between them). Matching never backtracks:

* no ``*``: the text has the pattern's length and every chunk sits at its offset;
* otherwise the first segment must sit at the start, the last at the end, and each middle
  segment is placed at its leftmost occurrence after the previous one. Leftmost placement is
  optimal (any match can slide its segments left), so a segment that does not fit there fits
  nowhere and the match fails at once.

Each text position is examined a bounded number of times per pattern character, so a match
costs at most O(len(pattern) × len(text)) character comparisons, whatever the pattern — where
a backtracking regex took exponential time on ``*a*a*a…*b`` (issue 16, item 2). The literal
chunks are found with ``str.find``/``str.startswith`` (C loops), so the common patterns cost
about what the regexes they replace did. :class:`Steps` counts the comparisons (an upper bound:
``str.find`` is charged window × needle length) for the tests that prove the bound.

Text that came from a policy variable is literal even if it holds ``*`` or ``?``: patterns
are compiled from ``(text, is_literal)`` pieces (:func:`compile_pieces`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

STAR = "*"
ONE = "?"


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def fold(text: str) -> str:
    """Lower-case ``text`` without changing its length (``?`` counts characters)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class Steps:
    """A counter of character comparisons, passed to :meth:`Glob.match` by tests."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Segment:
    """A fixed-length run of literal characters and ``?``: literal chunks at offsets."""

    __slots__ = ("chunks", "key", "key_off", "length", "rest")

    def __init__(self, length: int, chunks: tuple[tuple[int, str], ...]) -> None:
        self.length = length
        self.chunks = chunks
        if chunks:
            # Search for the longest chunk; verify the others where it was found.
            best = max(range(len(chunks)), key=lambda i: len(chunks[i][1]))
            self.key_off, self.key = chunks[best]
            self.rest = chunks[:best] + chunks[best + 1 :]
        else:
            self.key_off, self.key, self.rest = 0, "", ()

    def at(self, text: str, pos: int, steps: Steps | None) -> bool:
        """Does the segment sit at ``pos``? (The caller checked it fits.)"""
        for off, chunk in self.chunks:
            if steps is not None:
                steps.count += len(chunk)
            if not text.startswith(chunk, pos + off):
                return False
        return True

    def find(self, text: str, start: int, end: int, steps: Steps | None) -> int:
        """The leftmost ``pos >= start`` with the segment inside ``text[pos:end]``, or -1."""
        last = end - self.length
        if last < start:
            return -1
        if not self.chunks:
            return start
        key, key_off, size = self.key, self.key_off, len(self.key)
        pos = start
        while pos <= last:
            found = text.find(key, pos + key_off, last + key_off + size)
            if steps is not None:
                stop = found + size if found >= 0 else last + key_off + size
                steps.count += (stop - pos - key_off) * size
            if found < 0:
                return -1
            pos = found - key_off
            for off, chunk in self.rest:
                if steps is not None:
                    steps.count += len(chunk)
                if not text.startswith(chunk, pos + off):
                    break
            else:
                return pos
            pos += 1
        return -1


def _segment(tokens: Sequence[str | None]) -> _Segment:
    """A segment from tokens: a character, or None for ``?``."""
    chunks: list[tuple[int, str]] = []
    run: list[str] = []
    for i, tok in enumerate(tokens):
        if tok is None:
            if run:
                chunks.append((i - len(run), "".join(run)))
                run = []
        else:
            run.append(tok)
    if run:
        chunks.append((len(tokens) - len(run), "".join(run)))
    return _Segment(len(tokens), tuple(chunks))


class Glob:
    """One compiled wildcard pattern; :meth:`match` tests a whole string."""

    __slots__ = (
        "affixes",
        "exact",
        "head",
        "ignore_case",
        "middle",
        "min_length",
        "source",
        "tail",
    )

    def __init__(self, pieces: Iterable[tuple[str, bool]], ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        segments: list[list[str | None]] = [[]]
        source: list[str] = []
        for text, literal in pieces:
            source.append(text)
            if ignore_case:
                text = fold(text)
            for ch in text:
                if literal or (ch != STAR and ch != ONE):
                    segments[-1].append(ch)
                elif ch == ONE:
                    segments[-1].append(None)
                elif segments[-1] or len(segments) == 1:
                    segments.append([])  # a run of stars is one star
        self.source = "".join(source)
        compiled = [_segment(s) for s in segments]
        self.head = compiled[0]
        self.exact = len(compiled) == 1  # no star at all
        self.tail = compiled[-1]
        self.middle = tuple(compiled[1:-1])
        self.min_length = sum(s.length for s in compiled)
        # The common shape, one star and no ``?`` (``ssm:Get*``, ``instance/*``): two C calls.
        self.affixes: tuple[str, str] | None = None
        if len(compiled) == 2 and all(len(s.key) == s.length for s in compiled):
            self.affixes = (self.head.key, self.tail.key)

    def match(self, text: str, steps: Steps | None = None) -> bool:
        """Does the whole of ``text`` match? O(len(pattern) × len(text)) at worst."""
        if self.ignore_case:
            text = fold(text)
        if self.affixes is not None:
            prefix, suffix = self.affixes
            if steps is not None:
                steps.count += len(prefix) + len(suffix)
            return (
                len(text) >= self.min_length and text.startswith(prefix) and text.endswith(suffix)
            )
        n = len(text)
        if self.exact:
            return n == self.head.length and self.head.at(text, 0, steps)
        if n < self.min_length:
            return False
        end = n - self.tail.length
        if not self.head.at(text, 0, steps) or not self.tail.at(text, end, steps):
            return False
        pos = self.head.length
        for seg in self.middle:
            found = seg.find(text, pos, end, steps)
            if found < 0:
                return False
            pos = found + seg.length
        return True

    def __repr__(self) -> str:
        return f"<Glob {self.source!r}{' (ignore case)' if self.ignore_case else ''}>"


# Patterns up to this length are remembered (8,192 of them); longer ones, which only
# simulations and odd policies carry, are compiled each time rather than kept in memory.
_CACHED_LENGTH = 1024


@lru_cache(maxsize=8192)
def _cached_glob(pattern: str, ignore_case: bool) -> Glob:
    return Glob(((pattern, False),), ignore_case)


@lru_cache(maxsize=8192)
def _cached_pieces(pieces: tuple[tuple[str, bool], ...], ignore_case: bool) -> Glob:
    return Glob(pieces, ignore_case)


def compile_glob(pattern: str, ignore_case: bool = False) -> Glob:
    """The compiled form of a policy pattern."""
    if len(pattern) > _CACHED_LENGTH:
        return Glob(((pattern, False),), ignore_case)
    return _cached_glob(pattern, ignore_case)


def compile_pieces(pieces: tuple[tuple[str, bool], ...], ignore_case: bool = False) -> Glob:
    """A pattern whose ``(text, True)`` pieces are literal (substituted variable values)."""
    if sum(len(t) for t, _ in pieces) > _CACHED_LENGTH:
        return Glob(pieces, ignore_case)
    return _cached_pieces(pieces, ignore_case)


class GlobSet:
    """Any of several case-sensitive patterns: exact strings in a set, the others as globs."""

    __slots__ = ("exact", "globs")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        globs: list[Glob] = []
        for p in patterns:
            if has_wildcard(p):
                globs.append(compile_glob(p))
            else:
                exact.add(p)
        self.exact = frozenset(exact)
        self.globs = tuple(globs)

    def match(self, text: str) -> bool:
        if text in self.exact:
            return True
        return any(g.match(text) for g in self.globs)
