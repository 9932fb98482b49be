"""Build one 3D volume from one DICOM series, with geometry checks that name the series and the problem.

highdicom does the geometry (``Volume.from_attributes`` on our checked, sorted stack, equal to
``get_volume_from_series`` which is kept as ``engine="highdicom"``; ``Image.get_volume`` for Enhanced
multi-frame objects); it matched dcm2niix voxel for voxel. highdicom refuses irregular spacing and gantry tilt
with a generic message, so we check those first and raise :class:`GeometryError` saying which series, which
files and what is wrong. With ``resample=True`` such series are interpolated (linearly) onto a uniform
grid perpendicular to the slices, as dcm2niix does for tilt and variable spacing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import highdicom as hd
import numpy as np
import pydicom
import warnings

with warnings.catch_warnings():  # nibabel warns that its DICOM readers are experimental; we use only mosaics
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import dicomwrappers
from pydicom.pixels import apply_modality_lut
from highdicom.spatial import get_normal_vector, get_series_volume_positions
from pydicom.uid import generate_uid
from scipy import ndimage

from spleenseg.dicom.decode import check_decodable, check_pixel_data, check_size, frame_count, read_dataset
from spleenseg.dicom.scan import (
    ORIENTATION_DECIMALS,
    POSITION_TOL_MM,
    SeriesGroup,
    header_from_dataset,
    is_mosaic,
    list_files,
)
from spleenseg.dicom.header_checks import not_a_number_reason, unusable_reason
from spleenseg.errors import GeometryError, InputError

log = logging.getLogger(__name__)

#: Relative tolerance on slice spacing (highdicom's default; dicom2nifti/dcm2niix use similar ones).
SPACING_RTOL = 0.01
#: Allowed angle (degrees) between the slice normal and the direction in which slices are stacked, first to last
#: slice: a gantry tilt shears every slice by the same step. highdicom checks each slice's offset from the first
#: with a looser angle, which is what lets in-plane jitter through.
TILT_TOL_DEG = 0.05

SeriesSource = Union[SeriesGroup, str, os.PathLike, Sequence[Union[str, os.PathLike]], Sequence[pydicom.Dataset]]


@dataclass
class VolumeInfo:
    """What was done to build a volume, for the JSON side-car."""

    series: str
    n_files: int
    sorted_by: str = "projection of ImagePositionPatient on the slice normal"
    resampled: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: For each slice of the volume (slice 0 first), the index in ``source`` of the file/dataset it is; empty
    #: when slices are not single inputs (resampled, multi-frame or mosaic).
    slice_sources: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- reading
def _label_of(source: SeriesSource) -> str:
    if isinstance(source, SeriesGroup):
        dirs = [os.path.dirname(os.path.abspath(f)) for f in source.files]
        folder = os.path.commonpath(dirs) if dirs else ""
        return f"{source.name} ({len(source.files)} files in {folder})"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    items = list(source)  # type: ignore[arg-type]
    if items and isinstance(items[0], pydicom.Dataset):
        ds = items[0]
        return f"{ds.get('SeriesDescription', '')} {ds.get('SeriesInstanceUID', '')}".strip() or "<datasets>"
    return f"{Path(str(items[0])).parent} ({len(items)} files)" if items else "<empty>"


def _read_source(source: SeriesSource) -> list[tuple[str, pydicom.Dataset]]:
    """(path, full dataset) pairs; datasets given by the caller are copied, never changed."""
    if isinstance(source, SeriesGroup):
        paths: list[Any] = list(source.files)
    elif isinstance(source, (str, os.PathLike)):
        paths = list_files(source)
    else:
        paths = list(source)
    if not paths:
        raise InputError(f"{_label_of(source)}: no DICOM files given")
    out = []
    for item in paths:
        if isinstance(item, pydicom.Dataset):
            name = item.filename if isinstance(item.filename, str) else "<dataset>"
            check_decodable(item, name)
            check_pixel_data(item, name)
            out.append((str(getattr(item, "filename", "") or "<dataset>"), detached_copy(item)))
        else:
            out.append((str(item), read_dataset(item)))
    return out


def detached_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A new dataset holding the same elements: deleting, adding or replacing an element (``del`` then set, see
    :func:`_replace`) in it leaves the caller's dataset alone; ``copy.copy`` of a pydicom Dataset shares its
    element dict, so deleting from such a copy deletes from the original too. The element objects themselves
    are shared: assigning to an attribute that is already there changes the caller's value."""
    out = pydicom.Dataset()
    out.update(ds)
    out.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
    return out


