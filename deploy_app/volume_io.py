"""DICOM series → volume for the deploy app: the project's checked loader plus the slice ↔ instance mapping.

Why not the SDK's ``DICOMSeriesToVolumeOperator`` geometry: it sorts by position but never checks that the
slices are evenly spaced (a missing slice silently squeezes the volume), builds the affine from the first and
last slice with the two in-plane spacings swapped (wrong for non-square pixels) and keeps localizer images mixed
into a series. :func:`spleenseg.dicom.volume.load_series_volume` (highdicom geometry, checked against dcm2niix)
refuses gaps, duplicates and tilt with a message naming the files. What the SEG needs on top is which source
instance each volume slice came from; :func:`sort_and_load` takes it from that same loader
(``VolumeInfo.slice_sources``), so the order is worked out and checked once.
Conventions: highdicom's array is (slice, row, column) with an LPS affine; MONAI/NIfTI want (column, row, slice)
with an RAS affine. :func:`monai_array_and_affine` is the one place that converts.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
import torch

from spleenseg.coords import LPS_TO_RAS
from spleenseg.dicom.scan import is_localizer
from spleenseg.dicom.volume import VolumeInfo, load_series_volume
from spleenseg.errors import GeometryError

log = logging.getLogger(__name__)



def _path(ds: pydicom.Dataset) -> str:
    return str(getattr(ds, "filename", "") or ds.get("SOPInstanceUID", "?"))


def drop_localizers(datasets: Sequence[pydicom.Dataset], series_uid: str) -> list[pydicom.Dataset]:
    """Remove scout/localizer images and images whose orientation differs from the majority, with a warning.

    Some scanners store the scout in the same series as the axial images; a volume must not include it.
    """
    kept = [ds for ds in datasets if not is_localizer(ds)]
    if len(kept) < len(datasets):
        log.warning("series %s: ignoring %d LOCALIZER image(s) stored in the same series",
                    series_uid, len(datasets) - len(kept))
    orientations = Counter(tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)) for ds in kept
                           if "ImageOrientationPatient" in ds)
    if not orientations:
        raise GeometryError(f"series {series_uid}: no image has ImageOrientationPatient, e.g. {_path(datasets[0])}")
    major, _ = orientations.most_common(1)[0]
    same = [ds for ds in kept if "ImageOrientationPatient" in ds
            and tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)) == major]
    if len(same) < len(kept):
        odd = [_path(ds) for ds in kept if ds not in same][:3]
        log.warning("series %s: ignoring %d image(s) with another orientation, e.g. %s",
                    series_uid, len(kept) - len(same), ", ".join(odd))
    return same


def sort_and_load(datasets: Sequence[pydicom.Dataset], series_uid: str) -> tuple[hd.Volume, list[pydicom.Dataset]]:
    """Decode the series into a checked volume (HU, float32) and list its datasets in the volume's slice order.

    The order is the one :func:`load_series_volume` sorted and verified the slices in (``slice_sources``), so
    the SEG frame written for slice k references exactly the instance that slice was read from.
    """
    datasets = drop_localizers(datasets, series_uid)
    if len(datasets) < 2:
        raise GeometryError(f"series {series_uid}: only {len(datasets)} usable slice(s), not a volume")
    info = VolumeInfo(series=series_uid, n_files=len(datasets))
    volume = load_series_volume(list(datasets), info=info)
    if len(info.slice_sources) != volume.spatial_shape[0]:  # e.g. a multi-frame object among the slices
        raise GeometryError(f"series {series_uid}: {volume.spatial_shape[0]} volume slices from {len(datasets)} "
                            f"images (e.g. {_path(datasets[0])}); not one image per slice")
    return volume, [datasets[i] for i in info.slice_sources]


def c_order(array: np.ndarray) -> np.ndarray:
    """C-contiguous copy of a transposed (or any positively strided) array, made by torch: 2-3x faster than
    numpy's for a 512x512x120 volume on two cores (0.16 s vs 0.28 s in float32, 0.08 s vs 0.21 s in uint8)."""
    if array.flags["C_CONTIGUOUS"]:
        return array
    if any(stride < 0 for stride in array.strides):
        return np.ascontiguousarray(array)
    return torch.from_numpy(array).contiguous().numpy()


def monai_array_and_affine(volume: hd.Volume) -> tuple[np.ndarray, np.ndarray]:
    """(column, row, slice) array and its RAS affine, as nibabel/MONAI expect; same voxels, no resampling.

    The array is a C-ordered copy (the SDK's bundle operator would make one anyway), see :func:`c_order`.
    """
    array = c_order(np.transpose(volume.array, (2, 1, 0)))
    affine_ijk_lps = volume.affine[:, [2, 1, 0, 3]]
    return array, LPS_TO_RAS @ affine_ijk_lps

