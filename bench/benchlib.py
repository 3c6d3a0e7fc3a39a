"""What the benchmarks share: CPU accounting from /proc, the machine's description, the
tests' broker and agent helpers, and py-spy sampling."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_conftest() -> ModuleType:
    """The tests' harness (``tests/harness``: start_broker, start_agent, the admin keys)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import harness

    return harness


def cpu_self() -> float:
    """CPU seconds of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_pid(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid``, NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from each thread's ``children`` list)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def cpu_tree(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (a broker with API workers)."""
    return cpu_pid(pid) + sum(cpu_pid(child) for child in children(pid))


def cpu_all() -> float:
    """Busy CPU seconds of the whole machine (all processes, all CPUs), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def machine() -> str:
    """``nproc``, the CPU model and the Python implementation and version."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"nproc {os.cpu_count()}, CPU {model!r}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


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
