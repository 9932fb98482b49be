"""Scan a folder of DICOM files (headers only) and group the instances into series.

Why this exists: folders from a PACS export mix patients, studies, series, scouts and junk. Grouping by file
name or by fixed-size chunks of files silently mixes series. Here every instance is keyed by
Patient / Study / Series Instance UID and then split where one series UID holds several orientations, image
sizes or (when positions repeat) acquisitions, so that each :class:`SeriesGroup` is one candidate volume.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom
from highdicom.spatial import get_normal_vector
from pydicom.uid import generate_uid
from tqdm import tqdm

from spleenseg.dicom.decode import read_file
from spleenseg.dicom.header_checks import not_a_number_reason
from spleenseg.errors import InputError

log = logging.getLogger(__name__)

#: Decimals kept when comparing direction cosines / spacings: below this, two values are "the same".
ORIENTATION_DECIMALS = 4
#: Two slices closer than this along the normal (mm) sit at the same position.
POSITION_TOL_MM = 1e-3

#: The only attributes ``group`` reads (plus the file meta): reading less makes scanning big exports faster.
_HEADER_TAGS: list = [
    "SOPClassUID", "SOPInstanceUID", "PatientID", "PatientName", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyDescription", "AccessionNumber", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription", "Modality", "ImageType", "AcquisitionNumber", "ImageOrientationPatient",
    "ImagePositionPatient", "Rows", "Columns", "PixelSpacing", "NumberOfFrames", "FrameOfReferenceUID",
    "SliceThickness", "InstanceNumber", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "BodyPartExamined", "EchoNumbers", "TemporalPositionIdentifier", "SpecificCharacterSet",
    0x0019100A,  # Siemens NumberOfImagesInMosaic
]

#: Modalities that are never image volumes (SEG is read with :mod:`spleenseg.dicom.seg`).
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}


@dataclass
class InstanceHeader:
    """What grouping needs from one file's header (no pixel data is read)."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_description: str
    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    image_type: list[str]
    acquisition_number: int | None
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    number_of_frames: int
    frame_of_reference_uid: str
    slice_thickness: float | None
    instance_number: int | None
    transfer_syntax: str
    echo_number: int | None = None
    temporal_position: int | None = None
    is_mosaic: bool = False
    derived: list[str] = field(default_factory=list)  # attributes that were blank and had to be derived
    problem: str = ""  # a numeric header value that is text (see header_checks.not_a_number_reason)


