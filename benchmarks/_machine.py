"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from storyreel.utils import atomic_write


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def emit(text: str, out: Path | None) -> None:
    """Print a result and, when ``out`` is given, write it there atomically."""
    print(text)
    if out is not None:
        with atomic_write(out, "w", encoding="utf-8") as fh:
            fh.write(text)
