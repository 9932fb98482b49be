"""Label sources → label maps aligned voxel for voxel with their image.

- DICOM SEG: read with highdicom, checked against the source series UIDs, and placed into the image grid
  with ``Volume.match_geometry`` (pad/crop/permute only, never resampled: a SEG is defined on the image grid).
- NIfTI / NRRD label maps in another grid: nearest-neighbour resampling into the image grid, after checking that
  the label's foreground lies inside the image (otherwise the two do not cover the same space).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.sr.codedict import codes

from spleenseg.errors import GeometryError, InputError

log = logging.getLogger(__name__)



def spleen_segment_description(algorithm_name: str, algorithm_version: str, *,
                               family: Any = codes.cid7162.ArtificialIntelligence,
                               tracking_id: str | None = None) -> hd.seg.SegmentDescription:
    """Segment 1, "Spleen" (SNOMED CT category Organ, type Spleen), made by an automatic algorithm.

    One definition for every SEG the project writes (deploy app, phantoms, tests), so that viewers and PACS see
    the same coded concept whoever wrote the file. ``family`` is a CID 7162 code (AI for a model, morphological
    operations for a label made by construction); ``tracking_id`` adds a tracking ID and a fresh tracking UID.
    """
    tracking = {"tracking_id": tracking_id, "tracking_uid": hd.UID()} if tracking_id else {}
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Spleen",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Spleen,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name[:64], family=family, version=algorithm_version[:64]),
        **tracking,
    )


def referenced_series_uids(seg: hd.seg.Segmentation) -> set[str]:
    """Series Instance UIDs the SEG says it was drawn on."""
    uids = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        uids |= {str(item.SeriesInstanceUID) for item in study.get("ReferencedSeriesSequence", [])}
    return uids


def read_seg_labels(seg_path: str | os.PathLike, image: hd.Volume, image_series_uid: str | None = None,
                    ) -> hd.Volume:
    """A DICOM SEG as a label map (uint8, 0 = background, segment number elsewhere) in ``image``'s grid.

    ``image`` is the source series as a :class:`highdicom.Volume` (from :func:`load_series_volume`). When
    ``image_series_uid`` is given, the SEG must reference that series (else :class:`InputError`).
    """
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{seg_path}: not a readable DICOM SEG ({exc})") from exc
    refs = referenced_series_uids(seg)
    if image_series_uid and refs and image_series_uid not in refs:
        raise InputError(f"{seg_path}: the SEG references series {sorted(refs)}, not the image series "
                         f"{image_series_uid}")
    try:
        labels = seg.get_volume(combine_segments=True, dtype=np.uint8)
    except (ValueError, RuntimeError) as exc:
        raise GeometryError(f"{seg_path}: the SEG frames do not form one regular volume: {exc}") from exc
    if labels.frame_of_reference_uid and image.frame_of_reference_uid and \
            labels.frame_of_reference_uid != image.frame_of_reference_uid:
        raise InputError(f"{seg_path}: frame of reference {labels.frame_of_reference_uid} differs from the "
                         f"image's {image.frame_of_reference_uid}")
    try:
        return labels.match_geometry(image.get_geometry() if hasattr(image, "get_geometry") else image)
    except RuntimeError as exc:
        raise GeometryError(f"{seg_path}: the SEG grid cannot be placed on the image grid without resampling "
                            f"({exc})") from exc


def load_label_image(path: str | os.PathLike) -> nib.Nifti1Image:
    """Read a NIfTI or NRRD label map as a nibabel image with a RAS affine."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such label file")
    if path.suffix == ".nrrd":
        return _nrrd_as_nifti(path)
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)  # now, so data cut short fails here, with the file's name
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable NIfTI label map ({exc})") from exc
    return nib.Nifti1Image(data, img.affine, img.header)


def _nrrd_as_nifti(path: Path) -> nib.Nifti1Image:
    """NRRD → NIfTI with ``monai.data.NrrdReader`` (which turns an LPS affine into RAS), after checking what it
    would assume silently: a 3D map whose named space is LPS or RAS (NrrdReader takes a missing or other space
    for LPS)."""
    from monai.data import NrrdReader

    reader = NrrdReader(dtype=np.int32)
    try:
        image = reader.read(str(path))
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, EOFError... on foreign files
        raise InputError(f"{path}: not a readable NRRD label map ({exc})") from exc
    header = image.header
    space = str(header.get("space", "")).lower()
    if image.array.ndim != 3 or "space directions" not in header or "space origin" not in header:
        raise InputError(f"{path}: NRRD label map must be 3D with 'space directions' and 'space origin'")
    if space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras"):
        raise InputError(f"{path}: NRRD space {space!r} is not LPS or RAS; cannot place it in the patient")
    if space == "lps":  # the short form, which NrrdReader does not recognise
        header["space"] = "left-posterior-superior"
    if space == "ras":
        header["space"] = "right-anterior-superior"
    data, meta = reader.get_data(image)
    return nib.Nifti1Image(np.asarray(data), np.asarray(meta["affine"], float))


def resample_label_to_image(label: nib.Nifti1Image, image: nib.Nifti1Image, name: str = "label",
                            atol_mm: float = 1e-3) -> nib.Nifti1Image:
    """Nearest-neighbour resampling of a label map into the image grid (identity when the grids agree).

    Raises :class:`GeometryError` when some labelled voxels fall outside the image: then the two files do
    not cover the same space (wrong pairing, or a mirrored / shifted header).
    """
    data = np.asarray(label.dataobj)
    if label.shape[:3] == image.shape[:3] and np.allclose(label.affine, image.affine, atol=atol_mm):
        return nib.Nifti1Image(data.astype(np.uint8), image.affine, image.header)
    # where does each labelled voxel land in the image?
    fg = np.argwhere(data > 0)
    if fg.size:
        world_to_img = np.linalg.inv(image.affine) @ label.affine
        idx = fg @ world_to_img[:3, :3].T + world_to_img[:3, 3]
        inside = np.all((idx > -0.5) & (idx < np.array(image.shape[:3]) - 0.5), axis=1)
        if inside.mean() < 0.99:
            raise GeometryError(f"{name}: {100 * (1 - inside.mean()):.1f}% of the labelled voxels fall outside "
                                "the image; label and image do not cover the same space")
    from nibabel.processing import resample_from_to

    # "grid-constant": a sample a rounding error past the last voxel still takes that voxel ("constant" would
    # blank the edge slices of a grid that only differs by float noise); samples beyond it are 0

    source = nib.Nifti1Image(data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data, label.affine)
    out = np.asarray(resample_from_to(source, (image.shape[:3], image.affine), order=0, mode="grid-constant",
                                      cval=0).dataobj)
    log.info("%s: resampled (nearest neighbour) from %s into the image grid %s", name, label.shape, image.shape)
    return nib.Nifti1Image(out.astype(np.uint8), image.affine, image.header)
