"""A second SEG reader: dcmjs under node (``tests/js/read_seg.js``) reads the app's SEG of the end-to-end run and
the whole study folder it came from (every series, scout and secondary capture included).

Every frame must reference an image of the segmented CT series and sit on it in patient coordinates (the
frame's ImagePositionPatient and orientation equal the referenced CT's, same frame of reference), every CT image
is referenced by exactly one frame, the segment carries its codes (SCT 78961009 Spleen, category SCT 91772007
Organ), and the foreground pixels dcmjs's bytes give per frame are highdicom's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from testkit.deploy import seg_frames
from spleenseg.paths import REPO_ROOT

JS_DIR = REPO_ROOT / "tests" / "js"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: .ci/run installs it (Debian: apt-get install nodejs npm)")
    if not (JS_DIR / "node_modules" / "dcmjs").is_dir():
        pytest.fail(f"dcmjs not installed in {JS_DIR}: run `make setup` (npm ci --prefix tests/js --ignore-scripts)")
    return node


def read_with_dcmjs(node: str, seg: Path, *sources: Path) -> dict:
    proc = subprocess.run([node, str(JS_DIR / "read_seg.js"), str(seg), *map(str, sources)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def locked_dcmjs_version() -> str:
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    return lock["packages"]["node_modules/dcmjs"]["version"]


@pytest.mark.parametrize("patient", ["a", "b"])
def test_dcmjs_reads_each_frame_on_its_referenced_ct_image_with_the_spleen_codes(node, e2e_result, phantom_study,
                                                                                  patient):
    ct_paths = phantom_study["a_thin" if patient == "a" else "b_ct"]
    cts = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths)}
    series_uid = str(next(iter(cts.values())).SeriesInstanceUID)
    entry = next(e for e in e2e_result.report["series"] if e["series_instance_uid"] == series_uid)
    seg_path = e2e_result.output_dir / entry["seg_file"]

    out = read_with_dcmjs(node, seg_path, phantom_study["folder"])

    assert out["reader"] == f"dcmjs {locked_dcmjs_version()}"
    assert out["skipped"] == []  # every file of the study folder parsed
    seg = out["seg"]
    assert (seg["Modality"], seg["SOPClassUID"], seg["SegmentationType"]) == ("SEG", SEGMENTATION_STORAGE, "BINARY")
    frame_of_reference = str(next(iter(cts.values())).FrameOfReferenceUID)
    assert seg["FrameOfReferenceUID"] == frame_of_reference
    assert seg["StudyInstanceUID"] == str(next(iter(cts.values())).StudyInstanceUID)

    # the one segment and its codes
    spleen = {"SegmentNumber": 1, "SegmentLabel": "Spleen", "SegmentAlgorithmType": "AUTOMATIC",
              "SegmentAlgorithmName": e2e_result.report["model"]["name"],
              "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "91772007", "CodingSchemeDesignator": "SCT",
                                                        "CodeMeaning": "Organ"},
              "SegmentedPropertyTypeCodeSequence": {"CodeValue": "78961009", "CodingSchemeDesignator": "SCT",
                                                    "CodeMeaning": "Spleen"}}
    assert out["segments"] == [spleen]

    # every frame: segment 1, a CT image of this series, on that image in patient coordinates
    frames = out["frames"]
    assert seg["NumberOfFrames"] == len(frames) == len(cts)
    for frame in frames:
        assert frame["ReferencedSegmentNumber"] == 1 and frame["segment"] == spleen, frame["index"]
        uid = frame["ReferencedSOPInstanceUID"]
        assert uid in cts, f"frame {frame['index']} references {uid}, not an image of series {series_uid}"
        assert frame["ReferencedSOPClassUID"] == CT_IMAGE_STORAGE
        referenced = frame["referenced"]
        assert referenced is not None and Path(referenced["file"]) in set(ct_paths)
        assert referenced["FrameOfReferenceUID"] == frame_of_reference
        np.testing.assert_allclose(frame["ImagePositionPatient"], referenced["ImagePositionPatient"], atol=1e-3)
        np.testing.assert_allclose(frame["ImagePositionPatient"], np.asarray(cts[uid].ImagePositionPatient, float),
                                   atol=1e-3)
        np.testing.assert_allclose(frame["ImageOrientationPatient"], referenced["ImageOrientationPatient"],
                                   atol=1e-6)
    assert sorted(f["ReferencedSOPInstanceUID"] for f in frames) == sorted(cts)  # each CT image exactly once
    assert out["referencedSeries"] == [{"SeriesInstanceUID": series_uid,
                                        "ReferencedSOPInstanceUIDs": out["referencedSeries"][0][
                                            "ReferencedSOPInstanceUIDs"]}]
    assert sorted(out["referencedSeries"][0]["ReferencedSOPInstanceUIDs"]) == sorted(cts)

    # the pixels: dcmjs's bytes, unpacked by the script, give highdicom's foreground per frame
    per_frame = seg_frames(pydicom.dcmread(seg_path)).sum(axis=(1, 2))
    assert [f["foregroundPixels"] for f in frames] == per_frame.tolist()
    assert per_frame.sum() > 0
