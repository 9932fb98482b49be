"""Hostile or damaged header values in real DICOM files: one clear line and exit 2 where the pixels cannot be
trusted, a valid SEG where only an optional value is invalid (anonymised dates, a text SeriesNumber). The input
files are never changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

import deploy_app
from testkit.deploy import dciodvfy_errors
from spleenseg.errors import InputError
from spleenseg.paths import REPO_ROOT


def _set_raw(paths: list[Path], keyword: str, vr: str, text: str) -> None:
    """Store ``text`` as the element's bytes, as a damaged export would (pydicom would refuse the value)."""
    value = text.encode()
    value += b" " * (len(value) % 2)
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        ds.save_as(path)


@pytest.mark.parametrize("keyword, vr, text, message", [
    ("RescaleSlope", "DS", "abc", "RescaleSlope 'abc' is not a finite non-zero number"),
    ("RescaleSlope", "DS", "NaN", "RescaleSlope 'NaN' is not a finite non-zero number"),
    ("RescaleSlope", "DS", "0", "RescaleSlope '0' is not a finite non-zero number"),
    ("RescaleIntercept", "DS", "inf", "RescaleIntercept 'inf' is not a finite number"),
    ("PixelSpacing", "DS", "0\\0", "PixelSpacing '0\\0' is not two positive numbers (mm)"),
    ("PixelSpacing", "DS", "-0.7\\0.7", "is not two positive numbers"),
    ("SeriesInstanceUID", "UI", "1.2.3/../4", "SeriesInstanceUID '1.2.3/../4' is not a valid DICOM UID"),
])
def test_untrustworthy_pixels_are_one_clear_error(tmp_path, small_series, fast_bundle, keyword, vr, text, message):
    _set_raw(small_series, keyword, vr, text)
    before = {p: p.read_bytes() for p in small_series}
    with pytest.raises(InputError, match="no usable DICOM image: 24 file") as err:
        deploy_app.run(tmp_path / "in", tmp_path / "out", fast_bundle)
    assert message in str(err.value) and str(small_series[0]) in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert {p: p.read_bytes() for p in small_series} == before


def test_the_command_line_says_it_in_one_line_with_exit_2(tmp_path, small_series, fast_bundle):
    _set_raw(small_series, "RescaleSlope", "DS", "NaN")
    proc = subprocess.run([sys.executable, "-m", "deploy_app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                           "-m", str(fast_bundle)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no usable DICOM image: 24 file(s) skipped, e.g. ")


@pytest.mark.parametrize("keyword, vr, text", [("StudyDate", "DA", "00000000"), ("PatientBirthDate", "DA", "00000000"),
                                               ("SeriesNumber", "IS", "x1"), ("SliceThickness", "DS", "abc"),
                                               ("SliceThickness", "DS", "1,5")])
def test_invalid_optional_values_are_left_empty_in_a_valid_seg(tmp_path, small_series, trained_bundle, keyword, vr,
                                                               text, caplog):
    _set_raw(small_series, keyword, vr, text)
    result = deploy_app.run(tmp_path / "in", tmp_path / "out", trained_bundle)
    assert f"{keyword} '{text}' in 24 file(s) is not valid DICOM; left empty" in caplog.text
    [seg_path] = result.seg_files
    seg = pydicom.dcmread(seg_path)
    if keyword == "SeriesNumber":  # the SEG numbers itself; without a source number it takes the offset alone
        assert int(seg.SeriesNumber) == 1000
    elif keyword == "SliceThickness":  # the SEG's pixel measures take the slice spacing (4 mm) instead
        measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert float(measures.SliceThickness) == pytest.approx(4.0)
        assert [float(v) for v in measures.PixelSpacing] == [3.0, 3.0]
    else:
        assert str(seg.get(keyword, "") or "") == ""
    assert dciodvfy_errors(seg_path) == []
    assert result.report["series"][0]["slices"] == 24


def test_selector_ranks_a_text_slice_thickness_as_unknown(tmp_path, small_series):
    """The selector alone (the loader blanks such values first): a series whose SliceThickness is text ranks
    after one of the same slice count with a real thickness, instead of stopping the run."""
    from monai.deploy.core.domain.dicom_series import DICOMSeries

    from deploy_app.operators.selector import RankedSeriesSelectorOperator

    _set_raw(small_series, "SliceThickness", "DS", "1,5")
    damaged, numeric = DICOMSeries("1.2.3.1"), DICOMSeries("1.2.3.2")
    for path in small_series:
        damaged.add_sop_instance(pydicom.dcmread(path))
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "5"
        numeric.add_sop_instance(ds)
    rank = RankedSeriesSelectorOperator._rank
    assert rank(damaged)[:2] == (-24, float("inf"))
    assert rank(numeric)[:2] == (-24, 5.0)
    assert min([damaged, numeric], key=rank) is numeric
