"""End to end: Orthanc → node → the real deploy app (``deploy_app.run``, Holoscan) → SEG back in Orthanc.

The model is the project's bundle with weights set so that every voxel is "spleen": the point here is that
the real app runs inside the node's job process on a study that came over DICOM and that its SEG reaches the
PACS conformant and complete; whether the mask is right is the app's own tests' job (Dice on the phantom).
"""

from __future__ import annotations

import json
from pathlib import Path

from testkit.constant_model import constant_output_bundle
from testkit.node import dciodvfy_errors, free_port, send_study_from_orthanc, wait_for, wait_for_seg
from spleenseg.paths import BUNDLE_DIR


def _all_foreground_bundle(dest: Path) -> Path:
    """The bundle with weights that predict class 1 everywhere (deterministic, instant)."""
    return constant_output_bundle(BUNDLE_DIR, dest, background=-5.0, spleen=5.0)


def test_real_app_behind_the_node(orthanc_factory, node_factory, tiny_dicom_series, tmp_path: Path) -> None:
    model = _all_foreground_bundle(tmp_path / "bundle")
    node_port = free_port()
    orthanc = orthanc_factory(node_port)
    node = node_factory(port=node_port, pipeline="deploy_app:run", model_path=str(model), destination={
        "host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": orthanc.aet})

    send_study_from_orthanc(orthanc, tiny_dicom_series.paths)
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(wait_for_seg(orthanc, timeout=180))

    assert dciodvfy_errors(seg_path) == []
    import highdicom as hd
    import pydicom

    ct = pydicom.dcmread(tiny_dicom_series.paths[0], stop_before_pixels=True)
    seg = hd.seg.segread(seg_path)
    assert seg.StudyInstanceUID == ct.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    assert seg.NumberOfFrames == len(tiny_dicom_series.paths), "one frame per source slice"
    [done] = wait_for(lambda: node.jobs("done"), 10, "the job to reach done/")
    report = json.loads((done / "output" / "spleen_report.json").read_text())
    assert report["series"][0]["seg_file"]
    assert node.jobs("failed") == []
