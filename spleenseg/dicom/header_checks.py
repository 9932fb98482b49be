"""Header values that would crash, mislead or poison later steps, checked once per image instance.

Why one place: the app (and its SEG writer, which copies study attributes into the SEG) and the converter read the
same headers, and hostile or damaged exports break them in the same ways: text or NaN rescale slopes, zero pixel
spacing, UIDs that are path names, anonymised dates such as ``00000000``.

Two kinds of finding:

* :func:`unusable_reason` names a value that makes the pixels meaningless (the instance must be skipped);
* :func:`repair_optional` blanks, in memory only, optional values that are not valid (a date, a SeriesNumber, a
  SliceThickness), and says which, so a SEG can still be written without copying an invalid value into it;
* :func:`not_a_number_reason` names a SliceThickness or SeriesNumber that is text: the converter, which records
  both in its side-car and names its outputs by the series number, refuses such a series (see there).
"""

from __future__ import annotations

import math
import re

import pydicom
from pydicom.valuerep import DA

#: What a DICOM UID may hold (PS3.5 9.1): digits and dots, at most 64 characters.
_UID = re.compile(r"[0-9.]{1,64}")
#: Dates copied into a SEG: an invalid one (e.g. the anonymisation value 00000000) is blanked, not copied.
DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate")


def _raw(ds: pydicom.Dataset, keyword: str) -> str | None:
    """The stored text of an element, without pydicom's value conversion (which raises on bad text)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    elem = ds.get_item(tag)
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return None if value is None else str(value).strip()


def _numbers(text: str | None) -> list[float] | None:
    if text is None or text == "":
        return None
    try:
        return [float(v) for v in text.strip("[]").replace(",", "\\").split("\\") if v.strip() != ""]
    except ValueError:
        return []


def unusable_reason(ds: pydicom.Dataset, check_uids: bool = True) -> str | None:
    """Why this image instance cannot be used as CT pixels, or ``None``.

    ``check_uids``: also refuse UIDs that are not digits and dots (a SEG that references them is invalid; the
    converter, which writes no DICOM, only uses them through sanitised file names).
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if check_uids else ():
        uid = _raw(ds, keyword)
        if uid and not _UID.fullmatch(uid):
            return f"{keyword} '{uid[:80]}' is not a valid DICOM UID (digits and dots, at most 64 characters)"
    for keyword, nonzero in (("RescaleSlope", True), ("RescaleIntercept", False)):
        values = _numbers(_raw(ds, keyword))
        if values is None:
            continue
        if len(values) != 1 or not math.isfinite(values[0]) or (nonzero and values[0] == 0):
            need = "a finite non-zero number" if nonzero else "a finite number"
            return f"{keyword} '{_raw(ds, keyword)}' is not {need}"
    spacing = _numbers(_raw(ds, "PixelSpacing"))
    if spacing is not None and (len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing)):
        return f"PixelSpacing '{_raw(ds, 'PixelSpacing')}' is not two positive numbers (mm)"
    return None


def not_a_number_reason(ds: pydicom.Dataset) -> str | None:
    """A SliceThickness or SeriesNumber that is present but not a number, or ``None``.

    Why refuse (the converter) rather than blank (the app, :func:`repair_optional`): the converter's outputs
    are training data named by the series number and described by their side-car; text in a numeric field
    means a damaged or hand-edited header, and a series silently named ``nonum`` with no slice thickness would
    hide that. The app only copies these values into a SEG, so it drops them and keeps going.
    """
    thickness = _raw(ds, "SliceThickness")
    values = _numbers(thickness)
    if values is not None and (len(values) != 1 or not math.isfinite(values[0])):
        return f"SliceThickness '{str(thickness)[:80]}' is not a number (mm)"
    number = _raw(ds, "SeriesNumber")
    if number and not re.fullmatch(r"[+-]?\d{1,12}", number):
        return f"SeriesNumber '{number[:80]}' is not an integer"
    return None


def repair_optional(ds: pydicom.Dataset) -> list[str]:
    """Blank invalid optional values in the in-memory dataset (never the file); return what was blanked."""
    fixed = []
    for keyword in DATE_KEYWORDS:
        text = _raw(ds, keyword)
        if text:
            try:
                DA(text, validation_mode=pydicom.config.RAISE)
            except ValueError:
                setattr(ds, keyword, "")
                fixed.append(f"{keyword} {text!r}")
    number = _raw(ds, "SeriesNumber")
    if number and not re.fullmatch(r"[+-]?\d{1,12}", number):
        del ds.SeriesNumber
        fixed.append(f"SeriesNumber {number!r}")
    thickness = _raw(ds, "SliceThickness")
    values = _numbers(thickness)
    if values is not None and (len(values) != 1 or not math.isfinite(values[0])):
        ds.SliceThickness = ""  # kept, empty: highdicom copies the element into the SEG's pixel measures
        fixed.append(f"SliceThickness {thickness!r}")
    return fixed
