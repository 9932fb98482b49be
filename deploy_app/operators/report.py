"""What users expect beside the SEG: ``spleen_report.json`` and, on request, an STL surface and the NIfTI mask.

Why our own operator: the SDK has no report operator, and its ``STLConversionOperator`` needs SimpleITK and
trimesh (not dependencies here) and resamples the mask before meshing. Everything here is computed on the
mask at the source's own voxel grid, in DICOM patient coordinates (LPS, mm).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np

from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.transforms.utils import generate_spatial_bounding_box
from deploy_app.handoff import SEG_RESULT, SegResult
from deploy_app.qa import log_qa
from deploy_app.runner import REPORT_NAME
from spleenseg.atomic import atomic_write_bytes
from spleenseg.dicom.nifti import save_nifti, to_ras_nifti
from spleenseg.orientation import spleen_side

log = logging.getLogger(__name__)


def mask_measurements(mask: np.ndarray, affine_lps: np.ndarray, instance_numbers: list) -> dict[str, Any]:
    """Volume, bounding box and craniocaudal length of a (slice, row, column) mask with its LPS affine.

    The bounding box is over voxel centres (LPS mm); the craniocaudal length is the extent of the voxel
    centres along the patient's S axis plus one voxel's extent along that axis.
    """
    voxel_ml = abs(float(np.linalg.det(affine_lps[:3, :3]))) / 1000.0
    start, end = generate_spatial_bounding_box(mask[None], select_fn=lambda m: m)  # then work inside the box only
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, end))
    inside = mask[box]
    count = int(np.count_nonzero(inside))
    slices = box[0].start + np.flatnonzero(inside.any(axis=(1, 2)))
    out: dict[str, Any] = {
        "spleen_voxels": count, "voxel_volume_ml": voxel_ml, "spleen_volume_ml": round(count * voxel_ml, 3),
        "slices_with_spleen": len(slices),
        "instance_numbers_with_spleen": [None if instance_numbers[k] in (None, "") else int(instance_numbers[k])
                                         for k in slices],
        "bbox_lps_mm": None, "bbox_size_mm": None, "craniocaudal_length_mm": 0.0,
    }
    if count:
        idx = np.argwhere(inside).T + np.array([[b.start] for b in box])  # (3, n): slice, row, column
        lps = affine_lps[:3, :3] @ idx + affine_lps[:3, 3:4]
        low, high = lps.min(axis=1), lps.max(axis=1)
        voxel_extent = np.abs(affine_lps[:3, :3]).sum(axis=1)
        out.update({
            "bbox_lps_mm": {"min": np.round(low, 2).tolist(), "max": np.round(high, 2).tolist()},
            "bbox_size_mm": np.round(high - low + voxel_extent, 2).tolist(),
            "craniocaudal_length_mm": round(float(high[2] - low[2] + voxel_extent[2]), 2),
        })
    return out


def write_stl(mask: np.ndarray, affine_lps: np.ndarray, path: Path) -> None:
    """Surface mesh (marching cubes at 0.5) in LPS millimetres, as 3D Slicer reads STL by default; written
    atomically (an OS error is :class:`~spleenseg.errors.OutputError` naming ``path``)."""
    from skimage.measure import marching_cubes
    from stl import mesh

    padded = np.pad(mask.astype(np.uint8), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    verts = (affine_lps[:3, :3] @ (verts - 1).T + affine_lps[:3, 3:4]).T
    surface = mesh.Mesh(np.zeros(len(faces), dtype=mesh.Mesh.dtype))
    surface.vectors[:] = verts[faces]
    atomic_write_bytes(path, lambda tmp: surface.save(str(tmp)), ".stl")


def mask_nifti(mask: np.ndarray, affine_lps: np.ndarray) -> nib.Nifti1Image:
    """The mask as uint8 NIfTI on the source's voxel grid, laid out and labelled like the project's other NIfTI
    files (:func:`spleenseg.dicom.nifti.to_ras_nifti`: column, row, ascending slice; RAS affine in qform and
    sform, code 1; mm).

    The voxels are a view of ``mask`` (a bool mask is viewed as uint8), not a copy of the volume.
    """
    data = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8, copy=False)
    return to_ras_nifti(hd.Volume(data, affine_lps, "PATIENT"), np.uint8)


def write_nifti(mask: np.ndarray, affine_lps: np.ndarray, path: Path) -> None:
    """Save :func:`mask_nifti` to ``path`` (atomically)."""
    save_nifti(mask_nifti(mask, affine_lps), path)


def spleen_side_entry(mask: np.ndarray, affine_lps: np.ndarray, series_uid: str) -> dict[str, Any]:
    """Where the mask lies relative to the centre of the field of view (which scanners centre on the patient),
    measured on the source grid.

    Only a measurement: whether a right-sided spleen means a mirrored header is the bundle's QA judgement
    (``qa.flags.header_mirrored`` from the liver's side, ``anatomy_unsure`` when spleen candidate and liver lie
    on the same side), not this field's, so nothing is logged here.
    """
    side = spleen_side(mask_nifti(mask, affine_lps), name=f"series {series_uid}")
    return {"spleen_side": side.side,
            "spleen_left_of_midline_mm": None if side.offset_mm is None else round(side.offset_mm, 1)}


class SpleenReportOperator(Operator):
    """Consumes each ``seg_result`` and (re)writes ``spleen_report.json`` with every series done so far."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, model: dict[str, str], stl: bool = False,
                 nifti: bool = False, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.model = model
        self.stl, self.nifti = stl, nifti
        self.entries: list[dict[str, Any]] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(SEG_RESULT)

    def compute(self, op_input, op_output, context):
        self.add(op_input.receive(SEG_RESULT))

    def add(self, result: SegResult) -> None:
        """Measure, write the optional STL/NIfTI, log the QA flags, then rewrite the report.

        A series without a SEG (no spleen found) is listed all the same, with its QA block and ``seg_file``
        null, and gets no STL or NIfTI either: an empty mask file would read as a 0 mL spleen too.
        """
        series, mask, seg, qa = result.series, result.mask, result.seg, result.qa
        affine, first, uid = series.affine_lps, series.sources[0], series.series_uid
        entry: dict[str, Any] = {
            "patient_id": str(first.get("PatientID", "")),
            "study_instance_uid": str(first.StudyInstanceUID),
            "series_instance_uid": uid,
            "series_number": first.get("SeriesNumber"),
            "series_description": str(first.get("SeriesDescription", "")),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            "slices": len(series.sources),
            "seg_file": None if result.path is None else result.path.name,
            "seg_series_instance_uid": None if seg is None else str(seg.SeriesInstanceUID),
            "seg_sop_instance_uid": None if seg is None else str(seg.SOPInstanceUID),
            "generated_uids": dict(series.generated_uids),
            **mask_measurements(mask, affine, [ds.get("InstanceNumber") for ds in series.sources]),
            **spleen_side_entry(mask, affine, uid),
            "qa": qa,
        }
        log_qa(uid, qa)
        if self.stl and seg is not None:
            entry["stl_file"] = f"spleen_{uid}.stl"
            write_stl(mask, affine, self.output_folder / entry["stl_file"])
        if self.nifti and seg is not None:
            entry["nifti_file"] = f"spleen_pred_{uid}.nii.gz"
            write_nifti(mask, affine, self.output_folder / entry["nifti_file"])
        self.entries.append(entry)
        log.info("series %s: spleen %.1f mL on %d slice(s), craniocaudal %.1f mm", uid, entry["spleen_volume_ml"],
                 entry["slices_with_spleen"], entry["craniocaudal_length_mm"])
        report = {"model": self.model, "series": self.entries}  # deploy_app.run() adds run_time_s, end to end
        text = json.dumps(report, indent=1, default=str)
        atomic_write_bytes(self.output_folder / REPORT_NAME, lambda tmp: Path(tmp).write_text(text), ".json")
