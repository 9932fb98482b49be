"""Helpers for the DICOM node tests: a tiny CT study, a real Orthanc and the node as real processes.

Kept out of ``conftest.py`` (which only declares fixtures) so that test modules import them by a unique name.
Everything listens on 127.0.0.1 on ports picked free at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import requests
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from testkit.dicom_checks import dciodvfy_errors  # noqa: F401  (the node tests import it from here)
from spleenseg.paths import REPO_ROOT

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
#: tests/, the folder that holds ``testkit``: the node's pipeline child process imports the test pipeline from it
TESTS_DIR = Path(__file__).resolve().parent.parent
TEST_PIPELINE = "testkit.node_pipeline:threshold_seg"
ORTHANC_AET = "ORTHANC"
NODE_AET = "SPLEENSEG"
#: The Orthanc config shown in the README; tests start from it so the example stays right.
EXAMPLE_ORTHANC = REPO_ROOT / "deploy_app" / "node" / "examples" / "orthanc.json"
MODALITY = "spleennode"

# The tiny CT: 16x16 pixels of 2 mm, 6 axial slices of 3 mm; a 60 HU block (the "spleen") on the patient's
# left (+x in LPS) in slices 2-4, rows 4-7, columns 10-13; -200 HU elsewhere.
SIZE, SLICES, SPACING, THICKNESS = 16, 6, 2.0, 3.0
BLOB_SLICES, BLOB_ROWS, BLOB_COLS = range(2, 5), slice(4, 8), slice(10, 14)
ORIGIN = (-15.0, -15.0, 100.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_ct_study(folder: Path, *, study_uid: str | None = None, skip_slice: int | None = None,
                   patient_id: str = "NODE-TEST-1", blob: bool = True) -> dict[str, Any]:
    """Write a tiny, conformant CT series (one file per slice); ``skip_slice`` leaves a gap (broken study);
    ``blob=False`` leaves the "spleen" out (nothing for the pipeline to find)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    sop_uids = []
    for k in range(SLICES):
        if k == skip_slice:
            continue
        hu = np.full((SIZE, SIZE), -200, dtype=np.int16)
        if blob and k in BLOB_SLICES:
            hu[BLOB_ROWS, BLOB_COLS] = 60
        ds = _ct_slice(hu, k, study_uid, series_uid, frame_uid, patient_id)
        ds.save_as(folder / f"ct_{k:03d}.dcm", enforce_file_format=True)
        sop_uids.append(ds.SOPInstanceUID)
    return {"study_uid": study_uid, "series_uid": series_uid, "sop_uids": sop_uids,
            "files": sorted(folder.glob("*.dcm"))}


def slice_z(k: int) -> float:
    return ORIGIN[2] + k * THICKNESS


def _ct_slice(hu: np.ndarray, k: int, study_uid: str, series_uid: str, frame_uid: str, pid: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Node", pid, "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20250101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC1", "1", ""
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "spleenseg tests", 1, k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PositionReferenceIndicator, ds.KVP, ds.AcquisitionNumber = "", 120, 1
    ds.PatientPosition, ds.BodyPartExamined = "HFS", "ABDOMEN"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], slice_z(k)]
    ds.SliceLocation = slice_z(k)
    ds.PixelSpacing, ds.SliceThickness = [SPACING, SPACING], THICKNESS
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = hu.astype(np.int16).tobytes()
    return ds


# ---- processes --------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Orthanc:
    """A running Orthanc; ``url`` is its REST root."""

    http_port: int
    dicom_port: int
    folder: Path
    proc: subprocess.Popen | None = None
    aet: str = ORTHANC_AET

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = requests.request(method, self.url + path, timeout=30, **kwargs)
        resp.raise_for_status()
        is_json = resp.headers.get("content-type", "").startswith("application/json")
        return resp.json() if resp.content and is_json else resp.content

    def upload(self, files: list[Path]) -> list[str]:
        return [self.rest("POST", "/instances", data=f.read_bytes())["ID"] for f in files]

    def seg_instances(self) -> list[str]:
        """Orthanc ids of all SEG instances it holds."""
        found = self.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"Modality": "SEG"}})
        return list(found)




def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


@dataclass
class NodeProcess:
    """``python -m deploy_app.node`` running as a real process."""

    config_path: Path
    work_dir: Path
    port: int
    processes: list[subprocess.Popen]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    starts: int = 0
    #: Put before the command, e.g. ``unshare`` to run the node in its own mount namespace.
    prefix: tuple[str, ...] = ()

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]), PYTHONUNBUFFERED="1")
        self.log_path = self.work_dir.parent / f"node-stderr-{self.starts}.log"
        self.starts += 1
        command = [*self.prefix, sys.executable, "-m", "deploy_app.node", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(command,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        self.processes.append(self.proc)
        wait_for(lambda: self.proc.poll() is not None or c_echo(self.port, ORTHANC_AET), 30, "the node to listen")
        assert self.proc.poll() is None, self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean stop."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        path = self.work_dir / "node.log"
        return path.read_text() if path.exists() else ""

    def status(self) -> dict[str, Any]:
        return json.loads((self.work_dir / "status.json").read_text())

    def jobs(self, state: str) -> list[Path]:
        folder = self.work_dir / state
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def c_echo(port: int, calling_aet: str) -> bool:
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def c_store(port: int, calling_aet: str, files: list[Path]) -> None:
    """Send files to the node with pynetdicom as a modality would (when no Orthanc is needed as the source)."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(path).Status == 0
    finally:
        assoc.release()


def c_store_then_abort(port: int, calling_aet: str, files: list[Path]) -> None:
    """Send ``files`` on one association, then abort it (A-ABORT), as a PACS that gives up half way does."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    for path in files:
        assert assoc.send_c_store(path).Status == 0
    assoc.abort()


def send_study_from_orthanc(orthanc: Orthanc, files: list[Path]) -> None:
    """Upload a study over REST, then ask Orthanc to C-STORE it to our node (synchronous job)."""
    ids = orthanc.upload(files)
    study_id = orthanc.rest("GET", f"/instances/{ids[0]}/study")["ID"]
    orthanc.rest("POST", f"/modalities/{MODALITY}/store", json={"Resources": [study_id], "Synchronous": True})


def wait_for_seg(orthanc: Orthanc, timeout: float = 60) -> bytes:
    """The bytes of the one SEG instance Orthanc holds, once it is there."""
    seg_ids = wait_for(orthanc.seg_instances, timeout, "the SEG to arrive in Orthanc")
    assert len(seg_ids) == 1, f"expected one SEG, Orthanc holds {len(seg_ids)}"
    return orthanc.rest("GET", f"/instances/{seg_ids[0]}/file")
