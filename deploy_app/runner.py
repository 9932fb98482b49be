"""``run()``: one call = one Holoscan run of the app, with all-or-nothing output.

The operators write into a hidden temporary folder inside ``output_dir`` when it exists (else beside it: always
on the same file system); only when the whole run succeeded (``spleen_report.json`` present, with a SEG for each
series where a spleen was found) are the files moved into ``output_dir``. On any error the temporary folder is
removed, so ``output_dir`` never holds half-written results, and the input folder is never written to.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from spleenseg import __version__
from spleenseg.atomic import atomic_write_bytes, ensure_writable_dir, make_temp_dir, output_error
from spleenseg.errors import InputError, OutputError

log = logging.getLogger(__name__)


#: The report every run writes (the node reads it too, without importing the app's operators, which load torch).
REPORT_NAME = "spleen_report.json"
#: Exit status of ``python -m deploy_app`` (and of the DICOM node's pipeline process) when the run finished but no
#: selected series produced a SEG (no spleen found): nothing to send, not a failure.
EXIT_NO_RESULT = 3
#: In each staging folder: "<host> <pid>" of the run that owns it, so a later run can remove it if that run died.
OWNER_FILE = ".owner"


@dataclass
class RunResult:
    """What a run produced (paths are inside ``output_dir``); ``seg_files`` is empty when no spleen was found."""

    output_dir: Path
    seg_files: list[Path]
    report_path: Path
    report: dict[str, Any]
    files: list[Path]


def _check_paths(input_dir: Path, output_dir: Path) -> None:
    """Input a folder; output outside it (the input is never written to)."""
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder does not exist or is not a folder")
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise InputError(f"{output_dir}: the output folder must not be inside the input folder {input_dir} "
                         f"(the input is never written to)")


def merge_reports(existing: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` plus the series entries of an earlier run's report in the same folder that it does not redo.

    Why: two runs into one output folder (one after the other, or in parallel) must not lose the first run's
    results; a series segmented again replaces its earlier entry, as its SEG file does. The top-level fields
    describe the latest run. An unreadable earlier report is kept aside as ``spleen_report.json.unreadable``.
    """
    if not existing.is_file():
        return report
    try:
        earlier = json.loads(existing.read_text())["series"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable earlier report (%s); kept as %s.unreadable", existing, exc, existing.name)
        os.replace(existing, existing.with_name(existing.name + ".unreadable"))
        return report
    redone = {e.get("series_instance_uid") for e in report["series"]}
    kept = [e for e in earlier if e.get("series_instance_uid") not in redone]
    return {**report, "series": kept + report["series"]}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (``flock`` on the directory itself, so no lock file is left in it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _staging_dir(output_dir: Path) -> Path:
    """A new hidden folder for the operators' files, on the same file system as ``output_dir``.

    Inside ``output_dir`` when it exists: in a MAP container it is a mounted folder, and moving files into it
    from outside the mount fails (EXDEV). Otherwise beside it. A file in the path or a folder that cannot be
    written to raises :class:`InputError` naming it.
    """
    ensure_writable_dir(output_dir if output_dir.exists() else output_dir.parent)
    parent = output_dir if output_dir.is_dir() else output_dir.parent
    prefix = f".{output_dir.name}.partial-"
    _remove_stale_staging(parent, prefix)
    try:
        staging = make_temp_dir(parent, prefix)
    except OSError as exc:
        raise output_error(output_dir, exc, "cannot create a staging folder here") from exc
    try:
        (staging / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(output_dir, exc) from exc
    return staging


def _remove_stale_staging(parent: Path, prefix: str) -> None:
    """Remove staging folders left by runs that died (SIGKILL, power loss): their owner process is gone.

    A folder whose owner is alive, on another host, or unknown is left alone.
    """
    for folder in parent.glob(prefix + "*"):
        try:
            host, pid = (folder / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            continue
        if host == socket.gethostname() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by a run (pid %s) that did not finish", folder, pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def _named_in(output_dir: Path, staging: Path) -> Iterator[None]:
    """An :class:`OutputError` raised inside names the file in ``output_dir``, not in the hidden staging folder."""
    try:
        yield
    except OutputError as exc:
        renamed = OutputError(str(exc).replace(str(staging), str(output_dir)))
        renamed.errno = exc.errno
        raise renamed from exc


def _move_in(staging: Path, output_dir: Path, report: dict[str, Any]) -> list[Path]:
    """Merge the report with an earlier one in ``output_dir``, then move every staged file in; return them.

    The merged report is written in the staging folder first, so a full disk stops the run (OutputError
    naming the report) before any file has moved; renames on one file system need no space.
    """
    report_file, moved = staging / REPORT_NAME, []
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(output_dir, exc, "cannot create the output folder") from exc
    with _locked(output_dir), _named_in(output_dir, staging):  # a parallel run merges its report after this one
        merged = merge_reports(output_dir / REPORT_NAME, report)
        text = json.dumps(merged, indent=2, default=str)
        atomic_write_bytes(report_file, lambda tmp: Path(tmp).write_text(text), ".json")
        for item in sorted(p for p in staging.iterdir() if p.name != OWNER_FILE):
            os.replace(item, output_dir / item.name)
            moved.append(output_dir / item.name)
    return moved


def run(input_dir: str | os.PathLike, output_dir: str | os.PathLike, model_path: str | os.PathLike, *,
        rules: str | os.PathLike | None = None, all_series: bool = False, stl: bool = False, nifti: bool = False,
        allow_generated_uids: bool = False) -> RunResult:
    """Segment the spleen in DICOM CT below ``input_dir``; write SEG(s) + ``spleen_report.json`` to ``output_dir``.

    Parameters mirror the command line (``python -m deploy_app --help``). Raises
    :class:`spleenseg.errors.InputError` (or a subclass) for bad input, with a message naming file and problem.
    """
    start = time.perf_counter()
    input_dir, output_dir, model_path = Path(input_dir), Path(output_dir), Path(model_path)
    _check_paths(input_dir, output_dir)
    from deploy_app.app import AppOptions, SpleenSegApp  # heavy (Holoscan, torch): import on first use
    from deploy_app.bundle_info import model_identity, read_model_metadata, resolve_model_path

    model_path = resolve_model_path(model_path)
    model = model_identity(read_model_metadata(model_path))  # fail fast, before any output exists
    staging = _staging_dir(output_dir)
    try:
        options = AppOptions(input_dir=input_dir, output_dir=staging, model_path=model_path, model=model,
                             rules_path=Path(rules) if rules else None, all_series=all_series, stl=stl,
                             nifti=nifti, allow_generated_uids=allow_generated_uids)
        with _named_in(output_dir, staging):
            SpleenSegApp(options).run()
        report_file = staging / REPORT_NAME
        if not report_file.is_file():
            raise RuntimeError(f"the pipeline finished without writing {REPORT_NAME}; nothing was written")
        report = json.loads(report_file.read_text())
        report["run_time_s"] = round(time.perf_counter() - start, 3)  # end to end; only added here
        report.update(app_version=__version__, created_at=_utc_now(), input_dir=str(input_dir.resolve()))
        for entry in report["series"]:
            entry.update(created_at=report["created_at"], input_dir=report["input_dir"])
        moved = _move_in(staging, output_dir, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seg_files = [output_dir / e["seg_file"] for e in report["series"] if e["seg_file"]]
    log.info("done in %.1f s: %s", report["run_time_s"], ", ".join(p.name for p in moved))
    if not seg_files:
        log.warning("no selected series produced a SEG (no spleen found); only %s was written", REPORT_NAME)
    return RunResult(output_dir=output_dir, seg_files=seg_files, report_path=output_dir / REPORT_NAME,
                     report=report, files=moved)
