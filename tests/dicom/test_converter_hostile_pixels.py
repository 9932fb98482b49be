"""Damaged pixels, headers, outputs, manifests and label files given to ``spleenseg-prepare to_nifti``, ``group``,
``dataset`` and ``labels``: one clear line naming the file and the problem, exit code 2, no traceback, nothing
half-written, the input unchanged; in ``to_nifti`` one bad series never stops the good ones, and every failure
is listed once at the end.

The command lines run in a subprocess where the exit code matters; a full disk is an ``OSError`` (ENOSPC)
injected in-process at the write layer, and a read-only folder an ``OSError`` (EROFS) injected into the real CLI
(root ignores file modes, so ``chmod`` cannot make one).
"""

from __future__ import annotations

import errno
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from spleenseg.dataset import build_dataset
from spleenseg.dicom.convert import convert_folder, group_folder
from spleenseg.errors import OutputError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

PREPARE = "spleenseg.commands.prepare_data"  # run with -m
SHAPE = (40, 36, 12)  # 40 x 36 pixels, 12 slices: 2880 bytes of 16-bit pixel data per file

#: Runs the prepare_data module with every write at or below argv[1] failing as on a read-only mount (EROFS).
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
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _prepare(*args: str, read_only: Path | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", READ_ONLY, str(read_only)] if read_only else [sys.executable, "-m"]
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


# --------------------------------------------------------------------------------------------- pixels and headers
def _set_raw(paths: list[Path], keyword: str, text: str, vr: str) -> None:
    """Store ``text`` as the element's bytes, bypassing pydicom's validation (as a damaged export would)."""
    value = text.encode() + b" " * (len(text) % 2)
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        ds.save_as(path)


def _edit(paths: list[Path], change) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def _truncate(paths: list[Path]) -> None:
    for path in paths:
        path.write_bytes(path.read_bytes()[:-500])  # the file ends 500 bytes into the last element, PixelData


def _halve_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _bits(n: int):
    def change(ds: pydicom.Dataset) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = n, n, n - 1
    return change


def _huge(ds: pydicom.Dataset) -> None:
    ds.Rows = ds.Columns = 65535  # 4 Gi pixels declared, 2880 bytes stored


#: Damaged series beside one good one: file prefix -> (damage, the line's expected text after "<file>: ").
BAD = {
    "TRUNC": (lambda p: _truncate(p[3:4]), r"pixel data is 2380 bytes but Rows 36 x Columns 40 x 1 frame\(s\) at "
              r"BitsAllocated 16 need 2880; the file is truncated"),
    "SHORT": (lambda p: _edit(p[2:3], _halve_pixels), r"pixel data is 1440 bytes but .* need 2880"),
    "BITSA": (lambda p: _edit(p[2:3], _bits(8)), r"pixel data is 2880 bytes but .* at BitsAllocated 8 describe 1440; "
              r"BitsAllocated, Rows, Columns or NumberOfFrames do not match the data"),
    "BITSB": (lambda p: _edit(p, _bits(32)), r"pixel data is 2880 bytes but .* at BitsAllocated 32 need 5760"),
    "HUGE": (lambda p: _edit(p, _huge), r"Rows 65535 x Columns 65535 x 1 frame\(s\) = 4,294,836,225 pixels, more "
             r"than the limit"),
    "THICK": (lambda p: _set_raw(p, "SliceThickness", "abc", "DS"), r"SliceThickness 'abc' is not a number"),
    "SERNUM": (lambda p: _set_raw(p, "SeriesNumber", "abc", "IS"), r"SeriesNumber 'abc' is not an integer"),
    "NEGSP": (lambda p: _set_raw(p, "PixelSpacing", "-0.7\\0.7", "DS"), r"PixelSpacing '.*' is not two positive"),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, good: Path) -> Path:
    """The good series plus one series per damage of :data:`BAD` (files ``<PREFIX>0001.dcm``...)."""
    folder = tmp_path_factory.mktemp("zoo") / "ct"
    shutil.copytree(good, folder)
    for i, (prefix, (damage, _)) in enumerate(BAD.items()):
        paths = write_dicom_series(make_phantom(random_spec(21 + i, shape=SHAPE)), folder, series_number=10 + i,
                                   file_prefix=prefix, series_uid=generate_uid(entropy_srcs=[prefix]))
        damage(list(paths))
    return folder


@pytest.fixture(scope="module")
def zoo_to_nifti(tmp_path_factory: pytest.TempPathFactory, zoo: Path):
    """``to_nifti`` run once on the zoo: (process, output folder, input before the run)."""
    before = _snapshot(zoo)
    out = tmp_path_factory.mktemp("zoo_out") / "nifti"
    return _prepare("to_nifti", str(zoo), str(out), "--workers", "1"), out, before


@pytest.mark.parametrize("prefix", list(BAD))
def test_each_damaged_series_is_one_line_naming_its_file(zoo_to_nifti, prefix: str) -> None:
    proc, _, _ = zoo_to_nifti
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in _errors(proc) if re.search(rf"/{prefix}\d{{4}}\.dcm", line)]
    assert len(lines) == 1, "\n".join(_errors(proc))  # listed once: not also logged, not repeated
    assert re.search(rf"/{prefix}\d{{4}}\.dcm: {BAD[prefix][1]}", lines[0]), lines[0]