def _replace(ds: pydicom.Dataset, keyword: str, value: str) -> None:
    """Set an attribute through a new element (never mutate an element a caller's dataset may share)."""
    if keyword in ds:
        del ds[keyword]
    setattr(ds, keyword, value)


def _repair_uids(ds: pydicom.Dataset, path: str) -> pydicom.Dataset:
    """Fill blank UIDs in memory (from the file meta / derived), so highdicom accepts the dataset."""
    header = header_from_dataset(ds, path)
    for keyword, value in (("SOPClassUID", header.sop_class_uid), ("SOPInstanceUID", header.sop_instance_uid),
                           ("StudyInstanceUID", header.study_uid), ("SeriesInstanceUID", header.series_uid)):
        if not ds.get(keyword):
            _replace(ds, keyword, value)
    if not ds.get("FrameOfReferenceUID"):  # optional in old MR files; highdicom needs one to place the image
        _replace(ds, "FrameOfReferenceUID", generate_uid(entropy_srcs=["frame-of-reference", header.series_uid]))
    return ds


# --------------------------------------------------------------------------------------------- geometry checks
@dataclass
class _Stack:
    datasets: list[pydicom.Dataset]
    paths: list[str]
    projections: np.ndarray  # positions along the normal, ascending
    positions: np.ndarray  # (n, 3) ImagePositionPatient in the same order
    orientation: np.ndarray
    normal: np.ndarray
    pixel_spacing: np.ndarray
    order: list[int]  # index in the input of each dataset, in the same order


def _require(ds: pydicom.Dataset, path: str, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise GeometryError(f"{path}: missing {keyword}; cannot place this image in patient space")
    return value


def _sorted_stack(pairs: list[tuple[str, pydicom.Dataset]], label: str) -> _Stack:
    """Check the slices share size, orientation and pixel spacing; sort them along the slice normal."""
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in pairs}
    if len(sizes) > 1:
        raise GeometryError(f"series {label}: mixed image sizes {sorted(sizes)}; not one volume "
                            "(run `spleenseg-prepare group` to split it)")
    orients = np.array([np.asarray(_require(ds, p, "ImageOrientationPatient"), float) for p, ds in pairs])
    if np.abs(orients - orients[0]).max() > 10 ** -ORIENTATION_DECIMALS:
        distinct = {tuple(np.round(o, 3)) for o in orients}
        raise GeometryError(f"series {label}: mixed slice orientations {sorted(distinct)}; not one volume "
                            "(run `spleenseg-prepare group` to split it)")
    spacings = np.array([np.asarray(_require(ds, p, "PixelSpacing"), float) for p, ds in pairs])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise GeometryError(f"series {label}: mixed pixel spacings {sorted({tuple(s) for s in spacings})}")
    positions = np.array([np.asarray(_require(ds, p, "ImagePositionPatient"), float) for p, ds in pairs])
    normal = get_normal_vector(orients[0])  # row cosine x column cosine
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    return _Stack(
        datasets=[pairs[i][1] for i in order], paths=[pairs[i][0] for i in order], projections=proj[order],
        positions=positions[order], orientation=orients[0], normal=normal, pixel_spacing=spacings[0],
        order=[int(i) for i in order],
    )


def is_regular_volume(stack: _Stack) -> bool:
    """highdicom's verdict (``get_series_volume_positions``) on a sorted stack: no duplicate positions, spacing
    equal to within ``SPACING_RTOL``, and every slice's offset from the first along the normal (highdicom's default
    tolerance, about 2.6 degrees: it accepts the few-hundredths-of-a-mm in-plane jitter of some exports at
    a 4 mm step and refuses a slice displaced by millimetres)."""
    try:  # sort=True although the stack is sorted: highdicom de-duplicates with np.unique, which reorders
        spacing, _ = get_series_volume_positions(
            stack.datasets, rtol=SPACING_RTOL, orientation_tol=10 ** -ORIENTATION_DECIMALS)
    except (ValueError, AttributeError):  # a multi-frame object or a missing attribute: not a plain stack
        return False
    return spacing is not None


