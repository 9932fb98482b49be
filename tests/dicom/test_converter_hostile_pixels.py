"""Damaged pixels, headers, outputs, manifests and label files given to ``prepare_data.py to_nifti``, ``group``
and ``dataset``: one clear line naming the file and the problem, exit code 2, no traceback, nothing
half-written, the input unchanged; in ``to_nifti`` one bad series never stops the good ones, and every failure
is listed once at the end.

The command lines run in a subprocess where the exit code matters; a full disk is an ``OSError`` (ENOSPC)
injected in-process at the write layer, and a read-only folder an ``OSError`` (EROFS) injected into the real CLI
(root ignores file modes, so ``chmod`` cannot make one).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from spleenseg.dataset import build_dataset
from spleenseg.dicom.convert import convert_folder, group_folder
from spleenseg.errors import OutputError
from spleenseg.paths import REPO_ROOT
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

PREPARE = str(REPO_ROOT / "scripts" / "prepare_data.py")
SHAPE = (40, 36, 12)  # 40 x 36 pixels, 12 slices: 2880 bytes of 16-bit pixel data per file

#: Runs prepare_data.py with every write at or below argv[1] failing as on a read-only mount (EROFS).
READ_ONLY = """
import errno, os, runpy, sys
root = os.path.abspath(sys.argv.pop(1))
def guard(fn):
    def wrapped(path, *args, **kwargs):
        p = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if p == root or p.startswith(root + os.sep):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return fn(path, *args, **kwargs)
    return wrapped
os.open, os.mkdir, os.rmdir = guard(os.open), guard(os.mkdir), guard(os.rmdir)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _prepare(*args: str, read_only: Path | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", READ_ONLY, str(read_only)] if read_only else [sys.executable]
    return subprocess.run(head + [PREPARE, *args], capture_output=True, text=True, timeout=300)


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without progress bars and INFO lines."""
    lines = [part for line in proc.stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line.strip() and not re.search(r"\d+/\d+ \[|^INFO ", line)]


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One good CT series, alone in its folder."""
    folder = tmp_path_factory.mktemp("good") / "ct"
    write_dicom_series(make_phantom(random_spec(7, shape=SHAPE)), folder)
    return folder


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    """``images/`` and ``labels/`` of two small NIfTI cases, as ``dataset`` takes them."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        ph = make_phantom(random_spec(100 + i, shape=(24, 20, 10)))
        nib.save(nib.Nifti1Image(ph.image, ph.affine), images / f"case_{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(ph.label, ph.affine), labels / f"case_{i:02d}.nii.gz")
    return images, labels


# --------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("where", ["folder", "inside"])
def test_to_nifti_into_a_read_only_folder_is_one_line(tmp_path: Path, good: Path, where: str) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only if where == "folder" else read_only / "nifti"
    proc = _prepare("to_nifti", str(good), str(out), read_only=read_only)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = _errors(proc)
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: ") and "(Read-only file system)" in lines[0], \
        "\n".join(lines)
    assert not any(read_only.iterdir())


def test_group_into_an_empty_read_only_folder_is_one_line(tmp_path: Path, good: Path) -> None:
    out = tmp_path / "mount"  # e.g. an empty read-only mount point: the finished layout cannot replace it
    out.mkdir()
    proc = _prepare("group", str(good), str(out), read_only=out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _errors(proc) == [f"error: {out}: cannot replace the output folder (Read-only file system)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mount"]  # the temporary layout is gone


def _disk_full(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def two_good(tmp_path_factory: pytest.TempPathFactory, good: Path) -> Path:
    folder = tmp_path_factory.mktemp("two") / "ct"
    shutil.copytree(good, folder)
    write_dicom_series(make_phantom(random_spec(8, shape=SHAPE)), folder, series_number=3, file_prefix="B")
    return folder


@pytest.mark.parametrize("fails", ["nifti", "sidecar"])
def test_to_nifti_on_a_full_disk_stops_with_one_line_and_no_lone_file(tmp_path: Path, two_good: Path, fails: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while the first NIfTI, or its side-car after it, is written: neither is left, the
    second series is not tried, one line names the file."""
    if fails == "nifti":
        monkeypatch.setattr(nib, "save", _disk_full)
    else:
        monkeypatch.setattr(json, "dump", _disk_full)
    before = _snapshot(two_good)
    out = tmp_path / "nifti"
    with pytest.raises(OutputError) as err:
        convert_folder(two_good, out, workers=1, progress=False)
    message, suffix = str(err.value), "nii.gz" if fails == "nifti" else "json"
    assert "\n" not in message and re.search(rf"^{re.escape(str(out))}/[^/]+\.{suffix}: cannot write \(No space left "
                                             r"on device\); stopped with 0 of 2 series", message), message
    assert err.value.errno == errno.ENOSPC
    assert list(out.rglob("*")) == [] and _snapshot(two_good) == before


def test_group_on_a_full_disk_leaves_no_output(tmp_path: Path, good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copies = []

    def copy_then_fill(src, dst, *args, **kwargs):
        if len(copies) >= 3:
            _disk_full()
        copies.append(dst)
        return real_copy(src, dst, *args, **kwargs)

    real_copy = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", copy_then_fill)
    out = tmp_path / "grouped"
    with pytest.raises(OutputError) as err:
        group_folder(good, out, progress=False)
    assert re.fullmatch(rf"{re.escape(str(out))}/\S+\.dcm: cannot copy \S+ here \(No space left on device\)",
                        str(err.value)), str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the hidden folder it was built in


def test_dataset_on_a_full_disk_leaves_no_output(tmp_path: Path, pairs, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = pairs
    monkeypatch.setattr(shutil, "copyfile", _disk_full)
    out = tmp_path / "ds"
    with pytest.raises(OutputError) as err:
        build_dataset(images, labels, out, progress=False)
    assert re.fullmatch(rf"{re.escape(str(out))}/imagesTr/case_0\d\.nii\.gz: cannot copy \S+ here "
                        r"\(No space left on device\)", str(err.value)), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels"]
