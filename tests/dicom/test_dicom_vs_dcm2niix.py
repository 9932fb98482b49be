"""The converter against dcm2niix and dicom2nifti's ground truths: same voxels, affines within 1e-3 mm.

Every comparison happens after both volumes are put in RAS orientation, so a converter that mirrors left/right,
reverses the slice order or shifts by a slice fails here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spleenseg.dicom import load_series_volume, scan_dicom, to_ras_nifti
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

from testkit.dicom import assert_same_volume, run_dcm2niix

CONVERSION = "conversion"

PHANTOM_FORMS = {
    "plain": dict(),
    "reversed": dict(reverse=True),
    "shuffled_nested": dict(shuffle_names=True, nested=True),
    "unsigned_pixels": dict(pixel_signed=False),
    "feet_first": dict(feet_first=True),
    "oblique": dict(orientation="oblique"),
    "coronal": dict(orientation="coronal"),
    "sagittal": dict(orientation="sagittal"),
}


def _convert_only_series(folder: Path, **kwargs) -> nib.Nifti1Image:
    groups = [g for g in scan_dicom(folder) if g.is_image_volume]
    assert len(groups) == 1, [g.name for g in groups]
    return to_ras_nifti(load_series_volume(groups[0], **kwargs))


@pytest.mark.parametrize("form", sorted(PHANTOM_FORMS))
def test_phantom_series_matches_dcm2niix_and_truth(form: str, tmp_path: Path, dcm2niix: Path) -> None:
    tilt = 15.0 if form == "oblique" else 0.0
    ph = make_phantom(random_spec(11, shape=(40, 36, 12), tilt_deg=tilt))
    write_dicom_series(ph, tmp_path / "dicom", **PHANTOM_FORMS[form])
    ours = _convert_only_series(tmp_path / "dicom")
    refs = run_dcm2niix(dcm2niix, tmp_path / "dicom", tmp_path / "ref")
    assert len(refs) == 1
    assert_same_volume(ours, nib.load(refs[0]))
    # and the truth: the phantom itself (RAS affine) - catches an error dcm2niix and we might share
    assert_same_volume(ours, nib.Nifti1Image(ph.image, ph.affine))
    assert ours.get_data_dtype() == np.int16


def test_real_j2k_ct_blank_uids(shared_data: Path, tmp_path: Path, dcm2niix: Path,
                                caplog: pytest.LogCaptureFixture) -> None:
    src = shared_data / "real_ct" / "ts_abdomen_ct_dicom_j2k"
    with caplog.at_level(logging.WARNING):
        groups = scan_dicom(src)
    assert len(groups) == 1 and len(groups[0].files) == 20
    assert "SeriesInstanceUID" in groups[0].derived_uids
    assert any("blank" in r.message and "derived" in r.message for r in caplog.records)
    ours = to_ras_nifti(load_series_volume(groups[0]))
    assert ours.get_data_dtype() == np.int16
    assert_same_volume(ours, nib.load(run_dcm2niix(dcm2niix, src, tmp_path)[0]))


@pytest.mark.parametrize("index", range(1, 10))
def test_dcm_qa_ts_transfer_syntaxes(index: int, shared_data: Path) -> None:
    """Nine transfer syntaxes (LE/BE, implicit, RLE, JPEG lossless, JPEG-LS, JPEG 2000) of a Siemens mosaic."""
    qa = shared_data / CONVERSION / "dcm_qa_ts"
    ours = to_ras_nifti(load_series_volume([qa / "In" / f"{index}.dcm"]))
    assert_same_volume(ours, nib.load(qa / "Ref" / f"{index}.nii"))


VENDOR_SERIES = [
    "anatomical/001", "anatomical/001_implicit", "ge/anatomical/001", "ge/anatomical/001_implicit",
    "ge/anatomical/001_single_slice", "generic/anatomical/001", "generic/anatomical/001_implicit",
    "generic/anatomical/002_non_isotropic", "generic/compressed/001", "generic/compressed_j2k/001",
    "generic/compressed_jpeg/001", "generic/compressed_jpegls/001", "generic/compressed_rle/001",
    "hitachi/anatomical/001", "hitachi/anatomical/001_implicit", "philips/anatomical/001",
    "philips/anatomical/001_implicit", "philips_enhanced/anatomical/001",
    "philips_enhanced/anatomical/001_implicit", "siemens/anatomical/001", "siemens/anatomical/001_implicit",
    "siemens_multiframe/anatomical/001", "failing/slicecount/001",
]


@pytest.mark.parametrize("series", VENDOR_SERIES)
def test_dicom2nifti_vendor_series_ground_truth(series: str, shared_data: Path) -> None:
    root = shared_data / CONVERSION / "dicom2nifti_tests"
    ours = _convert_only_series(root / series)
    truth = nib.load(root / f"{series}_ground_truth.nii.gz")
    # dicom2nifti stores some vendors' values as float32 after its own rescale: compare values to 1e-4 relative
    a, b = (np.asarray(x.get_fdata()) for x in (nib.as_closest_canonical(ours),
                                                 nib.as_closest_canonical(nib.funcs.squeeze_image(truth))))
    assert a.shape == b.shape
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4), float(np.abs(a - b).max())
    diff = np.abs(nib.as_closest_canonical(ours).affine
                  - nib.as_closest_canonical(nib.funcs.squeeze_image(truth)).affine).max()
    assert diff <= 1e-3


def test_enhanced_ct_and_plain_ct_match_dcm2niix(shared_data: Path, tmp_path: Path, dcm2niix: Path) -> None:
    """pydicom-data: Enhanced (multi-frame) CT and a classic CT slice."""
    for name in ("eCT_Supplemental.dcm", "693_UNCI.dcm"):
        src = tmp_path / name.split(".")[0]
        src.mkdir()
        (src / name).symlink_to(shared_data / CONVERSION / "pydicom_data" / name)
        ours = to_ras_nifti(load_series_volume([src / name]))
        assert_same_volume(ours, nib.load(run_dcm2niix(dcm2niix, src, tmp_path / f"ref_{name}")[0]))


@pytest.mark.parametrize("form", ["plain", "oblique", "feet_first"])
def test_fast_engine_equals_highdicom_get_volume_from_series(form: str, tmp_path: Path) -> None:
    """The default path builds the Volume itself; it must equal highdicom.get_volume_from_series exactly."""
    ph = make_phantom(random_spec(12, shape=(24, 20, 8), tilt_deg=15.0 if form == "oblique" else 0.0))
    write_dicom_series(ph, tmp_path, shuffle_names=True, **PHANTOM_FORMS[form])
    group = scan_dicom(tmp_path)[0]
    fast, reference = (load_series_volume(group, engine=e) for e in ("fast", "highdicom"))
    assert np.allclose(fast.affine, reference.affine, atol=1e-6)
    assert np.array_equal(fast.array, reference.array)


def test_fractional_rescale_is_stored_as_float32(tmp_path: Path, dcm2niix: Path) -> None:
    """Slope 0.5: values are not integers, so float32 (int16 would round them)."""
    import pydicom

    ph = make_phantom(random_spec(13, shape=(24, 20, 6)))
    for path in write_dicom_series(ph, tmp_path / "dicom"):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = "0.5"
        ds.save_as(path)
    ours = _convert_only_series(tmp_path / "dicom")
    assert ours.get_data_dtype() == np.float32
    assert_same_volume(ours, nib.load(run_dcm2niix(dcm2niix, tmp_path / "dicom", tmp_path / "ref")[0]))
    assert np.any(ours.get_fdata() % 1 == 0.5)


def test_datasets_given_by_caller_are_not_modified(shared_data: Path) -> None:
    """The deploy app passes in-memory datasets: blank UIDs are filled in our copies only."""
    import pydicom

    paths = sorted((shared_data / "real_ct" / "ts_abdomen_ct_dicom_j2k").iterdir())[:3]
    datasets = [pydicom.dcmread(p) for p in paths]
    from_datasets = load_series_volume(datasets)
    assert all(ds.SOPClassUID == "" and ds.SeriesInstanceUID == "" for ds in datasets)
    from_files = load_series_volume(paths)
    assert np.array_equal(from_datasets.array, from_files.array)
    assert np.allclose(from_datasets.affine, from_files.affine)


def test_shared_tiny_dicom_series(tiny_dicom_series, tmp_path: Path, dcm2niix: Path) -> None:  # noqa: ANN001
    """The project's standard tiny CT series (tests/conftest.py) converts to its phantom exactly."""
    ph = tiny_dicom_series.phantom
    ours = _convert_only_series(tiny_dicom_series.folder)
    assert_same_volume(ours, nib.Nifti1Image(ph.image, ph.affine))
    assert_same_volume(ours, nib.load(run_dcm2niix(dcm2niix, tiny_dicom_series.folder, tmp_path)[0]))
