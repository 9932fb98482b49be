"""Write a highdicom Volume as NIfTI (RAS affine, smallest exact dtype) plus a JSON side-car, atomically.

Axis convention of the written array: i = DICOM columns (row direction), j = DICOM rows (column direction),
k = slices in ascending order along the slice normal. That is ITK's convention; NIfTI readers (nibabel, MONAI,
ITK-SNAP) all place it correctly because the affine carries the geometry (LPS → RAS is done by highdicom).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np

from spleenseg.atomic import atomic_write_all, atomic_write_bytes

#: Integer types tried in order; the first that holds every value exactly is stored.
_INT_TYPES = (np.int16, np.uint16, np.int32)


def exact_storage_dtype(array: np.ndarray) -> np.dtype:
    """int16 (or uint16/int32) when every value is an integer in range, float32 otherwise.

    Rescaled CT values (slope 1, integer intercept) are integers: storing them as int16 halves the file and
    loses nothing. A slope like 0.5 gives fractions: float32 keeps them.
    """
    if array.size == 0 or not np.all(np.isfinite(array)):
        return np.dtype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
    else:
        if not np.array_equal(array, np.round(array)):
            return np.dtype(np.float32)
        lo, hi = float(array.min()), float(array.max())
    for dtype in _INT_TYPES:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def to_ras_nifti(volume: hd.Volume, dtype: np.dtype | None = None) -> nib.Nifti1Image:
    """NIfTI image of a volume in the (columns, rows, ascending slices) layout described above."""
    vol = volume.permute_spatial_axes([2, 1, 0])  # (slice, row, col) -> (col, row, slice)
    normal = np.cross(*[c / np.linalg.norm(c) for c in (vol.affine[:3, 0], vol.affine[:3, 1])])
    if float(np.dot(normal, vol.affine[:3, 2])) < 0:  # highdicom stacks slices against the normal
        vol = vol.flip_spatial(2)
    target = np.dtype(dtype) if dtype is not None else exact_storage_dtype(vol.array)
    if vol.dtype != target:
        vol = vol.with_array(vol.array.astype(target))
    img = vol.to_nibabel()
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)  # scanner coordinates, as dcm2niix writes them
    img.set_sform(img.affine, code=1)
    return img


def save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """Save a NIfTI image atomically (``.nii`` or ``.nii.gz`` from the name)."""
    atomic_write_bytes(path, lambda tmp: nib.save(img, tmp), _nifti_suffix(path))


def _nifti_suffix(path: str | os.PathLike) -> str:
    return ".nii.gz" if str(path).endswith(".gz") else ".nii"


def write_json(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a JSON file atomically (sorted keys: deterministic output)."""
    atomic_write_bytes(path, lambda tmp: _dump_json(data, tmp), ".json")


def _dump_json(data: dict[str, Any], tmp: str | os.PathLike) -> None:
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def volume_to_nifti(volume: hd.Volume, path: str | os.PathLike, sidecar: dict[str, Any] | None = None,
                    dtype: np.dtype | None = None) -> nib.Nifti1Image:
    """Write ``volume`` to ``path`` (NIfTI, RAS) and, if given, ``sidecar`` next to it as ``<name>.json``.

    Returns the written image. The side-car gets the stored dtype, shape, spacing and RAS affine added.
    """
    img = to_ras_nifti(volume, dtype)
    if sidecar is None:
        save_nifti(img, path)
        return img
    meta = dict(sidecar)
    meta.update({
        "stored_dtype": str(img.get_data_dtype()),
        "shape": list(img.shape),
        "spacing_mm": [float(z) for z in img.header.get_zooms()[:3]],
        "affine_ras": np.round(img.affine, 6).tolist(),
        "voxel_axis_directions": "".join(nib.aff2axcodes(img.affine)),  # where i, j, k point (RAS names)
    })
    atomic_write_all([(path, lambda tmp: nib.save(img, tmp), _nifti_suffix(path)),
                      (sidecar_path(path), lambda tmp: _dump_json(meta, tmp), ".json")])
    return img


def sidecar_path(nifti_path: str | os.PathLike) -> Path:
    """``x.nii.gz`` → ``x.json`` (as dcm2niix names its BIDS side-cars)."""
    p = Path(nifti_path)
    name = p.name[:-7] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(name + ".json")