@dataclass
class SeriesGroup:
    """One candidate volume: instances of one series that share orientation, size and acquisition.

    ``files`` are sorted by the projection of ImagePositionPatient on the slice normal (ascending), never by
    file name or InstanceNumber. ``name`` is deterministic (same input, same name) and safe as a file name.
    """

    patient_id: str
    study_uid: str
    series_uid: str
    name: str
    patient_dir: str
    study_dir: str
    series_dir: str
    files: list[str]
    sop_instance_uids: list[str]
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    study_description: str = ""
    study_date: str = ""
    image_type: list[str] = field(default_factory=list)
    acquisition_number: int | None = None
    orientation: list[float] | None = None
    rows: int = 0
    columns: int = 0
    pixel_spacing: list[float] | None = None
    slice_positions: list[float] = field(default_factory=list)  # projections on the normal, mm, ascending
    number_of_frames: int = 1
    is_mosaic: bool = False
    frame_of_reference_uid: str = ""
    slice_thickness: float | None = None
    transfer_syntaxes: list[str] = field(default_factory=list)
    derived_uids: list[str] = field(default_factory=list)
    split_reason: str = ""  # why this group is a part of a bigger series UID (orientation/size/acquisition/chunk)
    header_problems: list[str] = field(default_factory=list)  # "<file>: <value> is not a number", per file

    @property
    def is_image_volume(self) -> bool:
        """True when the group has the geometry attributes a volume needs."""
        return (self.modality.upper() not in NON_IMAGE_MODALITIES and self.orientation is not None
                and self.rows > 0 and self.pixel_spacing is not None)

    @property
    def slice_count(self) -> int:
        """Number of slices: files for single-frame series, frames for an Enhanced (multi-frame) object."""
        if self.is_mosaic:
            return 0  # known only after unpacking
        return self.number_of_frames if len(self.files) == 1 else len(self.files)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description used by ``manifest.json``."""
        out = asdict(self)
        out["slice_count"] = self.slice_count
        out["is_image_volume"] = self.is_image_volume
        if self.slice_positions and len(self.slice_positions) > 1:
            out["spacing_between_slices"] = float(np.median(np.diff(self.slice_positions)))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SeriesGroup":
        """Inverse of :meth:`to_dict` (extra keys are ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------------------------- header reading
def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int_or_none(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = ds.get(keyword, None)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(ds: pydicom.Dataset, keyword: str) -> float | None:
    """A numeric value, or ``None`` when absent, empty or not a number (text is reported, not a crash)."""
    value = ds.get(keyword, None)
    try:
        number = None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _plane_from_functional_groups(ds: pydicom.Dataset) -> tuple[Any, Any, Any]:
    """Orientation, first-frame position and pixel spacing of an Enhanced (multi-frame) object."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [None])[0]

    def find(seq_kw: str, attr: str) -> Any:
        for group in (shared, per_frame):
            if group is not None and seq_kw in group and len(group[seq_kw].value):
                item = group[seq_kw][0]
                if attr in item:
                    return item.get(attr)
        return None

    return (
        find("PlaneOrientationSequence", "ImageOrientationPatient"),
        find("PlanePositionSequence", "ImagePositionPatient"),
        find("PixelMeasuresSequence", "PixelSpacing"),
    )


def _read_dataset_header(path: str) -> pydicom.Dataset | None:
    """Header of a DICOM file, or ``None`` when the file is not DICOM (no pixel data is read); files without
    the preamble are read as :func:`spleenseg.dicom.decode.read_file` reads them."""
    try:
        return read_file(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InputError:
        return None


def header_from_dataset(ds: pydicom.Dataset, path: str = "") -> InstanceHeader:
    """Extract an :class:`InstanceHeader` from an (already read) dataset; blank UIDs are derived, see below."""
    meta = getattr(ds, "file_meta", None) or pydicom.Dataset()
    orientation = _floats(ds.get("ImageOrientationPatient"))
    position = _floats(ds.get("ImagePositionPatient"))
    spacing = _floats(ds.get("PixelSpacing"))
    frames = _int_or_none(ds, "NumberOfFrames") or 1
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        fg_orient, fg_pos, fg_spacing = _plane_from_functional_groups(ds)
        orientation = orientation or _floats(fg_orient)
        position = position or _floats(fg_pos)
        spacing = spacing or _floats(fg_spacing)
    header = InstanceHeader(
        path=str(path),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        study_uid=_text(ds, "StudyInstanceUID"),
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        series_number=_int_or_none(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality"),
        image_type=[str(v) for v in (ds.get("ImageType") or [])],
        acquisition_number=_int_or_none(ds, "AcquisitionNumber"),
        orientation=orientation if orientation and len(orientation) == 6 else None,
        position=position if position and len(position) == 3 else None,  # type: ignore[arg-type]
        rows=_int_or_none(ds, "Rows") or 0,
        columns=_int_or_none(ds, "Columns") or 0,
        pixel_spacing=spacing if spacing and len(spacing) == 2 else None,  # type: ignore[arg-type]
        number_of_frames=frames,
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        slice_thickness=_float_or_none(ds, "SliceThickness"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")),
        echo_number=_int_or_none(ds, "EchoNumbers"),
        temporal_position=_int_or_none(ds, "TemporalPositionIdentifier"),
        is_mosaic=is_mosaic(ds),
        problem=not_a_number_reason(ds) or "",
    )
    _derive_blank_uids(header, meta)
    return header


def is_localizer(ds_or_image_type: pydicom.Dataset | Sequence[str] | str | None) -> bool:
    """Scout/localizer: ImageType (of a dataset, or the values themselves) holds LOCALIZER (any case/padding).

    A projection, not a slice of a volume: the selector, the deploy app and ``convert`` leave it out.
    """
    value = (ds_or_image_type.get("ImageType") if isinstance(ds_or_image_type, pydicom.Dataset)
             else ds_or_image_type)
    if value is None:
        return False
    values = [value] if isinstance(value, str) else value
    return "LOCALIZER" in [str(v).strip().upper() for v in values]


def is_mosaic(ds: pydicom.Dataset) -> bool:
    """Siemens MR mosaic: many slices tiled in one frame (unpacked with nibabel in :mod:`.volume`)."""
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])] and (0x0019, 0x100A) in ds


def _derive_blank_uids(h: InstanceHeader, meta: pydicom.Dataset) -> None:
    """Fill blank UIDs so badly anonymised exports still group sensibly (and record that we did).

    SOP Class/Instance UIDs come from the file meta (Media Storage SOP ...). Study and Series UIDs are derived
    deterministically (``2.25.<hash>``) from attributes that stay constant within a study / series, so the
    same input always gives the same groups and names.
    """
    if not h.sop_instance_uid and meta.get("MediaStorageSOPInstanceUID"):
        h.sop_instance_uid = str(meta.MediaStorageSOPInstanceUID)
        h.derived.append("SOPInstanceUID")
    if not h.sop_class_uid and meta.get("MediaStorageSOPClassUID"):
        h.sop_class_uid = str(meta.MediaStorageSOPClassUID)
        h.derived.append("SOPClassUID")
    if not h.sop_instance_uid:  # nothing to go on: one instance per file, never a "duplicate"
        h.sop_instance_uid = generate_uid(entropy_srcs=["file", os.path.abspath(h.path)])
        h.derived.append("SOPInstanceUID")
    if not h.study_uid:
        h.study_uid = generate_uid(
            entropy_srcs=["study", h.patient_id, h.patient_name, h.study_date, h.study_description,
                          h.frame_of_reference_uid])
        h.derived.append("StudyInstanceUID")
    if not h.series_uid:
        h.series_uid = generate_uid(
            entropy_srcs=["series", h.study_uid, h.frame_of_reference_uid, str(h.series_number),
                          h.series_description, h.modality, "\\".join(h.image_type)])
        h.derived.append("SeriesInstanceUID")


def read_header(path: str) -> InstanceHeader | None:
    """Header of one file, or ``None`` (not DICOM, or no SOP Instance UID at all)."""
    ds = _read_dataset_header(path)
    if ds is None:
        return None
    return header_from_dataset(ds, path)


# --------------------------------------------------------------------------------------------- grouping
def _slug(text: str, max_len: int = 40) -> str:
    """File-name-safe version of a DICOM string (deterministic)."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")
    return slug[:max_len]


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _split_key(h: InstanceHeader) -> tuple:
    orient = tuple(np.round(h.orientation, ORIENTATION_DECIMALS)) if h.orientation else None
    spacing = tuple(np.round(h.pixel_spacing, ORIENTATION_DECIMALS)) if h.pixel_spacing else None
    multiframe = h.sop_instance_uid if h.number_of_frames > 1 or h.is_mosaic else ""
    return (orient, h.rows, h.columns, spacing, multiframe)


def _projection(h: InstanceHeader) -> float:
    if h.orientation is None or h.position is None:
        return float(h.instance_number or 0)
    return float(np.dot(get_normal_vector(h.orientation), h.position))


def _has_repeated_positions(headers: Sequence[InstanceHeader]) -> bool:
    proj = np.sort([_projection(h) for h in headers])
    return len(proj) > 1 and bool(np.any(np.diff(proj) < POSITION_TOL_MM))


#: Attributes that tell apart images stored at the same positions in one series (magnitude/phase, echoes,
#: repeated acquisitions, time points), tried in this order.
_REPEAT_KEYS = ("image_type", "echo_number", "acquisition_number", "temporal_position")


def _repeat_value(h: InstanceHeader, key: str) -> Any:
    value = getattr(h, key)
    return tuple(value) if isinstance(value, list) else value


def _split_repeats(members: list[InstanceHeader]) -> tuple[str, list[list[InstanceHeader]]]:
    """Split a stack whose positions repeat, by the first attribute (or, last, all of them together) that leaves
    no part with a repeated position."""
    for key_set in [(k,) for k in _REPEAT_KEYS] + [_REPEAT_KEYS]:
        parts: dict[Any, list[InstanceHeader]] = defaultdict(list)
        for h in members:
            parts[tuple(_repeat_value(h, k) for k in key_set)].append(h)
        if len(parts) > 1 and not any(_has_repeated_positions(p) for p in parts.values()):
            return "+".join(key_set), [parts[k] for k in sorted(parts, key=repr)]
    return "", [members]  # cannot be resolved: the volume builder reports the duplicate positions


def _split_series(headers: list[InstanceHeader]) -> list[tuple[str, list[InstanceHeader]]]:
    """Split one series UID into volumes: orientation/size first, then repeated positions.

    AcquisitionNumber alone is not a reason to split: some scanners number every slice differently. Image
    type, echo, acquisition and temporal position are used only when the same position occurs more than once
    (magnitude + phase, a repeated scan or a time series stored in one series).
    """
    by_geometry: dict[tuple, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        by_geometry[_split_key(h)].append(h)
    reason = "orientation/size" if len(by_geometry) > 1 else ""
    parts: list[tuple[str, list[InstanceHeader]]] = []
    for key in sorted(by_geometry, key=repr):
        members = by_geometry[key]
        if _has_repeated_positions(members):
            why, pieces = _split_repeats(members)
            if len(pieces) > 1:
                parts.extend(("+".join(r for r in (reason, why) if r), p) for p in pieces)
                continue
        parts.append((reason, members))
    return parts


def _dedupe(headers: Iterable[InstanceHeader]) -> list[InstanceHeader]:
    """Drop exact duplicates (same SOP Instance UID), keeping the first path in sorted order."""
    seen: dict[str, InstanceHeader] = {}
    for h in sorted(headers, key=lambda h: h.path):
        if h.sop_instance_uid in seen:
            log.warning("duplicate SOP Instance UID %s: skipping %s (same as %s)",
                        h.sop_instance_uid, h.path, seen[h.sop_instance_uid].path)
            continue
        seen[h.sop_instance_uid] = h
    return list(seen.values())


def _make_group(members: list[InstanceHeader], part: int, n_parts: int, reason: str) -> SeriesGroup:
    members = sorted(members, key=lambda h: (_projection(h), h.path))
    first = members[0]
    patient = _slug(first.patient_id) or "anon-" + _short_hash("patient:" + first.patient_name + first.study_uid)
    study = "_".join(p for p in (_slug(first.study_date, 8), _short_hash(first.study_uid)) if p)
    number = f"{first.series_number:04d}" if first.series_number is not None else "nonum"
    desc = _slug(first.series_description, 30)
    series = "_".join(p for p in (number, first.modality or "OT", desc, _short_hash(first.series_uid)) if p)
    if n_parts > 1:
        series += f"_part{part + 1}"
    derived = sorted({d for h in members for d in h.derived})
    return SeriesGroup(
        patient_id=first.patient_id,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        name=f"{patient}__{study}__{series}",
        patient_dir=patient,
        study_dir=study,
        series_dir=series,
        files=[h.path for h in members],
        sop_instance_uids=[h.sop_instance_uid for h in members],
        modality=first.modality,
        series_number=first.series_number,
        series_description=first.series_description,
        study_description=first.study_description,
        study_date=first.study_date,
        image_type=first.image_type,
        acquisition_number=first.acquisition_number if len({h.acquisition_number for h in members}) == 1
        else None,
        orientation=list(first.orientation) if first.orientation else None,
        rows=first.rows,
        columns=first.columns,
        pixel_spacing=list(first.pixel_spacing) if first.pixel_spacing else None,
        slice_positions=[round(_projection(h), 4) for h in members],
        number_of_frames=first.number_of_frames,
        is_mosaic=first.is_mosaic,
        frame_of_reference_uid=first.frame_of_reference_uid,
        slice_thickness=first.slice_thickness,
        transfer_syntaxes=sorted({h.transfer_syntax for h in members}),
        derived_uids=derived,
        split_reason=reason,
        header_problems=[f"{h.path}: {h.problem}" for h in members if h.problem],
    )


def group_headers(headers: Sequence[InstanceHeader]) -> list[SeriesGroup]:
    """Group instance headers into series volumes (deterministic order: patient, study, series number)."""
    by_series: dict[tuple[str, str, str], list[InstanceHeader]] = defaultdict(list)
    for h in _dedupe(headers):
        by_series[(h.patient_id, h.study_uid, h.series_uid)].append(h)
    groups: list[SeriesGroup] = []
    for key in sorted(by_series):
        parts = _split_series(by_series[key])
        groups.extend(_make_group(members, i, len(parts), reason) for i, (reason, members) in enumerate(parts))
    for g in groups:
        if g.derived_uids:
            log.warning("series %s (%d files, e.g. %s): blank %s in the files; derived them from the file meta "
                        "and from Patient/Study/Series attributes (FrameOfReferenceUID, SeriesNumber, "
                        "SeriesDescription, Modality, ImageType) to group the instances",
                        g.name, len(g.files), g.files[0], ", ".join(g.derived_uids))
    groups.sort(key=lambda g: (g.patient_dir, g.study_dir, g.series_number if g.series_number is not None
                               else 1 << 30, g.series_dir))
    return groups


def chunk_group(group: SeriesGroup, slices_per_group: int) -> list[SeriesGroup]:
    """Cut a group into consecutive chunks of N slices sorted by position, each a valid sub-volume.

    The last chunk may be shorter. Multi-frame objects are not cut (they are one file).
    """
    if slices_per_group <= 0:
        raise InputError(f"--slices-per-group must be a positive number of slices, got {slices_per_group}")
    n = len(group.files)
    if n <= slices_per_group or group.number_of_frames > 1 or group.is_mosaic:
        return [group]
    chunks = []
    for i, start in enumerate(range(0, n, slices_per_group)):
        stop = min(start + slices_per_group, n)
        chunk = SeriesGroup(**{**asdict(group)})
        chunk.files = group.files[start:stop]
        chunk.sop_instance_uids = group.sop_instance_uids[start:stop]
        chunk.slice_positions = group.slice_positions[start:stop]
        chunk.series_dir = f"{group.series_dir}_chunk{i + 1:03d}"
        chunk.name = f"{group.name}_chunk{i + 1:03d}"
        chunk.split_reason = (group.split_reason + "+" if group.split_reason else "") + "chunk"
        chunks.append(chunk)
    return chunks


def list_files(folder: str | os.PathLike) -> list[str]:
    """All regular files below ``folder`` (sorted, hidden files included, symlinks followed)."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        return [str(root)]
    files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"{root}: the folder is empty (no files below it)")
    return files


def scan_dicom(folder: str | os.PathLike, *, workers: int = 1, progress: bool = False,
               slices_per_group: int | None = None) -> list[SeriesGroup]:
    """Read the headers of every file below ``folder`` and return the series groups.

    Non-DICOM files get a warning and are skipped. Raises :class:`InputError` when the folder is missing,
    empty or holds no DICOM file at all.
    """
    files = list_files(folder)
    if workers > 1 and len(files) > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            headers = list(tqdm(pool.map(read_header, files, chunksize=32), total=len(files),
                                desc="reading headers", unit="file", disable=not progress))
    else:
        headers = [read_header(f) for f in tqdm(files, desc="reading headers", unit="file",
                                                 disable=not progress)]
    good = []
    for path, h in zip(files, headers):
        if h is None:
            log.warning("%s: not a DICOM file (or unreadable); skipped", path)
        else:
            good.append(h)
    if not good:
        raise InputError(f"{folder}: no DICOM files found among {len(files)} file(s)")
    groups = group_headers(good)
    if slices_per_group:
        groups = [c for g in groups for c in chunk_group(g, slices_per_group)]
    return groups
