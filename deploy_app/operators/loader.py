"""DICOM loader that tells the user what went wrong and handles blank UIDs on purpose.

Why not the SDK's ``DICOMDataLoaderOperator`` as is: an empty UID makes it log "Error parsing SOP Instance" and
drop the file, so a real export with blank Study/Series/SOP Instance UIDs loads as *nothing* and the app later
fails with "Missing expected input"; an empty SeriesNumber crashes it (``int(None)``); files that are truncated
or not DICOM raise arbitrary exceptions or vanish with a warning; an empty folder and a folder without DICOM give
the same unclear error.

UID policy (documented in the README, "Deployment"):

* blank SOP Instance / SOP Class UID: taken from the file meta (MediaStorageSOPInstanceUID/ClassUID), which
  is the same object's identity, so nothing is invented;
* blank Study or Series Instance UID: refused by default, because the SEG must carry the source study's UID
  to be filed with it and must reference the source series. With ``allow_generated_uids`` the app derives a
  deterministic UID (same input, same UID) from the patient/study/series attributes, the same one the data
  preparation derives (:func:`spleenseg.dicom.scan.header_from_dataset`), logs a WARNING and lists it under
  ``generated_uids`` in ``spleen_report.json``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import pydicom

from monai.deploy.core import Fragment, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from deploy_app.handoff import GENERATED_UIDS
from spleenseg.dicom.decode import check_decodable, read_file
from spleenseg.dicom.header_checks import repair_optional, unusable_reason
from spleenseg.dicom.scan import header_from_dataset, list_files
from spleenseg.dicom.volume import detached_copy
from spleenseg.errors import InputError

log = logging.getLogger(__name__)

#: Keywords that identify a study/series; a blank value is refused unless UIDs may be generated.


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def read_instance(path: str) -> pydicom.Dataset | None:
    """Full dataset of an image file, or ``None`` with a warning saying why the file is skipped.

    Read like the converter reads (:func:`spleenseg.dicom.decode.read_file`: files without the DICOM preamble
    too); an unreadable file is skipped, a missing pixel decoder for a readable one is fatal.
    """
    try:
        ds = read_file(path)
    except InputError as exc:  # any parser error means "skip this file", reported by name
        log.warning("%s; skipped", exc)
        return None
    if "PixelData" not in ds:
        log.info("%s: skipped, no pixel data (SOP class %s)", path, _uid(ds, "SOPClassUID") or "?")
        return None
    reason = unusable_reason(ds)
    if reason is not None:
        log.warning("%s: skipped, %s", path, reason)
        ds.skip_reason = reason
        return ds
    check_decodable(ds, path)  # a missing JPEG 2000/JPEG-LS decoder is fatal, with the package to install
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) \
            * int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1)
        if len(ds.PixelData) < expected:
            log.warning("%s: skipped, truncated pixel data (%d of %d bytes)", path, len(ds.PixelData), expected)
            return None
    return ds


def fill_instance_uids(ds: pydicom.Dataset, path: str) -> bool:
    """Copy blank SOP Instance/Class UIDs from the file meta; ``False`` if the file has no identity at all."""
    meta = getattr(ds, "file_meta", pydicom.Dataset())
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not _uid(ds, keyword):
            if not _uid(meta, meta_keyword):
                log.warning("%s: skipped, blank %s and no %s in the file meta", path, keyword, meta_keyword)
                return False
            setattr(ds, keyword, _uid(meta, meta_keyword))
    return True


def fill_study_series_uids(datasets: list[pydicom.Dataset], allow_generated: bool) -> dict[str, str]:
    """Handle blank Study/Series Instance UIDs per the module's policy; return {generated UID: keyword}."""
    blank = [ds for ds in datasets if not _uid(ds, "StudyInstanceUID") or not _uid(ds, "SeriesInstanceUID")]
    if not blank:
        return {}
    example = getattr(blank[0], "filename", "?")
    missing = sorted({k for ds in blank for k in ("StudyInstanceUID", "SeriesInstanceUID") if not _uid(ds, k)})
    if not allow_generated:
        raise InputError(
            f"{example}: {' and '.join(missing)} blank in {len(blank)} of {len(datasets)} file(s). A DICOM SEG must "
            f"carry the source study's UID to be filed with it, so the app does not invent one silently. Fix the "
            f"export, or rerun with --generate-missing-uids to write the SEG under a generated, deterministic UID")
    generated: dict[str, str] = {}  # generated UID -> keyword
    counts: dict[str, int] = defaultdict(int)
    for ds in blank:
        header = header_from_dataset(ds, getattr(ds, "filename", ""))  # the UIDs prepare_data derives, too
        for keyword, uid in (("StudyInstanceUID", header.study_uid), ("SeriesInstanceUID", header.series_uid)):
            if not _uid(ds, keyword):
                setattr(ds, keyword, uid)
                generated[uid] = keyword
                counts[uid] += 1
    for uid, keyword in generated.items():
        log.warning("GENERATED %s %s for %d file(s) where it was blank (e.g. %s): the SEG will NOT be filed "
                    "with the original study", keyword, uid, counts[uid], example)
    return generated


