"""Atomic text output for the bundle's handlers (metrics tables, learning-curve JSON/CSV).

Why: readers (a plot refreshing during training, a user tailing the CSV) must never see half a file, so each
file is written beside its target and renamed into place. ``mkstemp`` creates the temporary file 0600 whatever
the umask; the file is given the mode a plain ``open()`` would have made before it is moved into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open()`` (0o666) or ``mkdir()`` (0o777) would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
