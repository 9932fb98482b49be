"""Write-then-rename helpers: a crash or a bad option never leaves a half-written file or folder in place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from spleenseg.errors import InputError, OutputError


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open()`` (0o666) or ``mkdir()`` (0o777) would give.

    ``mkstemp``/``mkdtemp`` create 0600 files and 0700 folders whatever the umask, so every temporary output
    is given this mode before it is moved into place (a shared dataset must stay readable by the group).
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def output_error(path: str | os.PathLike, exc: OSError, action: str = "cannot write") -> OutputError:
    """One line naming the output ``path`` and the system's reason (``No space left on device``...).

    Why: an ``OSError`` from deep inside a writer (gzip, sendfile, a temporary name) reaches the user as a
    traceback naming a hidden temporary file; they need the output they asked for and what stopped it.
    """
    if isinstance(exc, OutputError):
        return exc
    cause = system_cause(exc)
    reason, code = cause.strerror or str(cause), cause.errno
    if code is None and _free_bytes(Path(path).parent) < LOW_SPACE_BYTES:  # numpy's tofile: "N requested and M written"
        reason, code = f"{os.strerror(errno.ENOSPC)}: {cause}", errno.ENOSPC
    err = OutputError(f"{path}: {action} ({reason})")
    err.errno = code
    return err


#: Free space below which a short write without an errno is reported as a full disk.
LOW_SPACE_BYTES = 1 << 20


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return LOW_SPACE_BYTES


def system_cause(exc: OSError) -> OSError:
    """The innermost ``OSError`` with an errno behind ``exc`` (``exc`` itself when there is none).

    Why: writers re-raise the system's error with their own context and without its errno (pydicom: "With tag
    (0028,0103) got exception: [Errno 28] ..."); the user needs "No space left on device".
    """
    seen, current = [], exc
    while isinstance(current, BaseException) and current not in seen:
        seen.append(current)
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return exc


def make_temp_file(path: Path, suffix: str) -> Path:
    """An empty temporary file beside ``path`` (hidden, same suffix), with the umask's mode."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, umask_mode())
    return Path(name)


def make_temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new temporary folder in ``parent``, with the umask's mode."""
    name = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
    os.chmod(name, umask_mode(0o777))
    return Path(name)


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
    tmp = make_temp_file(path, f".part{suffix}")
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
        tmp = make_temp_dir(path.parent, f".{path.name}.", ".part")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the output folder ({exc.strerror or exc})") from exc
    try:
        try:
            yield tmp
        except OutputError as exc:  # name the folder the user asked for, not the hidden one being built
            renamed = OutputError(str(exc).replace(str(tmp), str(path)))
            renamed.errno = exc.errno
            raise renamed from exc
        try:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except OSError as exc:  # e.g. an empty output folder that is a read-only mount point
            raise output_error(path, exc, "cannot replace the output folder") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, writer: Any, suffix: str) -> None:
    """Call ``writer(tmp_path)`` then move the result into place, so no half-written file is ever seen.

    An ``OSError`` (read-only folder, full disk) becomes :class:`~spleenseg.errors.OutputError` naming ``path``.
    """
    atomic_write_all([(path, writer, suffix)])


def atomic_write_all(items: Sequence[tuple[str | os.PathLike, Callable[[Any], Any], str]]) -> None:
    """Write every ``(path, writer, suffix)`` to a temporary file first, then move them all into place.

    Why: a NIfTI and its JSON side-car belong together; when the disk fills up while the second is written,
    neither appears (a volume without its side-car would later be converted or trained on without its record).
    """
    done: list[tuple[Path, Path]] = []
    current = Path(items[0][0]) if items else Path()
    try:
        for path, writer, suffix in items:
            current = Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            tmp = make_temp_file(current, suffix)
            done.append((tmp, current))
            writer(tmp)
        for tmp, target in done:
            current = target
            os.replace(tmp, target)
    except OSError as exc:
        raise output_error(current, exc) from exc
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