class CheckedDICOMDataLoaderOperator(DICOMDataLoaderOperator):
    """SDK loader with clear errors for empty/non-DICOM input, skipped corrupt files and a blank-UID policy.

    Reuses the SDK's ``DICOMStudy``/``DICOMSeries`` model and its study/series attribute population; only the
    file reading and grouping (``_load_data``) are replaced. A second output, ``generated_uids`` (generated
    UID -> keyword), tells the pipeline which UIDs it made up (see the module doc).
    """

    def __init__(self, fragment: Fragment, *args, allow_generated_uids: bool = False, **kwargs) -> None:
        self._allow_generated_uids = allow_generated_uids
        self._generated: dict[str, str] = {}
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        super().setup(spec)
        spec.output(GENERATED_UIDS)

    def compute(self, op_input, op_output, context):
        super().compute(op_input, op_output, context)
        op_output.emit(dict(self._generated), GENERATED_UIDS)

    def load_data_to_studies(self, input_path: Path) -> list[DICOMStudy]:
        """Load every image instance below ``input_path``; raise :class:`InputError` when there is none."""
        files = list_files(input_path)
        studies = self._load_data(files)
        if not studies:
            raise InputError(f"{input_path}: no DICOM image files found among {len(files)} file(s) "
                             f"(e.g. {files[0]})")
        return studies

    def populate_series_attributes(self, series: DICOMSeries, sop_instance: pydicom.Dataset) -> None:
        """SDK's version, minus its crash (``int(None)``) on an empty SeriesNumber as in real exports."""
        if "SeriesNumber" in sop_instance and sop_instance.SeriesNumber in (None, ""):
            sop_instance = detached_copy(sop_instance)  # copy.copy would delete it from the instance too
            del sop_instance.SeriesNumber
        super().populate_series_attributes(series, sop_instance)

    def _load_data(self, files: list[str]) -> list[DICOMStudy]:
        datasets = []
        seen: dict[str, str] = {}
        skipped: list[str] = []
        blanked: dict[str, int] = defaultdict(int)
        for path in files:
            ds = read_instance(path)
            if ds is not None and getattr(ds, "skip_reason", None):
                skipped.append(f"{path}: {ds.skip_reason}")
                continue
            if ds is None or not fill_instance_uids(ds, path):
                continue
            for value in repair_optional(ds):  # in memory only: the SEG must not copy an invalid value
                blanked[value] += 1
            if ds.SOPInstanceUID in seen:
                log.warning("%s: skipped, same SOP Instance UID as %s", path, seen[ds.SOPInstanceUID])
                continue
            seen[ds.SOPInstanceUID] = path
            datasets.append(ds)
        for value, count in blanked.items():
            log.warning("%s in %d file(s) is not valid DICOM; left empty in the SEG and the report", value, count)
        if not datasets and skipped:
            raise InputError(f"no usable DICOM image: {len(skipped)} file(s) skipped, e.g. {skipped[0]}")
        self._generated = fill_study_series_uids(datasets, self._allow_generated_uids)
        return self._group(datasets)

    def _group(self, datasets: list[pydicom.Dataset]) -> list[DICOMStudy]:
        studies: dict[str, DICOMStudy] = {}
        series: dict[str, DICOMSeries] = {}
        for ds in datasets:
            study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            if study_uid not in studies:
                studies[study_uid] = DICOMStudy(study_uid)
                self.populate_study_attributes(studies[study_uid], ds)
            if series_uid not in series:
                series[series_uid] = DICOMSeries(series_uid)
                self.populate_series_attributes(series[series_uid], ds)
                studies[study_uid].add_series(series[series_uid])
            series[series_uid].add_sop_instance(ds)
        log.info("loaded %d image instance(s): %d study(ies), %d series", len(datasets), len(studies), len(series))
        return list(studies.values())
