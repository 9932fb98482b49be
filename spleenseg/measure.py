"""What the benchmarks and tests measure: a child process's wall time and peak memory, and mask overlap."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The bare launcher whose child is measured.
PEAK_RSS = Path(__file__).with_name("peak_rss.py")


@dataclass
class ProcessStats:
    """What ``/usr/bin/time`` would say of one process."""

    wall_s: float
    peak_rss_mb: float
    output: str


def run_measured(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> ProcessStats:
    """Run ``command`` to its end; time it from the outside and read its own peak RSS (``wait4``).

    The clock runs from the process start to its exit, so interpreter start-up, imports and teardown count, as
    they do for a user waiting on the command. The command is started by :mod:`spleenseg.peak_rss` (a bare
    interpreter, ~20 ms), so its peak is its own and not this process's (see there). Raises ``RuntimeError``
    with the command's output when it fails.
    """
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as tmp:
        # a file, not a pipe: a chatty child cannot block on a full pipe
        result = Path(tmp) / "result"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-I", str(PEAK_RSS), str(result), *command], stdout=log,
                       stderr=subprocess.STDOUT, cwd=cwd, env=env, check=False)
        wall_s = time.perf_counter() - start
        log.seek(0)
        output = log.read().decode(errors="replace")
        returncode, max_rss_kb = (int(v) for v in result.read_text().split())
    if returncode != 0:
        raise RuntimeError(f"exit {returncode}: {' '.join(command[:4])} ...\n{output[-3000:]}")
    return ProcessStats(wall_s=wall_s, peak_rss_mb=max_rss_kb / 1024, output=output)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (any dtype; non-zero is foreground); 1.0 when both are empty (they agree)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0
