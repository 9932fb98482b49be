"""Same seed, same bytes (NIfTI, DICOM, cohort); the MSD-style cohort is readable as the bundle will read it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from spleenseg.phantom import PhantomSpec, make_cohort, make_phantom, random_spec, write_dicom_series, write_nifti


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for run in ("a", "b"):
        ph = make_phantom(random_spec(8, shape=(40, 36, 12)))
        write_nifti(ph, tmp_path / run / "img.nii.gz", tmp_path / run / "lbl.nii.gz")
        write_dicom_series(ph, tmp_path / run / "dcm", shuffle_names=True)
    for rel in ("img.nii.gz", "lbl.nii.gz"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    a_files = sorted((tmp_path / "a" / "dcm").iterdir())
    assert [p.name for p in a_files] == sorted(p.name for p in (tmp_path / "b" / "dcm").iterdir())
    for p in a_files:
        assert p.read_bytes() == (tmp_path / "b" / "dcm" / p.name).read_bytes()
    other = make_phantom(random_spec(9, shape=(40, 36, 12)))
    assert not np.array_equal(other.image, nib.load(tmp_path / "a" / "img.nii.gz").get_fdata())


def test_spec_round_trips_through_json() -> None:
    spec = random_spec(13, shape=(32, 32, 16), phase="native", tilt_deg=5.0)
    again = PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert random_spec(13, shape=(32, 32, 16), phase="native", tilt_deg=5.0) == spec


def test_cohort_is_deterministic(tmp_path: Path) -> None:
    for run in ("a", "b"):
        make_cohort(tmp_path / run, n_cases=2, seed=3, size=(24, 30), n_test=1, workers=2, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 2 + 2 + 1
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_tiny_cohort_layout(tiny_cohort: Path) -> None:
    meta = json.loads((tiny_cohort / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "spleen"} and meta["modality"] == {"0": "CT"}
    train, val = meta["training"], meta["validation"]
    assert len(train) == 5 and len(val) == 1 and meta["numTraining"] == 6
    assert not {e["image"] for e in train} & {e["image"] for e in val}
    assert len(meta["test"]) == 1 and (tiny_cohort / meta["test"][0]).exists()
    for entry in train + val:
        img, lbl = nib.load(tiny_cohort / entry["image"]), nib.load(tiny_cohort / entry["label"])
        assert img.get_data_dtype() == np.int16 and lbl.get_data_dtype() == np.uint8
        assert img.shape == lbl.shape == (64, 64, 64)
        np.testing.assert_allclose(img.affine, lbl.affine)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # columns run to the patient's left, like DICOM
        assert set(np.unique(np.asarray(lbl.dataobj))) == {0, 1}
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        spec = PhantomSpec.from_dict(meta["cases"][case]["spec"])
        np.testing.assert_allclose(make_phantom(spec).affine, img.affine, atol=1e-5)


def _uids(path: Path) -> tuple[str, str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID


def test_phantoms_sharing_a_seed_but_not_their_parameters_share_no_uid(tmp_path: Path) -> None:
    """A PACS keeps the first copy of a UID: two different phantoms must never share one."""
    small = write_dicom_series(make_phantom(random_spec(1, shape=(40, 36, 12))), tmp_path / "small")
    native = write_dicom_series(make_phantom(random_spec(1, shape=(40, 36, 12), phase="native")),
                                tmp_path / "native")
    small_again = write_dicom_series(make_phantom(random_spec(1, shape=(40, 36, 12))), tmp_path / "again")
    assert _uids(small[0]) == _uids(small_again[0])  # same phantom, same UIDs
    for a, b in zip(small, native):
        assert not set(_uids(a)) & set(_uids(b))