def stack_problems(stack: _Stack, label: str) -> list[str]:
    """Human-readable geometry problems of a sorted stack (empty list: a regular volume).

    highdicom decides whether the slice positions form a regular volume; this function says in the project's
    words what is wrong with a stack that does not (duplicate positions, uneven spacing), and adds the one check
    highdicom does not make: the tilt of the whole stack, first slice to last.
    """
    if len(stack.paths) < 2:
        return []
    problems = []
    gaps = np.diff(stack.projections)
    dup = np.flatnonzero(gaps < POSITION_TOL_MM)
    if dup.size:
        i = int(dup[0])
        problems.append(f"{dup.size} duplicate slice position(s), e.g. {stack.projections[i]:.3f} mm along the "
                        f"normal in {stack.paths[i]} and {stack.paths[i + 1]}")
        return problems  # tilt and spacing make no sense with repeated positions
    step = stack.positions[-1] - stack.positions[0]
    cos = abs(float(np.dot(step / np.linalg.norm(step), stack.normal)))
    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    if tilt > TILT_TOL_DEG:
        problems.append(f"gantry tilt: slices are stacked {tilt:.2f} degrees off their normal")
    if is_regular_volume(stack):  # asked only here: a stack with duplicate positions has returned above
        return problems
    mean = float(gaps.mean())
    if np.abs(gaps - mean).max() > SPACING_RTOL * mean:
        i = int(np.argmax(np.abs(gaps - np.median(gaps))))
        problems.append(f"uneven slice spacing: steps from {gaps.min():.3f} to {gaps.max():.3f} mm (median "
                        f"{np.median(gaps):.3f}); the odd step is between {stack.paths[i]} and {stack.paths[i + 1]}"
                        " (missing or extra slices?)")
    if not problems:
        problems.append("a slice is displaced in its own plane: the positions do not lie along the slice normal "
                        "(highdicom's get_series_volume_positions)")
    return problems


