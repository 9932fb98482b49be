"""DICOM in: scan folders, group instances into series, build volumes (highdicom), write NIfTI, read SEG.

Public API (stable; the deploy app and the scripts use it)::

    from spleenseg.dicom import scan_dicom, load_series_volume, volume_to_nifti

    groups = scan_dicom("incoming/")            # headers only; warnings for non-DICOM files and blank UIDs
    for g in groups:                            # SeriesGroup: one candidate volume, files sorted along the normal
        if g.modality == "CT" and g.is_image_volume:
            vol = load_series_volume(g)         # highdicom.Volume, LPS affine, rescaled float32 values
            volume_to_nifti(vol, f"out/{g.name}.nii.gz", sidecar=g.to_dict())

- :func:`scan_dicom` ``(folder) -> list[SeriesGroup]``: reads headers only (``stop_before_pixels``), skips
  non-DICOM files with a warning, groups by Patient/Study/Series Instance UID, splits a series UID holding
  several orientations, image sizes or repeated acquisitions, drops duplicate SOP Instance UIDs. Blank UIDs
  (badly anonymised exports) are derived from the file meta and stable attributes, with a warning.
- :func:`load_series_volume` ``(group | folder | paths | datasets, resample=False) -> highdicom.Volume``:
  sorts by the projection of ImagePositionPatient on the slice normal; raises
  :class:`spleenseg.errors.GeometryError` naming the series and the problem (gaps, duplicate positions, mixed
  orientation, gantry tilt) unless ``resample=True``. Enhanced multi-frame objects are supported.
- :func:`volume_to_nifti` ``(volume, path, sidecar=None)``: NIfTI with RAS affine, int16 when exact (else
  float32), written atomically, optional JSON side-car.
- :func:`read_seg_labels` ``(seg_path, image_volume, image_series_uid=None) -> highdicom.Volume``: a DICOM
  SEG as a uint8 label map on the source image's grid (checked against the series UID, never resampled).

Folder-level jobs (the ``spleenseg-prepare`` commands) live in :mod:`spleenseg.dicom.convert`: ``group_folder``,
``convert_folder``, ``labels_to_nifti``.
"""

from __future__ import annotations

from spleenseg.dicom.nifti import exact_storage_dtype, sidecar_path, to_ras_nifti, volume_to_nifti
from spleenseg.dicom.scan import InstanceHeader, SeriesGroup, chunk_group, read_header, scan_dicom
from spleenseg.dicom.seg import read_seg_labels
from spleenseg.dicom.volume import VolumeInfo, load_series_volume

__all__ = [
    "InstanceHeader",
    "SeriesGroup",
    "VolumeInfo",
    "chunk_group",
    "exact_storage_dtype",
    "load_series_volume",
    "read_header",
    "read_seg_labels",
    "scan_dicom",
    "sidecar_path",
    "to_ras_nifti",
    "volume_to_nifti",
]
