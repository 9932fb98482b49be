"""NIfTI output of a phantom: int16 HU image and uint8 label sharing one RAS+ affine (nibabel convention)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from spleenseg.atomic import atomic_file
from spleenseg.phantom.anatomy import Phantom


def _nifti(data: np.ndarray, affine: np.ndarray, dtype: type) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    # qform and sform both "scanner anatomical", so every reader (ITK, dcm2niix-style tools) sees the same grid
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"spleenseg synthetic CT phantom"
    return img


def write_nifti(ph: Phantom, image_path: str | Path, label_path: str | Path | None = None, *,
                organs: bool = False) -> list[Path]:
    """Write the image (int16 HU) and optionally the label (uint8, 1 = spleen); returns the written paths.

    ``organs``: the label holds every organ of :data:`spleenseg.phantom.anatomy.ORGAN_LABELS` instead of the
    spleen alone (multi-organ training).

    Files appear atomically (written under a temporary name, then renamed). Output is byte-for-byte
    deterministic (nibabel's gzip writer stores no time stamp or file name).
    """
    written = []
    with atomic_file(Path(image_path)) as tmp:
        nib.save(_nifti(ph.image, ph.affine, np.int16), tmp)
    written.append(Path(image_path))
    if label_path is not None:
        with atomic_file(Path(label_path)) as tmp:
            nib.save(_nifti(ph.organ_labels() if organs else ph.label, ph.affine, np.uint8), tmp)
        written.append(Path(label_path))
    return written
