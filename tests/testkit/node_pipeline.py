"""A small real pipeline for the node's tests: threshold the received CT and write a real DICOM SEG.

Why not the deploy app: these tests are about the node's mechanics (receive, queue, retry, restart), and a
pipeline that runs in ~1 s keeps them fast. It still builds the SEG with highdicom from the received files,
checks the series geometry like the app does, and fails loudly on a broken series, so the round trip through
Orthanc is real. Like the app it writes ``spleen_report.json`` (volume and a QA block) and, when nothing is
above the threshold, no SEG and a result with no SEG files (the node's "nothing to send"). Imported by the
node's pipeline child process (``testkit.node_pipeline:threshold_seg``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from deploy_app.runner import REPORT_NAME, RunResult
from spleenseg.dicom.seg import spleen_segment_description
from spleenseg.errors import GeometryError, InputError

THRESHOLD_HU = 30.0


def threshold_seg(input_dir: str, output_dir: str, model_path: str | None = None, delay_seconds: float = 0.0,
                  **_: Any) -> RunResult:
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
    mask = hu > THRESHOLD_HU
    out = Path(output_dir) / "seg.dcm"
    report = _write_report(Path(output_dir), datasets, mask, out.name if mask.any() else None)
    path = Path(output_dir) / REPORT_NAME
    if not mask.any():
        return RunResult(Path(output_dir), [], path, report, [path])
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=mask.astype(np.uint8),
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
    seg.save_as(out)
    return RunResult(Path(output_dir), [out], path, report, [out, path])


def _write_report(folder: Path, datasets: list[pydicom.Dataset], mask: np.ndarray,
                  seg_file: str | None) -> dict[str, Any]:
    """``spleen_report.json`` with the fields the node reads: volume from the mask, a QA verdict and flags."""
    voxel_ml = float(datasets[0].PixelSpacing[0]) * float(datasets[0].PixelSpacing[1]) * float(
        datasets[0].SliceThickness) / 1000.0
    found = bool(mask.any())
    qa = {"flags": {"no_spleen": not found}, "messages": [] if found else ["no spleen found"],
          "verdict": "ok" if found else "no spleen found"}
    series = {"series_instance_uid": str(datasets[0].SeriesInstanceUID),
              "spleen_volume_ml": round(int(mask.sum()) * voxel_ml, 3), "seg_file": seg_file, "qa": qa}
    report = {"series": [series]}
    (folder / REPORT_NAME).write_text(json.dumps(report))
    return report


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
