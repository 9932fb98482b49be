"""Scanning and grouping: mixed folders, junk, duplicates, splits, chunks, the `group` layout, untouched input."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from testkit.dicom import assert_same_volume

from spleenseg.dicom import load_series_volume, scan_dicom, to_ras_nifti
from spleenseg.dicom.convert import convert_folder, group_folder
from spleenseg.errors import InputError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series, write_dicom_study

SHAPE = (24, 20, 10)
PREPARE = [sys.executable, "-m", "spleenseg.commands.prepare_data"]


def _tree_digest(root: Path) -> dict[str, tuple[str, float]]:
    return {str(p.relative_to(root)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Two patients (CT + scout + secondary capture + SEG each), a text file, a duplicate copy of a slice."""
    root = tmp_path / "incoming"
    for seed in (1, 2):
        write_dicom_study(make_phantom(random_spec(seed, shape=SHAPE)), root / f"p{seed}", shuffle_names=True)
    (root / "README.txt").write_text("not dicom")
    (root / "p1" / "empty_dir").mkdir()
    ct = sorted((root / "p2").glob("[0-9a-f]*"))[0]
    shutil.copy(ct, root / "copy_of_a_slice")
    return root


def test_scan_groups_mixed_folder(mixed_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        groups = scan_dicom(mixed_folder)
    messages = " ".join(r.message for r in caplog.records)
    assert "README.txt: not a DICOM file" in messages
    assert "duplicate SOP Instance UID" in messages
    ct = [g for g in groups if g.modality == "CT" and len(g.files) > 1]
    assert len(ct) == 2 and {len(g.files) for g in ct} == {SHAPE[2]}
    assert {g.patient_id for g in ct} == {g.patient_id for g in groups}  # everything belongs to the 2 patients
    assert sorted(g.modality for g in groups) == sorted(["CT", "CT", "CT", "CT", "OT", "OT", "SEG", "SEG"])
    assert not any(g.is_image_volume for g in groups if g.modality == "SEG")
    for g in ct:  # files sorted by position along the normal, not by (shuffled) file name
        proj = [float(np.dot(np.cross(g.orientation[:3], g.orientation[3:]),
                             pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient)) for f in g.files]
        assert np.all(np.diff(proj) > 0) and np.allclose(proj, g.slice_positions, atol=1e-3)
    assert [g.name for g in scan_dicom(mixed_folder)] == [g.name for g in groups]  # deterministic names


def test_one_series_uid_split_by_orientation_and_acquisition(tmp_path: Path) -> None:
    ph = make_phantom(random_spec(4, shape=SHAPE))
    write_dicom_series(ph, tmp_path / "a", series_uid="1.2.3.4", orientation="axial")
    write_dicom_series(ph, tmp_path / "b", series_uid="1.2.3.4", orientation="coronal")
    groups = scan_dicom(tmp_path)
    assert len(groups) == 2 and all(g.split_reason == "orientation/size" for g in groups)
    # a repeated scan stored under the same UID: same positions, acquisition 2
    for path in write_dicom_series(ph, tmp_path / "c", series_uid="1.2.3.4", series_number=2):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = 2
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(path)])
        ds.save_as(path)
    groups = scan_dicom(tmp_path)
    repeats = [g for g in groups if "acquisition_number" in g.split_reason]
    assert len(groups) == 3 and sorted(g.acquisition_number for g in repeats) == [1, 2]
    assert all(len(g.files) == SHAPE[2] and g.split_reason == "orientation/size+acquisition_number" for g in repeats)


def test_slices_per_group_chunks_are_valid_subvolumes(tmp_path: Path) -> None:
    ph = make_phantom(random_spec(6, shape=(24, 20, 12)))
    write_dicom_series(ph, tmp_path, reverse=True)
    chunks = scan_dicom(tmp_path, slices_per_group=5)
    assert [len(c.files) for c in chunks] == [5, 5, 2]
    full = to_ras_nifti(load_series_volume(scan_dicom(tmp_path)[0]))
    for c, start in zip(chunks, (0, 5, 10)):
        part = to_ras_nifti(load_series_volume(c))
        expected = full.slicer[:, :, start:start + len(c.files)]
        assert_same_volume(part, expected)


def test_group_layout_manifest_and_untouched_input(mixed_folder: Path, tmp_path: Path) -> None:
    before = _tree_digest(mixed_folder)
    out = tmp_path / "grouped"
    result = subprocess.run(PREPARE + ["group", str(mixed_folder), str(out), "--workers", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _tree_digest(mixed_folder) == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["series"]) == 8
    for entry in manifest["series"]:
        folder = out / entry["folder"]
        assert len(entry["folder"].split("/")) == 3 and folder.is_dir()
        assert sorted(str(p.relative_to(out)) for p in folder.iterdir()) == sorted(entry["files"])
        for key in ("patient_id", "study_uid", "series_uid", "series_description", "modality", "image_type",
                    "orientation", "slice_count", "pixel_spacing"):
            assert key in entry
    # the grouped folder converts to the same volumes as the original
    written = convert_folder(out, tmp_path / "nifti", modality="CT", progress=False)
    assert len(written) == 2  # 2 CT volumes; the scouts are skipped
    again = subprocess.run(PREPARE + ["group", str(mixed_folder), str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_group_link_makes_hard_links(mixed_folder: Path, tmp_path: Path) -> None:
    groups = group_folder(mixed_folder, tmp_path / "linked", link=True, progress=False)
    manifest = json.loads((tmp_path / "linked" / "manifest.json").read_text())
    entry = manifest["series"][0]
    src, dst = Path(entry["source_files"][0]), tmp_path / "linked" / entry["files"][0]
    assert os.path.samefile(src, dst) and len(groups) == 8


@pytest.mark.parametrize("content", ["empty", "junk_only", "missing"])
def test_bad_input_folder_clear_error(content: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    if content != "missing":
        src.mkdir()
    if content == "junk_only":
        (src / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=str(src)):
        scan_dicom(src)
    result = subprocess.run(PREPARE + ["to_nifti", str(src), str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and str(src) in result.stderr and not (tmp_path / "out").exists()


def test_files_without_preamble_or_file_meta_are_read(tmp_path: Path) -> None:
    """Old exports write bare datasets (no 'DICM' preamble, no file meta): still DICOM, still one volume."""
    ph = make_phantom(random_spec(5, shape=(16, 16, 4)))
    for path in write_dicom_series(ph, tmp_path / "bare"):
        ds = pydicom.dcmread(path)
        ds.preamble = None
        del ds.file_meta
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
    (tmp_path / "bare" / "notes.txt").write_text("0008,0060 CT")  # junk that merely mentions a tag
    groups = scan_dicom(tmp_path / "bare")
    assert len(groups) == 1 and len(groups[0].files) == 4
    ours = to_ras_nifti(load_series_volume(groups[0]))
    assert_same_volume(ours, nib.Nifti1Image(ph.image, ph.affine))
