"""py-spy helpers shared by the benchmarks: sample a process, summarize its stacks."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path


def pyspy_start(exe: str, pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    argv = [exe, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw"]
    return subprocess.Popen(
        [*argv, "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_raw(path: Path, top: int) -> None:
    """Self and inclusive samples per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        k = int(n)
        frames = [f.split(" (", 1)[0] + " " + _short(f) for f in stack.split(";")]
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    print(f"  {path.name}: {total} busy samples")
    print("  self:")
    for f, k in own.most_common(top):
        print(f"    {100 * k / max(total, 1):5.1f}%  {f}")
    print("  inclusive:")
    for f, k in incl.most_common(top + 10):
        print(f"    {100 * k / max(total, 1):5.1f}%  {f}")


def _short(frame: str) -> str:
    if "(" not in frame:
        return ""
    where = frame.rsplit("(", 1)[1].rstrip(")")
    file, _, _line = where.rpartition(":")
    return "/".join(Path(file).parts[-2:])
