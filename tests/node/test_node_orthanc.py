"""The DICOM node against a real Orthanc: round trip, destination down, crash and restart, rejection, failure.

Each test starts Orthanc and ``python -m deploy_app.node`` as real processes on 127.0.0.1 (see conftest.py);
the pipeline is the small threshold SEG writer in ``node_pipeline.py`` so the tests stay fast.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from testkit.node import (BLOB_COLS, BLOB_ROWS, BLOB_SLICES, NODE_AET, SIZE, SLICES, c_store, c_store_then_abort,
                          dciodvfy_errors, free_port, send_study_from_orthanc, slice_z, wait_for, wait_for_seg,
                          write_ct_study)
from spleenseg.paths import REPO_ROOT


def _orthanc_and_node(orthanc_factory, node_factory, **options):
    """An Orthanc that sends to the node and a node that sends its results back to that Orthanc."""
    node_port = free_port()
    orthanc = orthanc_factory(node_port)
    node = node_factory(port=node_port, destination={
        "host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": orthanc.aet}, **options)
    return orthanc, node


def test_round_trip_through_orthanc(orthanc_factory, node_factory, tmp_path: Path, ct_study) -> None:
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory, status_port=0)

    assert orthanc.rest("POST", "/modalities/spleennode/echo", json={}) == {}  # Orthanc's C-ECHO reaches the node
    send_study_from_orthanc(orthanc, ct_study["files"])
    seg_path = tmp_path / "seg_from_orthanc.dcm"
    seg_path.write_bytes(wait_for_seg(orthanc))

    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    assert seg.StudyInstanceUID == ct_study["study_uid"]
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct_study["series_uid"]
    assert sorted(r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence) == sorted(ct_study["sop_uids"])
    # Orthanc files the SEG under the same study as the CT it received.
    studies = orthanc.rest("GET", "/studies")
    assert len(studies) == 1
    _assert_mask_in_patient_coordinates(seg)

    wait_for(lambda: node.jobs("done"), 10, "the job to reach done/")
    [done] = node.jobs("done")
    assert not (done / "input").exists(), "received instances of a sent study are removed by default"
    log = node.log()
    study = ct_study["study_uid"]
    for event in ("received 6 instance(s) from ORTHANC", "started", "finished", "sent 1 file(s)"):
        assert f"study {study}: {event}" in log, f"missing log line for {event!r}:\n{log}"
    status = wait_for(lambda: (s := node.status())["counts"]["done"] == 1 and s, 5, "status.json to show the job")
    assert status["queue_length"] == 0
    assert status["last_results"][0]["state"] == "done" and status["last_results"][0]["study_uid"] == study
    over_http = requests.get(status["node"]["status_url"], timeout=5).json()
    assert over_http["counts"]["done"] == 1 and over_http["last_results"][0]["sent_at"]

    # A PACS routing rule sends the study back, now with our SEG in it: recognised, not processed again.
    [study_id] = studies
    orthanc.rest("POST", "/modalities/spleennode/store", json={"Resources": [study_id], "Synchronous": True})
    wait_for(lambda: "contains a result this node produced" in node.log(), 15, "the re-sent study to be skipped")
    assert len(orthanc.seg_instances()) == 1 and len(node.jobs("done")) == 2


def test_echo_command_checks_the_destination(orthanc_factory, node_factory) -> None:
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory, start=False)
    cmd = [sys.executable, "-m", "deploy_app.node", "--config", str(node.config_path), "--echo"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert ok.returncode == 0 and "ORTHANC@127.0.0.1" in ok.stdout and "OK" in ok.stdout
    down = subprocess.run(cmd + ["--dest-port", str(free_port())], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)
    assert down.returncode == 1 and "FAILED" in down.stdout


def _assert_mask_in_patient_coordinates(seg: hd.seg.Segmentation) -> None:
    """The SEG's non-empty frames sit at the blob's slices, and its pixels on the patient's left (+x, LPS)."""
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in seg.PerFrameFunctionalGroupsSequence]
    assert len(positions) == SLICES, "one frame per source slice"
    frames = seg.pixel_array
    hit_z = sorted(p[2] for p, frame in zip(positions, frames) if frame.any())
    assert hit_z == pytest.approx([slice_z(k) for k in BLOB_SLICES])
    expected = np.zeros((SIZE, SIZE), bool)
    expected[BLOB_ROWS, BLOB_COLS] = True
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    for p, frame in zip(positions, frames):
        if frame.any():
            assert np.array_equal(frame.astype(bool), expected)
            rows, cols = np.nonzero(frame)  # to patient coordinates with the SEG's own geometry (PS3.3 C.7.6.2)
            x_mm = p[0] + cols * col_mm * iop[0] + rows * row_mm * iop[3]
            assert (x_mm > 0).all(), "the blob lies on the patient's left"


