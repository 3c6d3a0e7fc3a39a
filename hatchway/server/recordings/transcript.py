"""Plain-text transcripts: terminal output as lines a person (or CloudWatch Logs) can read.

What goes to S3 (``<prefix>/<sessionId>.log``) and CloudWatch Logs is the session's output with
the terminal's control sequences taken out: escape sequences (colours, cursor movement, titles)
removed, CR LF and LF end lines, a backspace erases the character before it (line editing
echo), other control characters are dropped. The full-fidelity record is the asciicast
recording in the broker; this is the readable one.

:class:`Transcript` is incremental: feed it output in the chunks it was recorded in, with their
times, and take the completed lines as they come.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["MAX_LINE", "Transcript"]

MAX_LINE = 16 * 1024
"""A line longer than this (characters) is cut, so one event always fits CloudWatch's limit."""
_CARRY = 4096  # an unfinished escape sequence longer than this is garbage, not carried

# Complete escape sequences: CSI, OSC (ended by BEL or ST), DCS/SOS/PM/APC strings, and the
# two- and three-byte ESC sequences (charset, keypad, save/restore cursor, ...).
_ESCAPE = re.compile(
    r"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[\x20-\x2f]*[\x30-\x4f\x51-\x57\x59\x5a\x5c\x60-\x7e]"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Transcript:
    """Output bytes in, completed ``(time, line)`` pairs out."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._carry = ""
        self._line: list[str] = []
        self._length = 0

    def feed(self, data: bytes, time: float) -> list[tuple[float, str]]:
        """The lines that ``data`` (recorded at ``time``) completes."""
        text = self._carry + self._decoder.decode(data)
        self._carry = ""
        cut = text.rfind("\x1b")
        if cut >= 0 and len(text) - cut < _CARRY and not _ESCAPE.match(text, cut):
            text, self._carry = text[:cut], text[cut:]  # the rest of it is in the next chunk
        return self._lines(_ESCAPE.sub("", text), time)

    def finish(self, time: float) -> list[tuple[float, str]]:
        """The last, unterminated line (if any) once the output has ended."""
        tail = self._decoder.decode(b"", final=True)
        lines = self._lines(_ESCAPE.sub("", self._carry + tail), time)
        self._carry = ""
        if self._line:
            lines.append((time, self._take()))
        return lines

    def _take(self) -> str:
        line = "".join(self._line)
        self._line, self._length = [], 0
        return line

    def _lines(self, text: str, time: float) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        parts = text.split("\n")
        for i, part in enumerate(parts):
            if "\b" in part:
                self._backspace(part)
            else:
                self._append(_CONTROLS.sub("", part))
            while self._length > MAX_LINE:
                line = self._take()
                out.append((time, line[:MAX_LINE]))
                self._append(line[MAX_LINE:])
            if i < len(parts) - 1:
                out.append((time, self._take()))
        return out

    def _append(self, text: str) -> None:
        if text:
            self._line.append(text)
            self._length += len(text)

    def _backspace(self, part: str) -> None:
        chars = list(self._take())
        for ch in part:
            if ch == "\b":
                if chars:
                    chars.pop()
            elif not _CONTROLS.match(ch):
                chars.append(ch)
        self._append("".join(chars))