# --------------------------------------------------------------------------------------------- building
def _frames(stack: _Stack, reverse: bool = False) -> np.ndarray:
    """Rescaled pixel values, (n, rows, cols) float32, in stack order or its reverse (modality LUT /
    slope-intercept per slice). Reversing here rather than with ``[::-1]`` keeps the array contiguous, which
    saves consumers a copy of the whole volume."""
    first = stack.datasets[0]
    n = len(stack.datasets)
    out = np.empty((n, int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, ds in enumerate(stack.datasets):
        out[n - 1 - k if reverse else k] = apply_modality_lut(ds.pixel_array, ds)
    return out


def _regular_volume(stack: _Stack) -> hd.Volume:
    """A checked regular stack as a highdicom Volume (highdicom builds the affine from the DICOM attributes).

    Same geometry as ``highdicom.get_volume_from_series`` (tests check both give identical volumes) without
    its per-instance IOD look-ups, which cost a third of the conversion time.
    """
    n = len(stack.paths)
    spacing = float(stack.projections[-1] - stack.projections[0]) / (n - 1)
    return hd.Volume.from_attributes(
        array=_frames(stack, reverse=True),  # highdicom stacks slices against the normal (right-handed)
        image_position=stack.positions[-1].tolist(), image_orientation=stack.orientation.tolist(),
        pixel_spacing=stack.pixel_spacing.tolist(), spacing_between_slices=spacing, coordinate_system="PATIENT",
        frame_of_reference_uid=stack.datasets[0].get("FrameOfReferenceUID") or None,
    )


def _resampled(stack: _Stack, label: str, info: VolumeInfo) -> hd.Volume:
    """Interpolate an irregular or tilted stack onto a uniform grid perpendicular to its slices.

    Each source slice is shifted in-plane onto the grid of the first slice (this undoes gantry tilt), then
    values are interpolated linearly along the normal at a uniform step (the smallest step present).
    """
    gaps = np.diff(stack.projections)
    step = float(gaps.min())
    n_out = int(np.floor((stack.projections[-1] - stack.projections[0]) / step + 1e-6)) + 1
    if n_out > max(4 * len(stack.paths), 1024):
        raise GeometryError(f"series {label}: resampling at the smallest step ({step:.3f} mm) would need {n_out} "
                            f"slices for {len(stack.paths)} files; the positions look corrupt, not just irregular")
    frames = _frames(stack)
    row_dir, col_dir = stack.orientation[:3], stack.orientation[3:]
    offsets = stack.positions - stack.positions[0]
    # in-plane offset of each slice origin, in pixels (rows, columns), relative to slice 0
    shift_rc = np.stack([offsets @ col_dir / stack.pixel_spacing[0], offsets @ row_dir / stack.pixel_spacing[1]], 1)
    fill = float(frames.min())
    aligned = np.stack([ndimage.shift(f, s, order=1, mode="constant", cval=fill) if np.abs(s).max() > 1e-3 else f
                        for f, s in zip(frames, shift_rc)])
    targets = stack.projections[0] + step * np.arange(n_out)
    upper = np.clip(np.searchsorted(stack.projections, targets, side="right"), 1, len(stack.projections) - 1)
    lower = upper - 1
    w = (targets - stack.projections[lower]) / (stack.projections[upper] - stack.projections[lower])
    w = np.where(np.abs(w) < 1e-4, 0.0, np.where(np.abs(w - 1) < 1e-4, 1.0, w))[:, None, None]  # exact on slices
    array = (1 - w) * aligned[lower] + w * aligned[upper]
    info.resampled = True
    info.notes.append(f"resampled {len(stack.paths)} slices onto {len(targets)} uniform slices {step:.4f} mm apart "
                      "(linear interpolation along the normal, in-plane shift for tilt)")
    origin = stack.positions[0] + (targets[-1] - stack.projections[0]) * stack.normal
    return hd.Volume.from_attributes(
        array=array[::-1].astype(np.float32),  # highdicom stacks slices against the normal (right-handed)
        image_position=origin.tolist(), image_orientation=stack.orientation.tolist(),
        pixel_spacing=stack.pixel_spacing.tolist(), spacing_between_slices=step, coordinate_system="PATIENT",
        frame_of_reference_uid=stack.datasets[0].get("FrameOfReferenceUID") or None,
    )


def _single_slice(stack: _Stack) -> hd.Volume:
    """One slice: SpacingBetweenSlices, else SliceThickness, is the third spacing (as dcm2niix chooses)."""
    ds = stack.datasets[0]
    thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    return hd.Volume.from_attributes(
        array=_frames(stack), image_position=stack.positions[0].tolist(),
        image_orientation=stack.orientation.tolist(), pixel_spacing=stack.pixel_spacing.tolist(),
        spacing_between_slices=thickness, coordinate_system="PATIENT",
        frame_of_reference_uid=ds.get("FrameOfReferenceUID") or None,
    )


def _verify_order(volume: hd.Volume, stack: _Stack, label: str) -> None:
    """The volume's first/last slices must sit where the sorted files say (catches a flipped or shifted stack)."""
    n = len(stack.paths)
    for k, expected in ((0, stack.positions[-1]), (n - 1, stack.positions[0])):
        got = volume.affine[:3, :] @ np.array([k, 0, 0, 1.0])
        if np.abs(got - expected).max() > 1e-3 * max(1.0, float(np.abs(expected).max())):
            raise GeometryError(f"series {label}: slice {k} lies at {got.round(3)} but the sorted files put it "
                                f"at {expected.round(3)}; refusing an ambiguous slice order")


def _multiframe_volume(path: str, ds: pydicom.Dataset, label: str) -> hd.Volume:
    """Enhanced (multi-frame) CT/MR: highdicom sorts the frames by their per-frame positions."""
    try:
        return hd.Image.from_dataset(ds, copy=False).get_volume(dtype=np.float32, apply_real_world_transform=False)
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
        raise GeometryError(f"{path} (series {label}): multi-frame object is not one regular volume: {exc}") from exc


def _mosaic_volume(path: str, ds: pydicom.Dataset, label: str) -> hd.Volume:
    """Siemens mosaic: nibabel unpacks the tiles and reads slice geometry from the CSA header."""
    try:
        wrapper = dicomwrappers.wrapper_from_data(ds)
        data = np.asarray(wrapper.get_data(), dtype=np.float32)  # (rows, columns, slices), rescaled
        affine = np.asarray(wrapper.affine, float)  # same axes -> LPS
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on odd CSA headers
        raise GeometryError(f"{path} (series {label}): cannot unpack the Siemens mosaic: {exc}") from exc
    return hd.Volume(array=data.transpose(2, 0, 1), affine=affine[:, [2, 0, 1, 3]], coordinate_system="PATIENT",
                     frame_of_reference_uid=ds.get("FrameOfReferenceUID") or None)


def _check_series_size(pairs: list[tuple[str, pydicom.Dataset]], label: str) -> None:
    """Refuse a series whose files together declare more than :data:`~spleenseg.dicom.decode.MAX_PIXELS`,
    before the float32 volume is allocated (each file alone was checked when it was read)."""
    total = sum(int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * frame_count(ds, p) for p, ds in pairs)
    check_size(total, f"series {label}: {len(pairs)} file(s) declare")


def load_series_volume(source: SeriesSource, *, resample: bool = False, info: VolumeInfo | None = None,
                       engine: str = "fast", check_numbers: bool = False) -> hd.Volume:
    """Read one series and return a :class:`highdicom.Volume` (LPS affine, rescaled float32 values).

    ``source`` is a :class:`SeriesGroup`, a folder holding one series, a list of file paths or a list of
    pydicom datasets (copied, never modified). Raises :class:`GeometryError` naming the series and the
    problem on gaps, duplicate positions, mixed orientation or gantry tilt unless ``resample`` is set, in
    which case the slices are interpolated onto a uniform grid. ``info`` (optional) collects what was done.
    ``engine="highdicom"`` builds regular single-frame series with ``highdicom.get_volume_from_series``
    instead (same result, slower; kept as the reference the fast path is tested against).
    ``check_numbers`` (the converter): also refuse a text SliceThickness or SeriesNumber
    (:func:`~spleenseg.dicom.header_checks.not_a_number_reason`); the app blanks those instead.
    """
    label = _label_of(source)
    pairs = _read_source(source)
    info = info if info is not None else VolumeInfo(series=label, n_files=len(pairs))
    info.n_files = len(pairs)
    info.slice_sources = []
    pairs = [(p, _repair_uids(ds, p)) for p, ds in pairs]
    for path, ds in pairs:
        reason = unusable_reason(ds, check_uids=False) or (not_a_number_reason(ds) if check_numbers else None)
        if reason is not None:
            raise InputError(f"series {label}: {path}: {reason}")
    _check_series_size(pairs, label)
    if len(pairs) == 1 and is_mosaic(pairs[0][1]):
        info.sorted_by = "Siemens mosaic order (CSA header), via nibabel"
        return _mosaic_volume(pairs[0][0], pairs[0][1], label)
    if len(pairs) == 1 and int(pairs[0][1].get("NumberOfFrames", 1) or 1) > 1:
        info.sorted_by = "highdicom: per-frame ImagePositionPatient along the normal"
        return _multiframe_volume(pairs[0][0], pairs[0][1], label)
    photometric = str(pairs[0][1].get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        raise InputError(f"series {label}: {photometric} colour images are not CT volumes; only grey-scale "
                         f"(MONOCHROME1/2) series can be converted ({pairs[0][0]})")
    stack = _sorted_stack(pairs, label)
    problems = stack_problems(stack, label)
    info.problems = problems
    if problems:
        duplicates = "duplicate slice position" in problems[0]
        if not resample or duplicates:
            hint = "" if duplicates else "; pass --resample to interpolate onto a uniform grid"
            raise GeometryError(f"series {label}: " + "; ".join(problems) + hint)
        log.warning("series %s: %s; resampling onto a uniform grid", label, "; ".join(problems))
        return _resampled(stack, label, info)
    if len(stack.paths) == 1:
        info.slice_sources = list(stack.order)
        return _single_slice(stack)
    if engine == "fast":
        volume = _regular_volume(stack)
    elif engine == "highdicom":
        try:
            volume = hd.get_volume_from_series(stack.datasets, dtype=np.float32, rtol=SPACING_RTOL,
                                               apply_real_world_transform=False)
        except ValueError as exc:
            raise GeometryError(f"series {label}: highdicom refused the series: {exc}") from exc
    else:
        raise InputError(f"unknown volume engine {engine!r}; use 'fast' or 'highdicom'")
    _verify_order(volume, stack, label)
    info.slice_sources = stack.order[::-1]  # both engines stack the slices against the normal
    return volume
