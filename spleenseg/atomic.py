"""Write-then-rename helpers: a crash or a bad option never leaves a half-written file or folder in place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from spleenseg.errors import InputError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise :class:`InputError` naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{path}: cannot create output folder, {parent} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create output folder ({exc.strerror or exc})") from exc
    try:  # a real probe: os.access says yes to root even on read-only mounts
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InputError(f"{path}: output folder is not writable ({exc.strerror or exc})") from exc
    return path


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so writers pick the right format); rename on success."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    suffix = "".join(path.suffixes) if path.suffixes else ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (which must be absent or empty
    unless ``overwrite``)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{path}: exists and is not a folder")
        if any(path.iterdir()) and not overwrite:
            raise InputError(f"{path}: output folder is not empty (choose another, or pass overwrite=True)")
    ensure_writable_dir(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise InputError(f"{path}: cannot write the output folder ({exc.strerror or exc})") from exc
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
