"""What the benchmarks and tests measure: a child process's wall time and peak memory, and mask overlap."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ProcessStats:
    """What ``/usr/bin/time`` would say of one process."""

    wall_s: float
    peak_rss_mb: float
    output: str


def run_measured(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> ProcessStats:
    """Run ``command`` to its end; time it from the outside and read its own peak RSS (``wait4``).

    The clock runs from the process start to its exit, so interpreter start-up, imports and teardown count, as
    they do for a user waiting on the command. Raises ``RuntimeError`` with the command's output when it fails.
    """
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child cannot block on a full pipe
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(command[:4])} ...\n{output[-3000:]}")
    return ProcessStats(wall_s=wall_s, peak_rss_mb=usage.ru_maxrss / 1024, output=output)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (any dtype; non-zero is foreground); 1.0 when both are empty (they agree)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0
