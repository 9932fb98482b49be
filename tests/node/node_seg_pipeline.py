"""A small real pipeline for the node's tests: threshold the received CT and write a real DICOM SEG.

Why not the deploy app: these tests are about the node's mechanics (receive, queue, retry, restart), and a
pipeline that runs in ~1 s keeps them fast. It still builds the SEG with highdicom from the received files,
checks the series geometry like the app does, and fails loudly on a broken series, so the round trip through
Orthanc is real. Imported by the node's pipeline child process (``node_seg_pipeline:threshold_seg``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from spleenseg.dicom.seg import spleen_segment_description
from spleenseg.errors import GeometryError, InputError

THRESHOLD_HU = 30.0


def threshold_seg(input_dir: str, output_dir: str, model_path: str | None = None, delay_seconds: float = 0.0,
                  **_: Any) -> None:
    """Segment voxels above :data:`THRESHOLD_HU` as "Spleen"; one SEG frame per CT slice, in slice order."""
    files = sorted(Path(input_dir).glob("*.dcm"))
    if not files:
        raise InputError(f"{input_dir}: no DICOM files")
    datasets = [pydicom.dcmread(f) for f in files]
    try:
        hd.get_volume_from_series(datasets)  # refuses gaps and irregular spacing, like the app
    except (ValueError, RuntimeError) as exc:
        raise GeometryError(f"{input_dir}: series {datasets[0].SeriesInstanceUID} is not a regular volume: "
                            f"{exc}") from exc
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    datasets.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    time.sleep(delay_seconds)  # lets a test kill the node while this study is running
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=(hu > THRESHOLD_HU).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_spleen_segment()],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="spleenseg tests",
        manufacturer_model_name="node threshold pipeline",
        software_versions="1",
        device_serial_number="0",
        omit_empty_frames=False,
        series_description="threshold test SEG - not for clinical use",
    )
    out = Path(output_dir) / "seg.dcm"
    seg.save_as(out)


def _spleen_segment() -> hd.seg.SegmentDescription:
    return spleen_segment_description("threshold", "1")


# ---- pipelines that misbehave, for the runner's tests ---------------------------------------------------------
def failing(input_dir: str, output_dir: str, model_path: str | None = None, **_: Any) -> None:
    raise InputError(f"{input_dir}: no CT series matches the selection rules")


def sleeping(input_dir: str, output_dir: str, model_path: str | None = None, seconds: float = 60.0,
             **_: Any) -> None:
    time.sleep(seconds)


def crashing(input_dir: str, output_dir: str, model_path: str | None = None, **_: Any) -> None:
    import os

    os._exit(139)  # what a segfault in native code looks like from the parent
