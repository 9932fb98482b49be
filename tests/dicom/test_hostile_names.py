"""Names built from file content never lead outside OUT: hostile UIDs, descriptions and patient IDs in the DICOM
headers (``spleenseg-prepare group``) and hostile entries in a ``manifest.json`` (``spleenseg-prepare to_nifti``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest


PREPARE = [sys.executable, "-m", "spleenseg.commands.prepare_data"]


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(PREPARE + list(args), capture_output=True, text=True, timeout=300)


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _poison(paths: list[Path], escape: str) -> None:
    """Every instance gets a SOP Instance UID that climbs out of any folder, a NUL byte and >255 characters
    in its neighbours' UIDs, and path syntax in the description and patient ID."""
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        uid = {0: escape, 1: "1.2.3\x00.4", 2: "9" * 300}.get(i, f"{'../' * 3}x{i}")
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesDescription = "../../etc/passwd"
        ds.PatientID = "/root/../../evil"
        ds.save_as(path)


def test_hostile_header_values_stay_inside_out(tmp_path, tiny_dicom_series):
    target = tmp_path / "pwned"
    _poison(tiny_dicom_series.paths, "../" * 30 + str(target).lstrip("/"))
    before = {p: p.read_bytes() for p in tiny_dicom_series.paths}
    out = tmp_path / "work" / "out"
    proc = _prepare("group", str(tiny_dicom_series.folder), str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("pwned*"))
    written = _files_under(tmp_path) - set(before)
    assert written and all(out.resolve() in p.resolve().parents for p in written), sorted(written)
    manifest = json.loads((out / "manifest.json").read_text())
    files = [f for s in manifest["series"] for f in s["files"]]
    assert len(files) == len(before) and all(len(Path(f).name) < 100 and "\x00" not in f for f in files)
    assert {p: p.read_bytes() for p in tiny_dicom_series.paths} == before  # the input is untouched


@pytest.mark.parametrize("field, value", [("name", "../../../../x"), ("name", "/tmp/x"),
                                          ("files", ["../../../../etc/hostname"])])
def test_hostile_manifest_entry_is_one_clear_error(tmp_path, tiny_dicom_series, field, value):
    grouped = tmp_path / "grouped"
    assert _prepare("group", str(tiny_dicom_series.folder), str(grouped)).returncode == 0
    manifest = json.loads((grouped / "manifest.json").read_text())
    manifest["series"][0][field] = value
    (grouped / "manifest.json").write_text(json.dumps(manifest))
    proc = _prepare("to_nifti", str(grouped), str(tmp_path / "nifti"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "manifest.json" in line]
    assert lines, proc.stderr[-2000:]
    assert not (tmp_path / "x").exists() and not Path("/tmp/x.nii.gz").exists()
    assert not (tmp_path / "nifti").exists() or not any((tmp_path / "nifti").iterdir())


def test_malformed_manifest_is_one_clear_error(tmp_path, tiny_dicom_series):
    grouped = tmp_path / "grouped"
    assert _prepare("group", str(tiny_dicom_series.folder), str(grouped)).returncode == 0
    (grouped / "manifest.json").write_text(json.dumps({"series": [{"name": "a"}]}))
    proc = _prepare("to_nifti", str(grouped), str(tmp_path / "nifti"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "manifest.json: malformed manifest" in proc.stderr


@pytest.mark.parametrize("command", ["to_nifti", "dataset"])
@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_the_input_folder_is_refused(tmp_path, tiny_dicom_series, command, where):
    if command == "to_nifti":
        src = tiny_dicom_series.folder
        args = [str(src)]
    else:  # an MSD-style images/labels pair of folders
        src = tmp_path / "images"
        assert _prepare("to_nifti", str(tiny_dicom_series.folder), str(src)).returncode == 0
        args = [str(src), str(src)]
    out = src if where == "same" else src / "out"
    before = {p: p.read_bytes() for p in _files_under(src)}
    proc = _prepare(command, *args, str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "output folder must not be inside the input folder" in proc.stderr and "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in _files_under(src)} == before and not (src / "out").exists()