def test_destination_down_then_up(orthanc_factory, node_factory, ct_study) -> None:
    node_port = free_port()
    source = orthanc_factory(node_port, name="source")
    destination = orthanc_factory(node_port, start=False, name="pacs")
    node = node_factory(port=node_port, destination={
        "host": "127.0.0.1", "port": destination.dicom_port, "ae_title": destination.aet})

    send_study_from_orthanc(source, ct_study["files"])
    wait_for(lambda: "send attempt 2 failed" in node.log(), 30, "two failed send attempts")
    assert node.status()["counts"]["sending"] == 1
    orthanc_factory.start(destination)
    wait_for_seg(destination, timeout=30)
    wait_for(lambda: node.jobs("done"), 10, "the job to reach done/")
    assert node.jobs("failed") == []


def test_results_that_cannot_be_sent_are_kept_in_failed(node_factory, ct_study) -> None:
    node = node_factory(send_max_attempts=2, destination={"host": "127.0.0.1", "port": free_port(),
                                                          "ae_title": "NOBODY"})
    c_store(node.port, "ORTHANC", ct_study["files"])
    [failed] = wait_for(lambda: node.jobs("failed"), 30, "the unsendable results to reach failed/")
    assert "sending failed 2 times, giving up: NOBODY@127.0.0.1" in (failed / "error.txt").read_text()
    assert sorted(p.name for p in (failed / "output").iterdir()) == ["seg.dcm", "spleen_report.json"], "kept"
    assert len(list((failed / "input").glob("*.dcm"))) == SLICES


def test_killed_while_pending_then_processed_once(orthanc_factory, node_factory, ct_study) -> None:
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory, quiet_seconds=3.0)

    send_study_from_orthanc(orthanc, ct_study["files"])
    node.kill()  # inside the quiet time: the study is received but not complete yet
    pending = node.work_dir / "incoming" / ct_study["study_uid"]
    assert len(list(pending.glob("*.dcm"))) == SLICES
    assert orthanc.seg_instances() == []

    node.start()
    wait_for_seg(orthanc)
    wait_for(lambda: node.jobs("done"), 10, "the job to reach done/")
    time.sleep(4.0)  # longer than the quiet time: a second run would have been queued by now
    assert len(orthanc.seg_instances()) == 1
    assert len(node.jobs("done")) == 1 and node.jobs("failed") == [] and node.jobs("queued") == []


def test_killed_while_running_then_processed_once(orthanc_factory, node_factory, ct_study) -> None:
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory, pipeline_options={"delay_seconds": 3.0})

    send_study_from_orthanc(orthanc, ct_study["files"])
    [running] = wait_for(lambda: node.jobs("running"), 20, "the study to start running")
    pid = wait_for(lambda: json.loads((running / "job.json").read_text())["pipeline_pid"], 10, "the pipeline pid")
    node.kill()
    # The orphaned pipeline process notices that the node is gone and exits: it never races the restarted node.
    wait_for(lambda: not _alive(pid), 10, f"the orphaned pipeline process {pid} to exit")
    node.start()
    assert "was interrupted while running; queued again" in node.log()
    wait_for_seg(orthanc, timeout=60)
    wait_for(lambda: node.jobs("done"), 10, "the job to reach done/")
    assert len(node.jobs("done")) == 1 and node.jobs("failed") == []
    assert len(orthanc.seg_instances()) == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_unknown_calling_ae_is_rejected(node_factory, ct_study) -> None:
    node = node_factory()
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_rejected
    wait_for(lambda: "association from INTRUDER" in node.log(), 5, "the rejection to be logged")
    assert "not in allowed_calling_aets" in node.log()
    assert list((node.work_dir / "incoming").glob("*/*.dcm")) == []


def test_broken_study_fails_and_node_keeps_serving(orthanc_factory, node_factory, tmp_path: Path) -> None:
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory)
    broken = write_ct_study(tmp_path / "broken", skip_slice=3, patient_id="BROKEN")
    good = write_ct_study(tmp_path / "good", patient_id="GOOD")

    send_study_from_orthanc(orthanc, broken["files"])
    [failed] = wait_for(lambda: node.jobs("failed"), 30, "the broken study to fail")
    error = (failed / "error.txt").read_text()
    assert "processing failed: GeometryError" in error and "not a regular volume" in error
    assert len(list((failed / "input").glob("*.dcm"))) == SLICES - 1, "the received instances are kept"
    assert "Traceback" in (failed / "job.log").read_text()
    assert f"study {broken['study_uid']}: failed" in node.log()

    send_study_from_orthanc(orthanc, good["files"])
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(wait_for_seg(orthanc)))
    assert seg.StudyInstanceUID == good["study_uid"]
    assert node.status()["counts"]["failed"] == 1


def _referenced_sops(seg_bytes: bytes) -> list[str]:
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(seg_bytes))
    return sorted(r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence)