def test_the_good_series_is_converted_and_nothing_else_is_written(zoo_to_nifti, zoo: Path) -> None:
    proc, out, before = zoo_to_nifti
    assert f"error: {len(BAD)} of {len(BAD) + 1} series could not be converted (1 written" in proc.stderr, \
        proc.stderr[-3000:]
    [sidecar, nifti] = sorted(out.iterdir())  # one pair, no temporaries
    assert sidecar.name.endswith(".json") and not sidecar.name.startswith(".") and nifti.name.endswith(".nii.gz")
    assert nib.load(nifti).shape == SHAPE
    assert _snapshot(zoo) == before


def test_group_names_text_header_values_once_and_copies_every_series(tmp_path: Path, zoo: Path) -> None:
    out = tmp_path / "grouped"
    proc = _prepare("group", str(zoo), str(out), "--workers", "1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for prefix in ("THICK", "SERNUM"):
        lines = [line for line in _errors(proc) if f"/{prefix}" in line]
        assert len(lines) == 1 and re.search(rf"/{prefix}\d{{4}}\.dcm: {BAD[prefix][1]}.*to_nifti will refuse",
                                             lines[0]), "\n".join(_errors(proc))
    assert len(json.loads((out / "manifest.json").read_text())["series"]) == len(BAD) + 1


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


# --------------------------------------------------------------------------------------------- manifests
@pytest.fixture
def grouped(tmp_path: Path, good: Path) -> Path:
    out = tmp_path / "grouped"
    group_folder(good, out, progress=False)
    return out


def _garble_bytes(manifest: Path) -> None:
    manifest.write_bytes(b"\xff\xfe" + manifest.read_bytes())


def _edit_series(change):
    def edit(manifest: Path) -> None:
        data = json.loads(manifest.read_text())
        change(data["series"])
        manifest.write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize("damage, message", [
    (_garble_bytes, "unreadable manifest ('utf-8' codec can't decode"),
    (_edit_series(lambda s: s[0].update(rows="abc")), "malformed manifest (series '"),
    (_edit_series(lambda s: s[0].update(files="IM0001.dcm")), "files is 'IM0001.dcm', expected list[str]"),
    (_edit_series(lambda s: s.append(dict(s[0]))), "appears twice"),
], ids=["not-utf8", "text-rows", "files-string", "duplicate-name"])
def test_malformed_manifest_is_one_line_and_nothing_is_written(tmp_path: Path, grouped: Path, damage,
                                                               message: str) -> None:
    damage(grouped / "manifest.json")
    out = tmp_path / "nifti"
    proc = _prepare("to_nifti", str(grouped), str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = _errors(proc)
    assert len(lines) == 1 and lines[0].startswith(f"error: {grouped / 'manifest.json'}: ") and message in lines[0], \
        "\n".join(lines)
    assert not out.exists()


# --------------------------------------------------------------------------------------------- label files
def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(3000))


def _cut_gzip(path: Path) -> None:
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data, compresslevel=0)[:-400])  # the header reads, the voxels end early


@pytest.mark.parametrize("damage, message", [
    (_random_bytes, "not a readable NIfTI label (File "),
    (_cut_gzip, "cannot read the voxels of this NIfTI label (EOFError"),
], ids=["random-bytes", "cut-gzip"])
def test_dataset_with_a_broken_label_file_is_one_line(tmp_path: Path, pairs, damage, message: str) -> None:
    images, labels = pairs
    bad = labels / "case_01.nii.gz"
    damage(bad)
    before = _snapshot(tmp_path)
    out = tmp_path / "ds"
    proc = _prepare("dataset", str(images), str(labels), str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = _errors(proc)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: {message}"), "\n".join(lines)
    assert _snapshot(tmp_path) == before  # nothing written, input unchanged


def test_labels_with_a_random_bytes_nrrd_is_one_line(tmp_path: Path, pairs) -> None:
    images, _ = pairs
    label = tmp_path / "label.nrrd"
    _random_bytes(label)
    out = tmp_path / "aligned.nii.gz"
    proc = _prepare("labels", str(label), str(images / "case_00.nii.gz"), str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = _errors(proc)
    assert len(lines) == 1 and lines[0].startswith(f"error: {label}: not a readable NRRD label map"), "\n".join(lines)
    assert not out.exists()
