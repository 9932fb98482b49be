"""``spleenseg-prepare to_nifti`` on a folder where one series is damaged: the good series is converted, every
failure is listed at the end in one line each (no traceback), exit code 2, and the input is unchanged."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from spleenseg.phantom import make_phantom, random_spec, write_dicom_series


def _damage(paths, keyword: str, text: str) -> None:
    value = text.encode() + b" " * (len(text) % 2)
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds[tag] = RawDataElement(tag, "DS", len(value), value, 0, False, True)
        ds.save_as(path)


@pytest.mark.parametrize("keyword, text, message", [
    ("RescaleSlope", "abc", "RescaleSlope 'abc' is not a finite non-zero number"),
    ("RescaleSlope", "NaN", "RescaleSlope 'NaN' is not a finite non-zero number"),
    ("PixelSpacing", "0\\0", "is not two positive numbers (mm)"),
])
def test_one_damaged_series_does_not_stop_the_good_one(tmp_path, tiny_dicom_series, keyword, text, message):
    bad = write_dicom_series(make_phantom(random_spec(21, shape=(40, 36, 12))), tiny_dicom_series.folder,
                             series_number=9, file_prefix="BAD")
    _damage(bad, keyword, text)
    before = {p: p.read_bytes() for p in tiny_dicom_series.folder.iterdir()}
    out = tmp_path / "nifti"
    proc = subprocess.run([sys.executable, "-m", "spleenseg.commands.prepare_data", "to_nifti",
                           str(tiny_dicom_series.folder), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "1 of 2 series could not be converted (1 written" in proc.stderr and message in proc.stderr
    [written] = sorted(out.glob("*.nii.gz"))
    data = np.asarray(nib.load(written).dataobj, dtype=np.float32)
    assert np.isfinite(data).all() and data.shape[2] == tiny_dicom_series.phantom.image.shape[2]
    assert {p: p.read_bytes() for p in tiny_dicom_series.folder.iterdir()} == before