def test_an_aborted_study_is_held_until_it_is_sent_again_complete(orthanc_factory, node_factory, ct_study) -> None:
    """The PACS aborts after half the study: nothing is processed when the quiet time is over (held, with the
    reason in status.json); the PACS then sends the whole study on an association it releases: one SEG, of
    every slice."""
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory)
    study = ct_study["study_uid"]

    c_store_then_abort(node.port, "ORTHANC", ct_study["files"][:3])
    wait_for(lambda: f"study {study}: association from ORTHANC was aborted after 3 instance(s)" in node.log(), 10,
             "the abort to be logged")
    held = wait_for(lambda: node.status()["held"], 5, "status.json to show the held study")
    assert held[study]["instances"] == 3 and "aborted after 3 instance(s)" in held[study]["reason"]
    time.sleep(3.0)  # three quiet times: an unheld study would have been queued by now
    assert [node.jobs(s) for s in ("queued", "running", "outbox", "done", "failed")] == [[], [], [], [], []]
    assert orthanc.seg_instances() == [] and node.status()["counts"]["held"] == 1

    c_store(node.port, "ORTHANC", ct_study["files"])  # the PACS sends the study again, to the end
    assert _referenced_sops(wait_for_seg(orthanc)) == sorted(ct_study["sop_uids"])
    [done] = wait_for(lambda: node.jobs("done"), 10, "the job to reach done/")
    assert json.loads((done / "job.json").read_text())["instances"] == SLICES
    assert "no longer held" in node.log() and node.status()["held"] == {}


def test_a_later_complete_copy_replaces_the_earlier_seg(orthanc_factory, node_factory, ct_study) -> None:
    """An administrator released a study held after an abort, so a SEG of half the slices reached the PACS; the
    complete copy sent later gives a SEG with the same Series and SOP Instance UIDs: the PACS (Orthanc with the
    README's OverwriteInstances) holds one SEG, now of every slice."""
    orthanc, node = _orthanc_and_node(orthanc_factory, node_factory)
    study = ct_study["study_uid"]

    c_store_then_abort(node.port, "ORTHANC", ct_study["files"][:3])
    marker = node.work_dir / "incoming" / study / ".held"
    wait_for(marker.is_file, 10, "the study to be held")
    marker.unlink()  # released by hand: processed as it is
    first_bytes = wait_for_seg(orthanc)
    assert _referenced_sops(first_bytes) == sorted(ct_study["sop_uids"][:3])
    first = pydicom.dcmread(pydicom.filebase.DicomBytesIO(first_bytes))
    wait_for(lambda: node.jobs("done"), 10, "the first job to reach done/")

    c_store(node.port, "ORTHANC", ct_study["files"])
    wait_for(lambda: len(node.jobs("done")) == 2, 30, "the complete copy to be processed and sent")
    second = wait_for_seg(orthanc)  # still exactly one SEG in the PACS
    assert f"replaces the SEG of series {ct_study['series_uid']}" in node.log()
    assert _referenced_sops(second) == sorted(ct_study["sop_uids"])
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(second))
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (first.SeriesInstanceUID, first.SOPInstanceUID)
    [series] = orthanc.rest("GET", "/series?expand")
    assert len(series["Instances"]) == 1 and series["MainDicomTags"]["SeriesInstanceUID"] == first.SeriesInstanceUID


def _tmpfs_works() -> bool:
    """True when this machine lets an unprivileged user mount a tmpfs in a mount namespace of its own."""
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                               capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_works(), reason="needs unshare -rm and tmpfs mounts (a real small file system)")
def test_a_full_work_dir_backs_off_and_goes_on_when_there_is_room(node_factory, ct_study) -> None:
    """The node's work_dir is a real 1 MiB tmpfs (in the node's own mount namespace, seen through /proc/PID/root).
    After a study arrives, the disk is filled: the study is not queued but kept, one ERROR per attempt with
    doubling delays (not two per tick); once the filler is removed the study is processed."""
    node = node_factory(start=False, quiet_seconds=2.0, disk_retry_seconds=0.5, disk_retry_max_seconds=1.0)
    node.prefix = ("unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"',
                   str(node.work_dir))
    node.start()
    work = Path(f"/proc/{node.proc.pid}/root{node.work_dir}")  # the tmpfs, as the node sees it
    c_store(node.port, "ORTHANC", ct_study["files"])
    filler = work / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill it to the last byte
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    study = ct_study["study_uid"]

    def attempts() -> list[str]:
        return [line for line in node.log_path.read_text().splitlines()
                if f"ERROR deploy_app.node: study {study}: cannot be queued" in line]

    wait_for(lambda: len(attempts()) >= 3, 20, "three attempts to queue the study")
    lines = attempts()
    assert all("No space left on device" in line for line in lines)
    assert [line.rsplit("retrying in ", 1)[1] for line in lines[:3]] == ["0.5 s", "1.0 s", "1.0 s"]
    log = node.log_path.read_text()
    assert "internal error" not in log and log.count("status.json: [Errno 28] No space left on device") == 1
    assert len(list((work / "incoming" / study).glob("*.dcm"))) == SLICES, "every instance is kept"
    assert not list((work / "queued").iterdir()) and not list((work / "failed").iterdir())

    filler.unlink()
    [done] = wait_for(lambda: sorted((work / "done").iterdir()), 30, "the study to be processed")
    assert json.loads((done / "job.json").read_text())["instances"] == SLICES
    assert (done / "output" / "seg.dcm").is_file()
    assert "status.json written again" in node.log_path.read_text()
