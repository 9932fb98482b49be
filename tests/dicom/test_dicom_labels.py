"""Label sources → label maps aligned voxel for voxel with their image, checked in patient coordinates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from testkit.dicom import assert_same_volume

from spleenseg.dicom import load_series_volume, read_seg_labels, scan_dicom, to_ras_nifti
from spleenseg.dicom.convert import labels_to_nifti
from spleenseg.dicom.seg import resample_label_to_image
from spleenseg.errors import GeometryError, InputError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series, write_seg

SEGS = Path("seg") / "dcmqi" / "data" / "segmentations"


def test_dcmqi_liver_seg_gives_exactly_the_nrrd(shared_data: Path, tmp_path: Path) -> None:
    """dcmqi made liver.dcm from liver_seg.nrrd on ct-3slice: our SEG reading must give back those voxels."""
    root = shared_data / SEGS
    out = tmp_path / "liver.nii.gz"
    result = subprocess.run([sys.executable, "-m", "spleenseg.commands.prepare_data", "labels",
                             str(root / "liver.dcm"), str(root / "ct-3slice"), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ours = nib.load(out)
    data, header = nrrd.read(str(root / "liver_seg.nrrd"))
    assert header["space"] == "left-posterior-superior"
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.asarray(header["space directions"]).T
    affine_lps[:3, 3] = header["space origin"]
    truth = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)
    assert_same_volume(ours, truth)
    assert int(np.asarray(ours.dataobj).sum()) == int(data.sum()) > 0
    # and the label sits on the image grid the converter writes for ct-3slice
    image = to_ras_nifti(load_series_volume(scan_dicom(root / "ct-3slice")[0]))
    assert ours.shape == image.shape and np.allclose(ours.affine, image.affine, atol=1e-4)


@pytest.mark.parametrize("form", [dict(), dict(reverse=True, shuffle_names=True), dict(orientation="coronal")])
def test_phantom_seg_lands_on_the_phantom_label(form: dict, tmp_path: Path) -> None:
    ph = make_phantom(random_spec(21, shape=(32, 28, 14)))
    paths = write_dicom_series(ph, tmp_path / "ct", **form)
    write_seg(ph, paths, tmp_path / "seg.dcm")
    group = scan_dicom(tmp_path / "ct")[0]
    volume = load_series_volume(group)
    labels = to_ras_nifti(read_seg_labels(tmp_path / "seg.dcm", volume, group.series_uid), dtype=np.uint8)
    assert_same_volume(labels, nib.Nifti1Image(ph.label, ph.affine))
    assert ph.label.sum() > 0


def test_seg_of_another_series_is_refused(tmp_path: Path) -> None:
    ph = make_phantom(random_spec(22, shape=(24, 20, 8)))
    paths = write_dicom_series(ph, tmp_path / "ct")
    write_seg(ph, paths, tmp_path / "seg.dcm")
    other = write_dicom_series(ph, tmp_path / "other", series_number=9)
    group = scan_dicom(tmp_path / "other")[0]
    with pytest.raises(InputError, match="references series"):
        read_seg_labels(tmp_path / "seg.dcm", load_series_volume(other), group.series_uid)


def test_label_in_another_grid_is_resampled_exactly(tmp_path: Path) -> None:
    """A label stored cropped and with a flipped axis (different affine) comes back on the image grid."""
    ph = make_phantom(random_spec(23, shape=(32, 28, 14)))
    image = nib.Nifti1Image(ph.image, ph.affine)
    flip_j = np.eye(4)
    flip_j[1, 1], flip_j[1, 3] = -1.0, ph.label.shape[1] - 1  # j' = n - 1 - j: mirrored array, same world
    mirrored = nib.Nifti1Image(ph.label[:, ::-1].copy(), ph.affine @ flip_j)
    crop = mirrored.slicer[2:30, :, 1:]  # and another origin and shape
    back = resample_label_to_image(crop, image)
    expected = ph.label.copy()
    expected[:2], expected[30:], expected[:, :, :1] = 0, 0, 0
    assert np.array_equal(np.asarray(back.dataobj), expected) and np.allclose(back.affine, image.affine)
    # written through the CLI path as well
    nib.save(crop, tmp_path / "label.nii.gz")
    nib.save(image, tmp_path / "image.nii.gz")
    labels_to_nifti(tmp_path / "label.nii.gz", tmp_path / "image.nii.gz", tmp_path / "out.nii.gz")
    assert np.array_equal(np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj), expected)


def test_label_elsewhere_in_space_is_an_error() -> None:
    ph = make_phantom(random_spec(24, shape=(24, 20, 8)))
    shifted = ph.affine.copy()
    shifted[0, 3] += 500.0  # half a metre to the side: not the same patient space
    with pytest.raises(GeometryError, match="do not cover the same space"):
        resample_label_to_image(nib.Nifti1Image(ph.label, shifted), nib.Nifti1Image(ph.image, ph.affine))


def _write_nrrd(path: Path, space: str | None) -> None:
    """A 6x5x4 label map, one labelled voxel at index (4, 1, 2), oblique-free but with unequal spacing."""
    data = np.zeros((6, 5, 4), np.uint8)
    data[4, 1, 2] = 1
    header = {"space directions": np.diag([0.8, 0.9, 2.5]), "space origin": np.array([-10.0, 20.0, 30.0])}
    if space is not None:
        header["space"] = space
    nrrd.write(str(path), data, header)


@pytest.mark.parametrize("space, sign", [("left-posterior-superior", -1.0), ("right-anterior-superior", 1.0)])
def test_nrrd_label_lands_where_its_header_puts_it_in_the_patient(tmp_path: Path, space: str, sign: float) -> None:
    """A NRRD label voxel in LPS (or RAS) space: the NIfTI we make from it puts that voxel at the same point of
    the patient, in RAS (x and y change sign for LPS, z does not)."""
    from spleenseg.dicom.seg import load_label_image

    _write_nrrd(tmp_path / "label.nrrd", space)
    img = load_label_image(tmp_path / "label.nrrd")
    ijk = np.argwhere(np.asarray(img.dataobj) > 0)
    assert ijk.tolist() == [[4, 1, 2]]
    in_space = np.array([-10.0 + 4 * 0.8, 20.0 + 1 * 0.9, 30.0 + 2 * 2.5])  # the point in the file's own space
    expected_ras = in_space * np.array([sign, sign, 1.0])
    np.testing.assert_allclose(nib.affines.apply_affine(img.affine, ijk[0]), expected_ras, atol=1e-6)


@pytest.mark.parametrize("space", [None, "scanner-xyz"])
def test_nrrd_label_without_a_patient_space_is_refused(tmp_path: Path, space: str | None) -> None:
    from spleenseg.dicom.seg import load_label_image

    _write_nrrd(tmp_path / "label.nrrd", space)
    with pytest.raises(InputError, match=r"label\.nrrd: NRRD space .* is not LPS or RAS"):
        load_label_image(tmp_path / "label.nrrd")
