"""Outputs respect the umask: a dataset shared with a group must not come out 0600 / 0700.

``mkstemp``/``mkdtemp`` create private files and folders whatever the umask; every write-then-rename helper
gives its temporary the mode a plain ``open()``/``mkdir()`` would have had. Checked through the real command
lines under umask 002 (group-writable), where the private modes would show.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spleenseg.atomic import atomic_dir, atomic_file
from spleenseg.paths import REPO_ROOT

PREPARE = [sys.executable, "-m", "spleenseg.commands.prepare_data"]


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``root`` (``root`` itself included)."""
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _under_umask(cmd: list[str], mask: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lambda: os.umask(mask), cwd=REPO_ROOT)


def _expect(root: Path, mask: int) -> None:
    wrong = {p: oct(m) for p, m in _modes(root).items()
             if m != ((0o777 if (root.parent / p).is_dir() else 0o666) & ~mask)}
    assert not wrong, f"modes not from umask {oct(mask)}: {wrong}"


def test_group_and_to_nifti_outputs_follow_the_umask(tmp_path: Path, tiny_dicom_series) -> None:
    for f in tiny_dicom_series.paths:
        f.chmod(0o444)  # a read-only export: its copies must still get the umask's mode
    grouped = tmp_path / "grouped"
    done = _under_umask([*PREPARE, "group", str(tiny_dicom_series.folder), str(grouped), "--workers", "1"], 0o002)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(grouped.rglob("*.dcm"))) == len(tiny_dicom_series.paths)
    _expect(grouped, 0o002)
    nifti = tmp_path / "nifti"
    done = _under_umask([*PREPARE, "to_nifti", str(tiny_dicom_series.folder), str(nifti), "--workers", "1"], 0o002)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(nifti.glob("*.nii.gz")) and list(nifti.glob("*.json"))
    _expect(nifti, 0o002)


def test_dataset_build_follows_the_umask(tmp_path: Path, tiny_phantom) -> None:
    from spleenseg.phantom import write_nifti

    for i in range(3):
        write_nifti(tiny_phantom, tmp_path / "img" / f"c{i}.nii.gz", tmp_path / "lab" / f"c{i}.nii.gz")
    out = tmp_path / "ds"
    done = _under_umask([*PREPARE, "dataset", str(tmp_path / "img"), str(tmp_path / "lab"), str(out)], 0o027)
    assert done.returncode == 0, done.stderr[-2000:]
    _expect(out, 0o027)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_helpers_give_umask_modes(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        with atomic_file(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "x.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask
