"""DICOM objects are valid (dciodvfy, the DICOM standard's own validator) and carry coherent identities; the SEG
lands on the label in patient coordinates."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from testkit.dicom_checks import dciodvfy_errors
from spleenseg.errors import InputError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series, write_dicom_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[Path]], object]:
    ph = make_phantom(random_spec(5, shape=(48, 40, 14), phase="portal"))
    folder = tmp_path_factory.mktemp("study")
    return write_dicom_study(ph, folder, pixel_signed=False, reverse=True), ph


@pytest.mark.parametrize("kind", ["ct", "scout", "other", "seg"])
def test_dciodvfy_clean(study, kind: str) -> None:
    files, _ = study
    assert dciodvfy_errors(files[kind][0], warnings=True) == []


def test_ct_identities_and_values(study) -> None:
    files, ph = study
    dss = [pydicom.dcmread(p) for p in files["ct"]]
    assert [int(d.InstanceNumber) for d in dss] == list(range(1, len(dss) + 1))
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "SeriesNumber"):
        assert len({str(getattr(d, tag)) for d in dss}) == 1, tag
    d0 = dss[0]
    assert d0.Modality == "CT" and list(d0.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert d0.SOPClassUID == pydicom.uid.CTImageStorage and d0.PixelRepresentation == 0
    assert float(d0.RescaleIntercept) == -1024.0 and d0.ContrastBolusAgent
    # reverse=True: instance 1 is the most inferior slice, and its pixels are that slice's HU
    z = [float(d.ImagePositionPatient[2]) for d in dss]
    assert z == sorted(z)
    hu = pydicom.pixels.apply_modality_lut(d0.pixel_array, d0)
    np.testing.assert_array_equal(hu, ph.image[:, :, 0].T)
    scout = pydicom.dcmread(files["scout"][0])
    assert "LOCALIZER" in scout.ImageType and scout.Modality == "CT"
    assert scout.StudyInstanceUID == d0.StudyInstanceUID and scout.SeriesInstanceUID != d0.SeriesInstanceUID
    assert pydicom.dcmread(files["other"][0]).Modality == "OT"


def test_seg_lands_on_label_in_patient_coordinates(study) -> None:
    """highdicom reads the SEG back as a volume with its own affine; every segmented voxel, mapped through
    world coordinates into the phantom grid, is spleen, and nearly all spleen voxels are covered."""
    files, ph = study
    seg = hd.seg.segread(files["seg"][0])
    assert seg.SegmentSequence[0].SegmentLabel == "Spleen"
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(p).SOPInstanceUID for p in files["ct"]}
    vol = seg.get_volume(combine_segments=True)
    arr = np.asarray(vol.array)
    ijk_seg = np.argwhere(arr > 0)
    world = vol.affine[:3, :3] @ ijk_seg.T + vol.affine[:3, 3:4]  # highdicom affines are LPS
    inv = np.linalg.inv(ph.affine_lps)
    ijk = np.rint(inv[:3, :3] @ world + inv[:3, 3:4]).astype(int)
    assert ph.label[ijk[0], ijk[1], ijk[2]].all()
    assert len(ijk_seg) == int(ph.label.sum())


def test_signed_pixels_keep_negative_hu(tmp_path: Path) -> None:
    ph = make_phantom(random_spec(6, shape=(32, 32, 4)))
    ds = pydicom.dcmread(write_dicom_series(ph, tmp_path)[0])
    assert ds.PixelRepresentation == 1 and float(ds.RescaleIntercept) == 0.0
    assert ds.pixel_array.min() == ph.image[:, :, -1].min() < -900  # instance 1 = most superior slice


def test_never_overwrites_existing_files(tmp_path: Path) -> None:
    ph = make_phantom(random_spec(6, shape=(24, 24, 3)))
    first = write_dicom_series(ph, tmp_path)
    before = [p.read_bytes() for p in first]
    other = make_phantom(random_spec(7, shape=(24, 24, 3)))
    with pytest.raises(InputError, match="already exists"):
        write_dicom_series(other, tmp_path)
    assert [p.read_bytes() for p in first] == before
    assert sorted(tmp_path.iterdir()) == sorted(first)  # nothing half-written beside them


def test_shared_fixtures_are_consistent(tiny_phantom, tiny_dicom_series) -> None:
    """The conftest fixtures other areas use: the tiny series holds the tiny phantom, spleen fully inside."""
    assert tiny_phantom.image.shape == (64, 64, 32) and tiny_phantom.spec.phase == "portal"
    assert 80 < tiny_phantom.spleen_ml < 600 and not tiny_phantom.label[:, :, [0, -1]].any()
    ph, paths = tiny_dicom_series.phantom, tiny_dicom_series.paths
    assert len(paths) == 32 and all(p.parent == tiny_dicom_series.folder for p in paths)
    first = pydicom.dcmread(paths[0])
    np.testing.assert_array_equal(first.pixel_array, ph.image[:, :, -1].T)  # instance 1 = top slice (HFS)
