"""Checks of written DICOM objects with the reference validator, shared by the test folders."""

from __future__ import annotations

import subprocess
from pathlib import Path


def dciodvfy_errors(path: Path, warnings: bool = False) -> list[str]:
    """The ``Error`` lines (and, with ``warnings``, the ``Warning`` lines) dciodvfy prints for ``path``."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    kinds = ("Error", "Warning") if warnings else ("Error",)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(kinds)]
