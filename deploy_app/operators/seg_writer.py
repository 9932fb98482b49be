"""DICOM SEG writer built on highdicom with every frame kept and the equipment filled in.

Why not the SDK's ``DICOMSegmentationWriterOperator``: its SEG fails ``dciodvfy`` (an empty Type 1 Manufacturer
in the Contributing Equipment Sequence unless a ``ModelInfo`` is passed), it omits empty frames by default (so
the frame count differs from the source slice count and viewers that index frames by slice shift the mask),
draws a random SeriesNumber, writes only the first selected series and does not tell downstream operators
what it wrote. This writer keeps one frame per source slice (highdicom sorts them along the slice normal), takes
the algorithm name and version from the bundle's ``metadata.json`` and emits a :class:`SegResult` for the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np

from monai.deploy.core import Fragment, Image, Operator, OperatorSpec

from deploy_app.handoff import SEG_RESULT, SERIES_VOLUME, SegResult, SeriesVolume
from deploy_app.qa import QA_OUTPUT, settle_no_spleen, unwrap_qa
from deploy_app.volume_io import c_order
from spleenseg.atomic import atomic_write_bytes
from spleenseg.dicom.seg import spleen_segment_description
from spleenseg.dicom.volume import detached_copy

log = logging.getLogger(__name__)

SERIES_DESCRIPTION = "Spleen SEG (AI) - not for clinical use"
#: Manufacturer of the SEG (Type 1 in the Contributing Equipment Sequence: must not be empty for dciodvfy).
MANUFACTURER = "spleenseg"
#: Offset added to the source SeriesNumber so the SEG sorts next to its source in a viewer.
SERIES_NUMBER_OFFSET = 1000


@dataclass
class AlgorithmInfo:
    """Who made the mask: from the bundle's metadata.json."""

    name: str
    version: str


def with_slice_thickness(source: list) -> list:
    """``source``, its first dataset replaced by a copy that has a SliceThickness when it has none.

    Why: the loader blanks a SliceThickness that is not a number ("abc", "1,5"), and highdicom copies the first
    source's into the SEG's Pixel Measures, which need one (Type 1C: dciodvfy refuses it empty; highdicom
    replaces a ``pixel_measures`` argument whose spacing equals the source's by the source's own). The distance
    between neighbouring source slices stands in for it: the depth each SEG frame covers on the source grid.
    The caller's datasets are not changed.
    """
    first = source[0]
    if first.get("SliceThickness") not in (None, ""):
        return source
    row, col = np.asarray(first.ImageOrientationPatient, float).reshape(2, 3)
    depth = np.sort([np.dot(np.cross(row, col), np.asarray(ds.ImagePositionPatient, float)) for ds in source])
    spacing = float(np.median(np.diff(depth))) if len(source) > 1 else float(first.get("SpacingBetweenSlices") or 1)
    copy = detached_copy(first)
    if "SliceThickness" in copy:
        del copy.SliceThickness
    copy.SliceThickness = round(spacing, 6)
    return [copy, *source[1:]]


def build_seg(mask: np.ndarray, source: list, algorithm: AlgorithmInfo) -> hd.seg.Segmentation:
    """BINARY SEG with one frame per source slice (empty frames kept), segment 1 "Spleen" (SNOMED CT category
    Organ, type Spleen, automatic AI algorithm).

    ``mask`` is (slice, row, column) with slices in ``source`` order. highdicom stores the frames sorted along
    the slice normal; each frame carries its source's position and references its source instance.
    """
    first = source[0]
    expected = (len(source), int(first.Rows), int(first.Columns))
    if mask.shape != expected:
        raise RuntimeError(f"internal error: mask shape {mask.shape} does not match the source series {expected}")
    number = first.get("SeriesNumber")
    return hd.seg.Segmentation(
        source_images=with_slice_thickness(source),
        pixel_array=np.ascontiguousarray(mask, dtype=bool),  # C order: highdicom encodes frame by frame, 2x faster
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[spleen_segment_description(algorithm.name, algorithm.version, tracking_id="spleen")],
        series_instance_uid=hd.UID(),
        series_number=(int(number) if number not in (None, "") else 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.version[:64] or "0",
        series_description=SERIES_DESCRIPTION,
        content_label="SPLEEN",
        content_description="Automatic spleen segmentation, not for clinical use",
        content_creator_name="spleenseg^AI",
        omit_empty_frames=False,
    )


class SpleenSegWriterOperator(Operator):
    """Inputs: ``seg_image`` (the bundle's mask, slice/row/column), ``spleen_qa`` (the bundle's QA dict) and the
    series' :class:`SeriesVolume`.

    Output ``seg_result``: a :class:`SegResult`. When no spleen was found no SEG is written (its ``seg`` and
    ``path`` are ``None``): an empty SEG reads as "spleen 0 mL" in a viewer.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, algorithm: AlgorithmInfo, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.algorithm = algorithm
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("seg_image")
        spec.input(QA_OUTPUT)
        spec.input(SERIES_VOLUME)
        spec.output(SEG_RESULT)

    def compute(self, op_input, op_output, context):
        seg_image: Image = op_input.receive("seg_image")
        qa = unwrap_qa(op_input.receive(QA_OUTPUT))
        series: SeriesVolume = op_input.receive(SERIES_VOLUME)
        op_output.emit(self.write(seg_image.asnumpy(), series, qa), SEG_RESULT)

    def write(self, mask: np.ndarray, series: SeriesVolume, qa: dict[str, Any]) -> SegResult:
        """Write ``SEG_<source series UID>.dcm`` unless no spleen was found; return what the report needs."""
        source = list(series.sources)
        mask = c_order(np.asarray(mask)) > 0  # one C-ordered copy for the SEG and the report
        qa = settle_no_spleen(qa, bool(mask.any()))
        if qa["flags"]["no_spleen"]:  # an empty SEG would read as "spleen 0 mL" in a viewer
            log.warning("series %s: no spleen found; no SEG written for it", series.series_uid)
            return SegResult(series=series, mask=mask, qa=qa)
        seg = build_seg(mask, source, self.algorithm)
        path = self.output_folder / f"SEG_{series.series_uid}.dcm"
        atomic_write_bytes(path, seg.save_as, ".dcm")  # a full disk: OutputError naming the file
        log.info("wrote %s: %d frames, %d spleen voxels", path.name, int(seg.NumberOfFrames), int(mask.sum()))
        return SegResult(series=series, mask=mask, qa=qa, seg=seg, path=path)
