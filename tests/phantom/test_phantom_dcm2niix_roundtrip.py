"""The DICOM a phantom writes, converted by the real dcm2niix, lands voxel for voxel on the phantom's NIfTI.

dcm2niix is the independent reference: it reads our ImagePositionPatient/ImageOrientationPatient/PixelSpacing and
its own slice sorting. Agreement in world coordinates (affine within 1e-3 mm, identical voxels after bringing both
to the closest canonical orientation) proves the DICOM and NIfTI writers describe the same patient geometry.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spleenseg.paths import REPO_ROOT
from spleenseg.phantom import (
    make_phantom,
    random_spec,
    write_dicom_series,
    write_dicom_study,
    write_nifti,
)

DCM2NIIX = REPO_ROOT / ".venv" / "bin" / "dcm2niix"


def dcm2niix(folder: Path, out: Path, name: str = "%i_%s", extra: tuple[str, ...] = ()) -> list[Path]:
    """Run the real dcm2niix on ``folder``; return the NIfTI files it wrote."""
    assert DCM2NIIX.exists(), f"dcm2niix not installed at {DCM2NIIX} (pip package dcm2niix)"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(DCM2NIIX), "-z", "y", "-b", "n", "-f", name, *extra, "-o", str(out), str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(out.glob("*.nii.gz"))


def assert_same_world(reference: Path, converted: Path) -> None:
    """Same grid in world coordinates and the same voxel values."""
    a = nib.as_closest_canonical(nib.load(reference))
    b = nib.as_closest_canonical(nib.load(converted))
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))


FORMS = {  # name: (random_spec options, write_dicom_series options)
    "plain": ({}, {}),
    "reversed_shuffled": ({}, dict(reverse=True, shuffle_names=True)),
    "nested_unsigned": ({}, dict(nested=True, pixel_signed=False)),
    "feet_first": ({}, dict(feet_first=True)),
    "coronal_stack": ({}, dict(orientation="coronal")),
    "thickness_twice_spacing": (dict(spacing=(7.0, 7.5, 2.5), thickness=5.0), dict(reverse=True)),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_dicom_forms_match_nifti(tmp_path: Path, form: str) -> None:
    spec_options, write_options = FORMS[form]
    ph = make_phantom(random_spec(11, shape=(48, 40, 20), **spec_options))
    write_nifti(ph, tmp_path / "ref.nii.gz")
    write_dicom_series(ph, tmp_path / "dcm", **write_options)
    outs = dcm2niix(tmp_path / "dcm", tmp_path / "out")
    assert len(outs) == 1, outs
    assert_same_world(tmp_path / "ref.nii.gz", outs[0])


def test_oblique_series_matches_nifti(tmp_path: Path) -> None:
    """A slice plane tilted 17 degrees about LR: IOP is not axis-aligned, positions still agree."""
    ph = make_phantom(random_spec(12, shape=(40, 40, 16), tilt_deg=17.0))
    assert abs(ph.affine[2, 1]) > 0.1  # really oblique
    write_nifti(ph, tmp_path / "ref.nii.gz")
    write_dicom_series(ph, tmp_path / "dcm", orientation="oblique", reverse=True)
    outs = dcm2niix(tmp_path / "dcm", tmp_path / "out")
    assert len(outs) == 1, outs
    assert_same_world(tmp_path / "ref.nii.gz", outs[0])


def test_two_patients_with_junk_in_one_folder(tmp_path: Path) -> None:
    """Two studies, each with scout, secondary capture and SEG, in one flat folder: each CT converts to its own
    NIfTI (dcm2niix -i y ignores the localizer and derived objects)."""
    folder = tmp_path / "export"
    refs = {}
    for seed, pid in ((21, "PA"), (22, "PB")):
        ph = make_phantom(random_spec(seed, shape=(40, 36, 12)))
        write_dicom_study(ph, folder, patient_id=pid, shuffle_names=True)
        write_nifti(ph, tmp_path / f"{pid}.nii.gz")
        refs[pid] = tmp_path / f"{pid}.nii.gz"
    outs = dcm2niix(folder, tmp_path / "out", name="%i_%s", extra=("-i", "y"))
    ct = {p.name.split("_")[0]: p for p in outs if p.name.endswith("_2.nii.gz")}
    assert sorted(ct) == ["PA", "PB"], [p.name for p in outs]
    for pid, ref in refs.items():
        assert_same_world(ref, ct[pid])
