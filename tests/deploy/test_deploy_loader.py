"""The app's DICOM loading: reads what the project's converter reads, leaves the instances it was given alone,
and takes the slice order from the shared volume loader (one geometry check, not two)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from monai.deploy.core import Fragment
from monai.deploy.core.domain.dicom_series import DICOMSeries

from deploy_app.operators.loader import CheckedDICOMDataLoaderOperator
from deploy_app.volume_io import sort_and_load
from spleenseg.dicom.volume import VolumeInfo, detached_copy, load_series_volume
from spleenseg.errors import GeometryError


def _loader() -> CheckedDICOMDataLoaderOperator:
    return CheckedDICOMDataLoaderOperator(Fragment())


def _instances(folder: Path) -> list[pydicom.Dataset]:
    studies = _loader().load_data_to_studies(folder)
    assert len(studies) == 1 and len(studies[0].get_all_series()) == 1
    return [s.get_native_sop_instance() for s in studies[0].get_all_series()[0].get_sop_instances()]


def _without_preamble(paths: list[Path], folder: Path) -> list[Path]:
    """The same slices as old exports write them: no 128-byte preamble, no 'DICM', no file meta (implicit LE)."""
    folder.mkdir(parents=True)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.preamble = None
        del ds.file_meta
        ds.save_as(folder / path.name, enforce_file_format=False, implicit_vr=True, little_endian=True)
        out.append(folder / path.name)
    assert out[0].read_bytes()[128:132] != b"DICM"
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(out[0])  # a plain dcmread refuses it: the loader must not skip such a file
    return out


# --------------------------------------------------------------------------------------------- detached copies
def test_detached_copy_leaves_the_original_alone():
    ds = pydicom.Dataset()
    ds.SeriesNumber, ds.PatientID = None, "P1"
    copy = detached_copy(ds)
    del copy.SeriesNumber
    copy.Modality = "CT"
    assert "SeriesNumber" in ds and "Modality" not in ds and copy.PatientID == "P1"


def test_blank_series_number_stays_in_the_instance(tmp_path, small_series):
    """The SDK crashes on an empty SeriesNumber, so the loader hides it from the SDK, on a copy only."""
    for path in small_series:
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = None
        ds.save_as(path)
    first = pydicom.dcmread(small_series[0])
    _loader().populate_series_attributes(DICOMSeries(str(first.SeriesInstanceUID)), first)
    assert "SeriesNumber" in first
    instances = _instances(tmp_path / "in")
    assert all("SeriesNumber" in ds for ds in instances)


# --------------------------------------------------------------------------------------------- no preamble
def test_slices_without_preamble_load_like_the_normal_series(tmp_path, small_series, caplog):
    old = _without_preamble(small_series, tmp_path / "old")
    with caplog.at_level("WARNING"):
        plain, legacy = _instances(tmp_path / "in"), _instances(tmp_path / "old")
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(legacy) == len(plain) == len(old)
    assert all(str(ds.file_meta.TransferSyntaxUID) == pydicom.uid.ImplicitVRLittleEndian for ds in legacy)
    uid = str(plain[0].SeriesInstanceUID)
    volume, ordered = sort_and_load(plain, uid)
    volume_old, ordered_old = sort_and_load(legacy, uid)
    np.testing.assert_array_equal(volume_old.array, volume.array)
    np.testing.assert_array_equal(volume_old.affine, volume.affine)
    assert [ds.SOPInstanceUID for ds in ordered_old] == [ds.SOPInstanceUID for ds in ordered]


def test_app_segments_a_series_without_preamble(tmp_path, small_series, untrained_bundle):
    import deploy_app

    _without_preamble(small_series, tmp_path / "old")
    result = deploy_app.run(tmp_path / "old", tmp_path / "out", untrained_bundle)
    assert len(result.seg_files) == 1
    seg = pydicom.dcmread(result.seg_files[0])
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert int(seg.NumberOfFrames) == len(small_series)
    assert referenced == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in small_series}


# --------------------------------------------------------------------------------------------- slice order
def _assert_on_slices(volume, ordered, atol_mm):
    for k, ds in enumerate(ordered):
        expected = volume.affine[:3, :] @ np.array([k, 0, 0, 1.0])
        np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), expected, atol=atol_mm)


def test_slice_order_comes_from_the_volume_loader(small_series):
    datasets = [pydicom.dcmread(p) for p in small_series]
    random.Random(0).shuffle(datasets)
    info = VolumeInfo(series="x", n_files=0)
    volume = load_series_volume(datasets, info=info)
    assert sorted(info.slice_sources) == list(range(len(datasets)))
    _assert_on_slices(volume, [datasets[i] for i in info.slice_sources], 1e-3)
    volume_app, ordered = sort_and_load(datasets, str(datasets[0].SeriesInstanceUID))
    np.testing.assert_array_equal(volume_app.affine, volume.affine)
    assert all(a is datasets[i] for a, i in zip(ordered, info.slice_sources, strict=True))


def test_tiny_in_plane_drift_accepted_by_both_loaders(small_series):
    """Positions jitter 0.05 mm in-plane (float noise of some exports): the volume loader accepts the series,
    so the app must too (a stricter 0.01-voxel check of its own would refuse it)."""
    datasets = [pydicom.dcmread(p) for p in small_series]
    for i, ds in enumerate(datasets[1:-1], 1):
        position = [float(v) for v in ds.ImagePositionPatient]
        position[0] += 0.05 if i % 2 else -0.05
        ds.ImagePositionPatient = position
    reference = load_series_volume(datasets)
    volume, ordered = sort_and_load(datasets[::-1], str(datasets[0].SeriesInstanceUID))
    np.testing.assert_array_equal(volume.affine, reference.affine)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert sorted(ds.SOPInstanceUID for ds in ordered) == sorted(ds.SOPInstanceUID for ds in datasets)
    _assert_on_slices(volume, ordered, 0.06)


def test_one_slice_displaced_in_plane_is_refused_by_both_loaders(small_series):
    """One middle slice 3 mm off in plane (a slice of another position spliced in): the first-to-last tilt is
    zero, so only the per-slice check (highdicom's get_series_volume_positions) sees it. Both loaders refuse the
    series with one message instead of building a volume with that slice in the wrong place."""
    datasets = [pydicom.dcmread(p) for p in small_series]
    middle = datasets[len(datasets) // 2]
    position = [float(v) for v in middle.ImagePositionPatient]
    position[1] += 3.0
    middle.ImagePositionPatient = position
    for load in (load_series_volume, lambda ds: sort_and_load(ds, str(ds[0].SeriesInstanceUID))):
        with pytest.raises(GeometryError, match="displaced in its own plane"):
            load(datasets)
