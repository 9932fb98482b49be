"""Orientation sanity check: the spleen belongs on the patient's left.

Situs inversus is about 1 in 10,000, so a spleen label or prediction whose centroid lies on the patient's right
almost always means a left/right-mirrored header (as in MSD case spleen_8, where the image and its label share
a mirrored affine). We compare the spleen centroid with the centre of the body (voxels of the image above
-500 HU, or the centre of the field of view when no image is given) in RAS patient coordinates, where +x
points to the patient's right: a correctly placed spleen has the smaller x.

``flip_lr_header`` fixes such a header on request: it mirrors the affine about the volume's own left/right
centre (the voxel array is untouched), so image and label stay aligned with each other.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from spleenseg.errors import OrientationWarning

log = logging.getLogger(__name__)

#: Body voxels in CT: everything denser than lung/air.
BODY_HU = -500.0
#: Centroid closer than this to the body midline (mm) is "undecided" (no warning either way).
MIDLINE_MARGIN_MM = 10.0


@dataclass
class SpleenSide:
    """Where the spleen lies, in RAS millimetres."""

    path: str
    centroid_ras: tuple[float, float, float] | None
    midline_x: float
    offset_mm: float | None  # midline x - centroid x (RAS): > 0 = spleen on the patient's left (correct)

    @property
    def side(self) -> str:
        """'left', 'right', 'midline' or 'empty'."""
        if self.offset_mm is None:
            return "empty"
        if abs(self.offset_mm) < MIDLINE_MARGIN_MM:
            return "midline"
        return "left" if self.offset_mm > 0 else "right"


def _as_image(img: str | os.PathLike | nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    return img if isinstance(img, nib.spatialimages.SpatialImage) else nib.load(str(img))


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Mean world position of a 3-D mask's voxels, from per-axis voxel counts (no list of voxel indices: 5x
    faster on a 512x512x120 mask, whatever its memory order)."""
    counts = [mask.sum(axis=tuple(b for b in range(3) if b != a), dtype=np.int64) for a in range(3)]
    idx = np.array([np.dot(np.arange(len(c)), c) for c in counts], dtype=float) / float(counts[0].sum())
    return affine[:3, :3] @ idx + affine[:3, 3]


def spleen_side(label: str | os.PathLike | nib.spatialimages.SpatialImage,
                image: str | os.PathLike | nib.spatialimages.SpatialImage | None = None,
                spleen_value: int = 1, name: str | None = None) -> SpleenSide:
    """Centroid of the spleen (``label == spleen_value``) relative to the body midline, in RAS mm."""
    lab = _as_image(label)
    path = name or str(getattr(lab, "get_filename", lambda: None)() or label)
    data = np.asarray(lab.dataobj)
    mask = data == spleen_value if spleen_value else data > 0
    if image is not None:
        img = _as_image(image)
        body = np.asarray(img.dataobj) > BODY_HU
        midline = float(_world_centroid(body, img.affine)[0]) if body.any() else None
    else:
        midline = None
    if midline is None:  # centre of the field of view
        centre = (np.array(lab.shape[:3]) - 1) / 2.0
        midline = float((lab.affine[:3, :3] @ centre + lab.affine[:3, 3])[0])
    if not mask.any():
        return SpleenSide(path, None, midline, None)
    c = _world_centroid(mask, lab.affine)
    return SpleenSide(path, tuple(float(v) for v in c), midline, float(midline - c[0]))


def check_spleen_left(label: str | os.PathLike | nib.spatialimages.SpatialImage,
                      image: str | os.PathLike | nib.spatialimages.SpatialImage | None = None,
                      spleen_value: int = 1, name: str | None = None) -> SpleenSide:
    """Warn (:class:`OrientationWarning` + log) when the spleen lies on the patient's right; return the result.

    Used by data preparation (``spleenseg-prepare dataset``), evaluation and the deploy app's report.
    """
    result = spleen_side(label, image, spleen_value, name)
    if result.side == "right":
        msg = (f"{result.path}: the spleen centroid lies {abs(result.offset_mm):.0f} mm to the patient's RIGHT "
               f"(RAS x = {result.centroid_ras[0]:.1f} mm, body midline x = {result.midline_x:.1f} mm). The spleen "
               "belongs on the left; the header is probably mirrored left/right (as in MSD spleen_8). Check the "
               "file, or let `spleenseg-prepare dataset --flip-lr` mirror the header.")
        log.warning(msg)
        warnings.warn(msg, OrientationWarning, stacklevel=2)
    return result


def flip_lr_affine(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Affine mirrored about the volume's own left/right centre plane (world x = centre x)."""
    centre = (np.array(shape[:3]) - 1) / 2.0
    cx = float((affine[:3, :3] @ centre + affine[:3, 3])[0])
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[0, 3] = 2 * cx
    return mirror @ affine


def flip_lr_header(img: nib.Nifti1Image, reference_shape: tuple[int, ...] | None = None,
                   reference_affine: np.ndarray | None = None) -> nib.Nifti1Image:
    """A copy of ``img`` whose header is mirrored left/right; the voxel array is unchanged.

    Pass the image's affine/shape as reference when flipping its label, so both mirror about the same plane.
    """
    ref_aff = img.affine if reference_affine is None else reference_affine
    ref_shape = img.shape if reference_shape is None else reference_shape
    new_affine = flip_lr_affine(ref_aff, ref_shape) @ np.linalg.inv(ref_aff) @ img.affine
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), new_affine, img.header.copy())
    out.set_qform(new_affine, code=int(img.header["qform_code"]) or 1)
    out.set_sform(new_affine, code=int(img.header["sform_code"]) or 1)
    return out


def check_files(labels: list[str | os.PathLike], images: list[str | os.PathLike] | None = None) -> list[SpleenSide]:
    """Check several label files (optionally with their images); returns one result per label."""
    images = images or [None] * len(labels)  # type: ignore[list-item]
    return [check_spleen_left(lab, img, name=str(Path(lab))) for lab, img in zip(labels, images)]
