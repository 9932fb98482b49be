"""An output folder on a file system that is full or read-only: ``python -m deploy_app`` ends with one line naming
the file and the system's reason, exit code 2, no traceback, and nothing left in the output folder.

The file systems are real: a tmpfs of a few kilobytes (or mounted read-only) in a private mount namespace
(``unshare --user --map-root-user --mount``), so every write of the app meets the kernel's own ENOSPC/EROFS.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spleenseg.paths import REPO_ROOT

#: Printed by the shell inside the namespace after the app: what the output file system holds then.
LEFT = "left in output:"


def _run_on_tmpfs(out: Path, mount_options: str, app_args: list[str]) -> subprocess.CompletedProcess:
    """Mount a tmpfs on ``out`` (private to the command), run the app into it, then list what it holds."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    out.mkdir()
    app = shlex.join([sys.executable, "-m", "deploy_app", "-o", str(out), *app_args])
    script = (f"mount -t tmpfs -o {mount_options} tmpfs {shlex.quote(str(out))} || exit 99; {app}; rc=$?; "
              f"echo {LEFT} $(ls -A {shlex.quote(str(out))}) >&2; exit $rc")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    if proc.returncode == 99 or "unshare: " in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    return proc


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("size, extra, fails", [("8k", [], "SEG_"), ("64k", ["--stl"], "spleen_")])
def test_full_disk_is_one_line_naming_the_file(tmp_path, small_series, untrained_bundle, size, extra, fails):
    """8 KiB hold the staging folder but not the SEG; 64 KiB hold the SEG but not the STL surface after it."""
    before = {p: p.read_bytes() for p in small_series}
    out = tmp_path / "out"
    proc = _run_on_tmpfs(out, f"size={size}", ["-i", str(tmp_path / "in"), "-m", str(untrained_bundle), *extra])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = _error_lines(proc)
    assert line.startswith(f"error: {out}/{fails}") and "cannot write (No space left on device" in line, line
    assert proc.stderr.strip().splitlines()[-1] == LEFT  # nothing, not even the hidden staging folder
    assert proc.stdout == ""
    assert {p: p.read_bytes() for p in small_series} == before


def test_read_only_output_folder_is_one_line(tmp_path, small_series, untrained_bundle):
    out = tmp_path / "out"
    proc = _run_on_tmpfs(out, "ro", ["-i", str(tmp_path / "in"), "-m", str(untrained_bundle)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _error_lines(proc) == [f"error: {out}: output folder is not writable (Read-only file system)"]
    assert proc.stderr.strip().splitlines()[-1] == LEFT
