"""Series that are not one regular volume: a clear error naming the series and problem, or with ``resample``
a volume that is right in patient coordinates. Never a silently wrong one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from testkit.dicom import assert_same_volume, run_dcm2niix, sample_onto

from spleenseg.dicom import load_series_volume, scan_dicom, to_ras_nifti
from spleenseg.errors import GeometryError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

FAILING = Path("conversion") / "dicom2nifti_tests" / "failing"


@pytest.mark.parametrize("case, problem", [
    ("gantrytilting/001", "gantry tilt: slices are stacked 14.00 degrees"),
    ("sliceincrement/001", "uneven slice spacing: steps from 5.000 to 10.000 mm"),
    ("sliceincrement/002", "gantry tilt"),
])
def test_failing_series_give_clear_error(case: str, problem: str, shared_data: Path) -> None:
    group = scan_dicom(shared_data / FAILING / case)[0]
    with pytest.raises(GeometryError) as err:
        load_series_volume(group)
    message = str(err.value)
    assert problem in message and group.name in message and "--resample" in message
    assert str(shared_data / FAILING / case) in message  # names the folder holding the files


@pytest.mark.parametrize("case", ["gantrytilting/001", "sliceincrement/002"])
def test_tilt_resampled_matches_dcm2niix_tilt_correction(case: str, shared_data: Path, tmp_path: Path,
                                                         dcm2niix: Path) -> None:
    """dcm2niix writes a tilt-corrected ``_Tilt_`` volume: ours agrees with it in world coordinates."""
    src = shared_data / FAILING / case
    ours = to_ras_nifti(load_series_volume(scan_dicom(src)[0], resample=True))
    ref = nib.load([p for p in run_dcm2niix(dcm2niix, src, tmp_path) if "_Tilt" in p.name][0])
    theirs = sample_onto(ref, ours)
    inside = ~np.isnan(theirs)
    assert inside.mean() > 0.7
    diff = np.abs(theirs - ours.get_fdata())[inside]
    assert np.median(diff) < 1.0 and np.corrcoef(theirs[inside], ours.get_fdata()[inside])[0, 1] > 0.9999


@pytest.mark.parametrize("src", ["conversion/ct_uneven_spacing", str(FAILING / "sliceincrement/001")])
def test_uneven_spacing_error_or_exact_resample(src: str, shared_data: Path) -> None:
    """Resampling keeps every original slice exactly where it was and interpolates the gaps linearly."""
    group = scan_dicom(shared_data / src)[0]
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        load_series_volume(group)
    resampled = to_ras_nifti(load_series_volume(group, resample=True))
    zooms = resampled.header.get_zooms()
    steps = np.diff(group.slice_positions) / zooms[2]
    assert np.allclose(steps, np.round(steps), atol=1e-3)  # every original slice falls on the uniform grid
    for path in group.files:
        single = to_ras_nifti(load_series_volume([path]))
        ijk = np.linalg.inv(resampled.affine) @ single.affine @ np.array([0.0, 0.0, 0.0, 1.0])
        assert np.allclose(ijk[:3], np.round(ijk[:3]), atol=1e-3), ijk  # lands on a voxel centre
        i, j, k = np.round(ijk[:3]).astype(int)
        assert (i, j) == (0, 0)
        assert np.array_equal(resampled.get_fdata()[..., k], single.get_fdata()[..., 0]), path


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    ph = make_phantom(random_spec(5, shape=(24, 24, 6)))
    paths = write_dicom_series(ph, tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.ImagePositionPatient = pydicom.dcmread(paths[2]).ImagePositionPatient
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.AcquisitionNumber = 1
    ds.save_as(paths[1])
    with pytest.raises(GeometryError, match="duplicate slice position"):
        load_series_volume(paths)


def test_notavolume_becomes_single_slices(shared_data: Path, tmp_path: Path, dcm2niix: Path) -> None:
    """Four images at one position, four acquisitions: four single-slice volumes, each as dcm2niix's frames."""
    src = shared_data / FAILING / "notavolume/001"
    groups = scan_dicom(src)
    assert len(groups) == 4 and all(g.split_reason == "acquisition_number" for g in groups)
    ref = nib.load(run_dcm2niix(dcm2niix, src, tmp_path)[0])
    frames = [np.asarray(ref.dataobj)[..., 0, t] for t in range(ref.shape[-1])]
    matched = set()
    for g in groups:
        ours = to_ras_nifti(load_series_volume(g))
        hits = [t for t, f in enumerate(frames) if _same(ours, nib.Nifti1Image(f[..., None], ref.affine))]
        assert hits, f"{g.name} matches none of dcm2niix's frames"
        matched.update(hits)
    assert len(matched) == 4


def _same(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    try:
        assert_same_volume(a, b)
        return True
    except AssertionError:
        return False


def test_cli_error_exit_code_and_no_output(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "nifti"
    cmd = [sys.executable, "-m", "spleenseg.commands.prepare_data", "to_nifti",
           str(shared_data / "conversion" / "ct_uneven_spacing"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "uneven slice spacing" in result.stderr and "--resample" in result.stderr
    assert not out.exists() or not any(out.iterdir())
    result = subprocess.run(cmd + ["--resample"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 1 and written[0].with_name(written[0].name[:-7] + ".json").is_file()
