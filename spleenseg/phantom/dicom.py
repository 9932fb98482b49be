"""DICOM output of a phantom: a CT series with complete headers, junk beside it, and the label as DICOM SEG.

The CT writer is deliberately generic: slice ``k`` of the stack is written with ImagePositionPatient =
``affine_lps @ (0, 0, k, 1)`` and ImageOrientationPatient = the first two (unit) columns of ``affine_lps``, and its
pixel rows/columns are ``volume[:, :, k].T``. So whatever grid the phantom has (oblique included), the series
describes exactly the same voxels in the same patient coordinates as the NIfTI written by
:func:`spleenseg.phantom.write_nifti` - which is what the tests check with dcm2niix.

The odd-but-legal forms real exports have (reversed instance order, shuffled file names without extension,
nested folders, unsigned pixels with a -1024 intercept, feet-first patient position, coronal/sagittal stacks) are
options, so readers can be tested against them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from spleenseg import __version__
from spleenseg.errors import InputError
from spleenseg.atomic import atomic_file, ensure_writable_dir
from spleenseg.phantom.anatomy import Phantom

MANUFACTURER = "spleenseg"
MODEL = "Synthetic abdominal CT phantom"
ORIENTATIONS = ("axial", "oblique", "coronal", "sagittal")


def phantom_uid(*parts: object) -> str:
    """A deterministic DICOM UID (pydicom's root + a hash of ``parts``): same phantom, same UIDs, same bytes."""
    return generate_uid(entropy_srcs=["spleenseg-phantom", *[str(p) for p in parts]])


def phantom_fingerprint(ph: "Phantom") -> str:
    """A short hash of everything that makes a phantom: its spec (every generator parameter), grid and pixels.

    Why: UIDs derived from the seed alone are shared by two different phantoms with the same seed, and a PACS
    then keeps the pixels of whichever arrived first.
    """
    digest = hashlib.sha1(repr(ph.spec).encode())
    digest.update(np.asarray(ph.affine, np.float64).round(6).tobytes())
    digest.update(np.ascontiguousarray(ph.image).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class StudyIds:
    """Who and which study a series belongs to. Defaults derive from the phantom seed."""

    patient_id: str
    patient_name: str
    study_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession: str
    birth_date: str
    sex: str

    @classmethod
    def for_seed(cls, seed: int, patient_id: str | None = None, patient_name: str | None = None,
                 study_uid: str | None = None, fingerprint: str = "") -> "StudyIds":
        """Patient and study attributes of a phantom; ``fingerprint`` (:func:`phantom_fingerprint`) makes the
        UIDs differ between phantoms that share a seed but not their other parameters."""
        day = _dt.date(2021, 1, 4) + _dt.timedelta(days=int(seed) % 1400)
        rng = np.random.default_rng([int(seed), 99])
        pid = patient_id if patient_id is not None else f"PHANTOM{seed:05d}"
        return cls(
            patient_id=pid,
            patient_name=patient_name if patient_name is not None else f"Phantom^{seed:05d}",
            study_uid=study_uid or phantom_uid(pid, seed, fingerprint, "study"),
            frame_of_reference_uid=phantom_uid(pid, seed, fingerprint, study_uid, "for"),
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
            accession=f"A{int(rng.integers(10**6, 10**7))}",
            birth_date=f"{int(rng.integers(1940, 2000))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 28)):02d}",
            sex=str(rng.choice(["F", "M"])),
        )


# ---------------------------------------------------------------------------------------------------------------
# geometry of a stack
# ---------------------------------------------------------------------------------------------------------------


def _flip(vol: np.ndarray, aff: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Reverse one array axis and keep the world position of every voxel."""
    out = aff.copy()
    out[:3, 3] = aff[:3, 3] + aff[:3, axis] * (vol.shape[axis] - 1)
    out[:3, axis] = -aff[:3, axis]
    return np.flip(vol, axis), out


def stack_geometry(ph: Phantom, orientation: str = "axial", feet_first: bool = False,
                   volume: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The volume as a DICOM stack (columns, rows, slices) and its voxel->LPS affine.

    ``orientation`` picks which phantom axis becomes the slice axis (axial/oblique: k; coronal: j; sagittal: i).
    Coronal and sagittal images are written with rows running feet-wards, as scanners do. ``feet_first`` mirrors
    the row direction (ImageOrientationPatient starts -1,0,0), as a feet-first supine acquisition does.
    """
    if orientation not in ORIENTATIONS:
        raise InputError(f"unknown DICOM orientation {orientation!r}; choose one of {', '.join(ORIENTATIONS)}")
    if orientation == "oblique" and abs(ph.spec.tilt_deg) < 1e-6:
        raise InputError("orientation 'oblique' needs a tilted phantom: random_spec(..., tilt_deg=15), or --tilt 15 "
                         "on the command line")
    vol = ph.image if volume is None else volume
    aff = ph.affine_lps
    if orientation in ("coronal", "sagittal"):
        perm = (0, 2, 1) if orientation == "coronal" else (1, 2, 0)
        vol = np.transpose(vol, perm)
        aff = aff.copy()
        aff[:3, :3] = aff[:3, list(perm)]
        vol, aff = _flip(vol, aff, 1)  # rows run from head to feet
    if feet_first:
        vol, aff = _flip(vol, aff, 0)
    return vol, aff


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _ds(v: float) -> str:
    """Decimal String value that round-trips to well below 1 µm and fits 16 characters."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s[:16]


# ---------------------------------------------------------------------------------------------------------------
# shared header modules
# ---------------------------------------------------------------------------------------------------------------


def _new_dataset(sop_class: str, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SPLEENSEG_" + __version__.replace(".", "")
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _patient_study(ds: Dataset, ids: StudyIds, spec_seed: int) -> None:
    ds.PatientName = ids.patient_name
    ds.PatientID = ids.patient_id
    ds.PatientBirthDate = ids.birth_date
    ds.PatientSex = ids.sex
    ds.StudyInstanceUID = ids.study_uid
    ds.StudyDate = ids.study_date
    ds.StudyTime = ids.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{spec_seed % 100000}"
    ds.AccessionNumber = ids.accession
    ds.StudyDescription = "CT ABDOMEN (synthetic phantom)"
    ds.InstanceCreationDate = ids.study_date
    ds.InstanceCreationTime = ids.study_time


def _series(ds: Dataset, ids: StudyIds, modality: str, series_uid: str, number: int, description: str) -> None:
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(number)
    ds.SeriesDescription = description
    ds.SeriesDate = ids.study_date
    ds.SeriesTime = ids.study_time
    ds.ContentDate = ids.study_date
    ds.ContentTime = ids.study_time
    ds.BodyPartExamined = "ABDOMEN"


def _equipment(ds: Dataset) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL
    ds.InstitutionName = "Synthetic Data Hospital"
    ds.StationName = "PHANTOM1"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = f"spleenseg {__version__}"


def _image_pixel(ds: Dataset, stored: np.ndarray, bits_stored: int) -> None:
    """Image Pixel module for one 16-bit grey-scale frame (signed when ``stored`` is int16)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def _pixels(ds: Dataset, hu: np.ndarray, signed: bool) -> None:
    """CT pixels + rescale: signed int16 HU (intercept 0) or unsigned 12-bit (stored = HU + 1024)."""
    if signed:
        _image_pixel(ds, np.asarray(hu, dtype=np.int16), 16)
        ds.RescaleIntercept = "0"
    else:
        _image_pixel(ds, np.clip(hu.astype(np.int32) + 1024, 0, 4095).astype(np.uint16), 12)
        ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"


def _refuse_existing(paths: Sequence[Path]) -> None:
    """Never overwrite a file already in the output folder (it may be the user's, or another patient's)."""
    taken = [p for p in paths if p.exists()]
    if taken:
        raise InputError(f"{taken[0]}: already exists; refusing to overwrite ({len(taken)} file(s) would be "
                         "replaced). Write into another folder or choose another file prefix/series number.")


def _save(ds: FileDataset, path: Path) -> Path:
    _refuse_existing([path])
    with atomic_file(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _file_names(n: int, seed: int, series_number: int, shuffle_names: bool, nested: bool,
                prefix: str) -> list[str]:
    """Relative file names for instances 1..n: ordered ``IM0001.dcm`` or shuffled extension-less hashes."""
    rng = np.random.default_rng([seed, series_number, 5])
    if shuffle_names:
        names = [f"{int(v):012x}" for v in rng.choice(16**10, size=n, replace=False)]
    else:
        names = [f"{prefix}{i + 1:04d}.dcm" for i in range(n)]
    if nested:
        names = [f"S{series_number:03d}/part{int(rng.integers(0, 3))}/{nm}" for nm in names]
    return names


# ---------------------------------------------------------------------------------------------------------------
# CT series
# ---------------------------------------------------------------------------------------------------------------


def write_dicom_series(
    ph: Phantom,
    out_dir: str | Path,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 2,
    reverse: bool = False,
    shuffle_names: bool = False,
    nested: bool = False,
    pixel_signed: bool = True,
    orientation: str = "axial",
    feet_first: bool = False,
    series_description: str | None = None,
    file_prefix: str = "IM",
    return_datasets: bool = False,
) -> list[Path] | tuple[list[Path], list[Dataset]]:
    """Write the phantom as a CT Image Storage series (one file per slice) into ``out_dir``.

    Instance 1 is the first slice the scanner would acquire: the most superior for head-first, the most
    inferior for feet-first; ``reverse`` inverts that. Files are named ``<file_prefix>0001.dcm``... (or random
    extension-less names with ``shuffle_names``) and appear atomically. The folder may already hold other
    series (several studies/patients in one folder is a legal export), but no existing file is overwritten:
    a name clash raises :class:`InputError` before anything is written.

    Returns the paths in InstanceNumber order (and the in-memory datasets with ``return_datasets``).
    """
    out_dir = ensure_writable_dir(Path(out_dir))
    spec = ph.spec
    ids = StudyIds.for_seed(spec.seed, patient_id, patient_name, study_uid, phantom_fingerprint(ph))
    series_uid = series_uid or phantom_uid(ids.study_uid, series_number, orientation, feet_first, "series")
    vol, aff = stack_geometry(ph, orientation, feet_first)
    row_dir, col_dir, normal = _unit(aff[:3, 0]), _unit(aff[:3, 1]), _unit(aff[:3, 2])
    col_spacing, row_spacing = np.linalg.norm(aff[:3, 0]), np.linalg.norm(aff[:3, 1])
    n = vol.shape[2]
    order = list(range(n))
    superior_first = normal[2] > 0  # k runs upwards: head-first scanning starts at the top
    if superior_first != feet_first:
        order = order[::-1]
    if reverse:
        order = order[::-1]
    names = _file_names(n, spec.seed, series_number, shuffle_names, nested, file_prefix)
    _refuse_existing([out_dir / nm for nm in names])
    thickness = spec.slice_thickness if orientation in ("axial", "oblique") else float(np.linalg.norm(aff[:3, 2]))
    desc = series_description or f"Abdomen {spec.phase} {thickness:.2g}mm {orientation}"
    paths, datasets = [], []
    for instance, k in enumerate(order, start=1):
        sop_uid = phantom_uid(series_uid, k)
        ds = _new_dataset(CTImageStorage, sop_uid)
        _patient_study(ds, ids, spec.seed)
        _series(ds, ids, "CT", series_uid, series_number, desc)
        ds.PatientPosition = "FFS" if feet_first else "HFS"
        ds.FrameOfReferenceUID = ids.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        _equipment(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate, ds.AcquisitionTime = ids.study_date, ids.study_time
        ipp = aff[:3, :3] @ np.array([0.0, 0.0, float(k)]) + aff[:3, 3]
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = _ds(thickness)
        ds.SliceLocation = _ds(float(ipp @ normal))
        ds.KVP = _ds(spec.kvp)
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = _ds(max(col_spacing * vol.shape[0], row_spacing * vol.shape[1]))
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = _ds(150.0 + spec.table_offset_mm[1])
        ds.RotationDirection = "CW"
        ds.XRayTubeCurrent = 200
        ds.ExposureTime = 500
        ds.ConvolutionKernel = "B30f"
        ds.PatientOrientation = ""  # type 2C; IOP is present
        if spec.phase == "portal":
            ds.ContrastBolusAgent = "Iohexol 350 mg/ml"
            ds.ContrastBolusRoute = "IV"
        _pixels(ds, vol[:, :, k].T, pixel_signed)
        paths.append(_save(ds, out_dir / names[instance - 1]))
        datasets.append(ds)
    return (paths, datasets) if return_datasets else paths


# ---------------------------------------------------------------------------------------------------------------
# junk beside the CT: localizer and a non-CT object
# ---------------------------------------------------------------------------------------------------------------


def write_scout(ph: Phantom, out_dir: str | Path, *, patient_id: str | None = None,
                patient_name: str | None = None, study_uid: str | None = None, series_number: int = 1,
                file_name: str = "SCOUT0001.dcm") -> Path:
    """A coronal localizer (Modality CT, ImageType ORIGINAL\\PRIMARY\\LOCALIZER) in the same study.

    Real studies carry one; readers that stack every CT image of a study together break on it. The picture
    is a projection of attenuation through the phantom, rows head to feet.
    """
    out_dir = ensure_writable_dir(Path(out_dir))
    spec = ph.spec
    ids = StudyIds.for_seed(spec.seed, patient_id, patient_name, study_uid, phantom_fingerprint(ph))
    series_uid = phantom_uid(ids.study_uid, series_number, "scout")
    mu = np.clip(ph.image.astype(np.float32) + 1000.0, 0, None).sum(axis=1) * ph.spacing[1] / 1000.0
    proj = mu[:, ::-1].T  # rows: head -> feet, columns: patient's right -> left
    proj = np.clip(proj / max(float(proj.max()), 1.0) * 3000.0, 0, 4095)
    ds = _new_dataset(CTImageStorage, phantom_uid(series_uid, "scout-image"))
    _patient_study(ds, ids, spec.seed)
    _series(ds, ids, "CT", series_uid, series_number, "Topogram 0.6 T20f")
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = ids.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    _equipment(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    aff = ph.affine_lps
    top = aff[:3, :3] @ np.array([0.0, (ph.image.shape[1] - 1) / 2.0, ph.image.shape[2] - 1.0]) + aff[:3, 3]
    ds.ImagePositionPatient = [_ds(v) for v in top]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.PixelSpacing = [_ds(ph.spacing[2]), _ds(ph.spacing[0])]
    ds.SliceThickness = "0.6"
    ds.KVP = "120"
    ds.PatientOrientation = ""
    # a topogram is not in HU: stored values are the projection, no offset
    _image_pixel(ds, proj.astype(np.uint16), 12)
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.WindowCenter, ds.WindowWidth = "1500", "3000"
    return _save(ds, out_dir / file_name)


def write_non_ct_series(ph: Phantom, out_dir: str | Path, *, patient_id: str | None = None,
                        patient_name: str | None = None, study_uid: str | None = None, series_number: int = 999,
                        file_name: str = "SC0001.dcm") -> Path:
    """A Secondary Capture (Modality OT) key image in the same study, as scanners add for dose reports."""
    out_dir = ensure_writable_dir(Path(out_dir))
    spec = ph.spec
    ids = StudyIds.for_seed(spec.seed, patient_id, patient_name, study_uid, phantom_fingerprint(ph))
    series_uid = phantom_uid(ids.study_uid, series_number, "sc")
    k = int(np.argwhere(ph.label > 0)[:, 2].mean()) if ph.label.any() else ph.image.shape[2] // 2
    window = np.clip((ph.image[:, :, k].T.astype(np.float32) + 160.0) / 400.0 * 255.0, 0, 255)
    ds = _new_dataset(SecondaryCaptureImageStorage, phantom_uid(series_uid, "sc-image"))
    _patient_study(ds, ids, spec.seed)
    _series(ds, ids, "OT", series_uid, series_number, "Key image (secondary capture)")
    _equipment(ds)
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ["L", "P"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = window.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(window, dtype=np.uint8).tobytes()
    return _save(ds, out_dir / file_name)


# ---------------------------------------------------------------------------------------------------------------
# SEG
# ---------------------------------------------------------------------------------------------------------------


def label_on_frame(ph: Phantom, ds: Dataset) -> np.ndarray:
    """The phantom label sampled at the pixel centres of one source image (nearest voxel, world coordinates)."""
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
    r, c = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
    world = ipp[:, None, None] + iop[:3, None, None] * (c * dc) + iop[3:, None, None] * (r * dr)
    inv = np.linalg.inv(ph.affine_lps)
    ijk = np.rint(np.tensordot(inv[:3, :3], world, axes=1) + inv[:3, 3, None, None]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(ph.label.shape)[:, None, None]), axis=0)
    out = np.zeros(r.shape, np.uint8)
    out[ok] = ph.label[ijk[0][ok], ijk[1][ok], ijk[2][ok]]
    return out


def write_seg(ph: Phantom, ct_paths_or_datasets: Iterable[str | Path | Dataset], out_path: str | Path, *,
              series_number: int = 300) -> Path:
    """Write the spleen label as a binary DICOM SEG (highdicom) that references the given CT images.

    The mask of each frame is sampled from the phantom label at that frame's pixel positions in patient
    coordinates, so the SEG is right whatever order, orientation or file names the CT series has.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from spleenseg.dicom.seg import spleen_segment_description

    sources = [d if isinstance(d, Dataset) else pydicom.dcmread(d) for d in ct_paths_or_datasets]
    if not sources:
        raise InputError(f"{out_path}: no CT images given to reference in the SEG")
    mask = np.stack([label_on_frame(ph, d) for d in sources])
    description = spleen_segment_description("spleenseg phantom (label by construction)", __version__,
                                             family=codes.cid7162.MorphologicalOperations)
    seg_series = phantom_uid(sources[0].SeriesInstanceUID, "seg", series_number)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=seg_series,
        series_number=series_number,
        sop_instance_uid=phantom_uid(seg_series, 1),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL,
        software_versions=f"spleenseg {__version__}",
        device_serial_number="0001",
        series_description="Spleen (phantom ground truth)",
    )
    out_path = Path(out_path)
    with atomic_file(out_path) as tmp:
        seg.save_as(tmp)
    return out_path


def write_dicom_study(ph: Phantom, out_dir: str | Path, *, seg: bool = True, junk: bool = True,
                      **series_options) -> dict[str, list[Path]]:
    """One patient's study: the CT series, optionally a scout + secondary capture beside it and the SEG."""
    keep = {k: series_options[k] for k in ("patient_id", "patient_name", "study_uid") if k in series_options}
    series_options.setdefault("file_prefix", f"CT{ph.spec.seed:05d}_")  # several studies may share the folder
    ct, datasets = write_dicom_series(ph, out_dir, return_datasets=True, **series_options)
    out: dict[str, list[Path]] = {"ct": ct}
    if junk:
        out["scout"] = [write_scout(ph, out_dir, **keep, file_name=f"SCOUT_{ph.spec.seed:05d}.dcm")]
        out["other"] = [write_non_ct_series(ph, out_dir, **keep, file_name=f"SC_{ph.spec.seed:05d}.dcm")]
    if seg:
        out["seg"] = [write_seg(ph, datasets, Path(out_dir) / f"SEG_{ph.spec.seed:05d}.dcm")]
    return out


__all__ = ["write_dicom_series", "write_scout", "write_non_ct_series", "write_seg", "write_dicom_study",
           "stack_geometry", "StudyIds", "phantom_uid", "ORIENTATIONS"]
