"""The node's parts in-process: config checks, the spool's state moves and restart recovery, the pipeline runner."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests

from deploy_app.node.__main__ import main
from deploy_app.node.config import NodeConfig, load_config
from deploy_app.node.inbox import Inbox, JobRecord, utc_now
from deploy_app.node.node import DicomNode
from deploy_app.node.pipeline import PipelineError, PipelineRunner, check_pipeline
from deploy_app.node.sender import dicom_files
from deploy_app.node.status import StatusServer
from spleenseg.errors import InputError

from testkit import node_pipeline
from testkit.node import (BLOB_COLS, BLOB_ROWS, BLOB_SLICES, NODE_AET, SIZE, SPACING, TEST_PIPELINE, THICKNESS,
                          dciodvfy_errors, free_port, write_ct_study)


# ---- config ------------------------------------------------------------------------------------------------
def test_yaml_config_and_command_line_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("work_dir: /srv/spleen\nallowed_calling_aets: [PACS1, PACS2]\nport: 104\n"
                   "destination: {host: pacs.local, port: 4242, ae_title: PACS1}\n")
    config = load_config(cfg, {"port": 11112, "destination.port": 11113, "workers": None})
    assert config.port == 11112 and config.workers == 1
    assert config.destination.host == "pacs.local" and config.destination.port == 11113
    assert config.allowed_calling_aets == ["PACS1", "PACS2"]


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy_app" / "node" / "examples" / "node.yaml"
    config = load_config(example)
    assert config.ae_title == "SPLEENSEG" and config.destination.ae_title == "ORTHANC"


@pytest.mark.parametrize("values, message", [
    ({"allowed_calling_aets": []}, "allowed_calling_aets is empty"),
    ({"allowed_calling_aets": ["A"], "prot": 1}, "unknown option(s) ['prot']"),
    ({"allowed_calling_aets": ["A"], "port": 70000}, "port: 70000 is not a valid TCP port"),
    ({"allowed_calling_aets": ["WAY_TOO_LONG_AE_TITLE"]}, "not a valid AE title"),
    ({"allowed_calling_aets": ["A"], "destination": {"host": "x", "port": 104}},
     "missing required option(s) ['ae_title']"),
    ({"allowed_calling_aets": ["A"], "pipeline": "deploy_app.run"}, "module:function"),
])
def test_bad_config_is_one_clear_error(tmp_path: Path, values: dict, message: str) -> None:
    cfg = tmp_path / "node.json"
    cfg.write_text(json.dumps({"work_dir": str(tmp_path / "w"), **values}))
    with pytest.raises(InputError) as err:
        load_config(cfg)
    assert message in str(err.value)


def test_cli_reports_config_errors_and_prints_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: config file not found" in capsys.readouterr().err
    assert main(["--work-dir", str(tmp_path), "--allowed-calling-aets", "PACS,ROUTER", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["allowed_calling_aets"] == ["PACS", "ROUTER"] and printed["pipeline"] == "deploy_app:run"


# ---- spool -------------------------------------------------------------------------------------------------
def test_store_quiet_time_and_resend_of_same_instance(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.store("1.2.3", "1.2.3.1", b"a", "PACS")
    inbox.store("1.2.3", "1.2.3.1", b"b", "PACS")  # the PACS re-sends: replaced, not duplicated
    inbox.store("1.2.3", "1.2.3.2", b"c", "PACS")
    assert inbox.receiving() == {"1.2.3": 2}
    assert inbox.take_quiet_studies(quiet_seconds=60) == []
    [job] = inbox.take_quiet_studies(quiet_seconds=0)
    assert job.instances == 2 and job.calling_aets == ["PACS"]
    inp = tmp_path / "queued" / job.job_id / "input"
    assert (inp / "1.2.3.1.dcm").read_bytes() == b"b"
    assert not (tmp_path / "incoming" / "1.2.3").exists()
    assert list((tmp_path / "incoming" / ".tmp").iterdir()) == []


def test_a_study_folder_that_vanished_does_not_stall_the_queue(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox(tmp_path)
    inbox.store("1.2.3", "1.2.3.1", b"a", "PACS")
    inbox.store("1.2.4", "1.2.4.1", b"a", "PACS")
    shutil.rmtree(tmp_path / "incoming" / "1.2.3")  # deleted by hand, or lost
    with caplog.at_level(logging.ERROR, logger="deploy_app.node"):
        [job] = inbox.take_quiet_studies(0)
    assert job.study_uid == "1.2.4" and inbox.jobs_in("queued") == [job.job_id]  # no empty queued/<job> left
    assert "study 1.2.3: its folder incoming/1.2.3 disappeared" in caplog.text
    assert inbox.take_quiet_studies(0) == [] and inbox.receiving() == {}  # dropped once, not retried each tick


def test_recover_after_a_crash(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.store("1.2.4", "1.2.4.1", b"a", "PACS")
    inbox.store("1.2.5", "1.2.5.1", b"a", "PACS")
    interrupted, finished = inbox.take_quiet_studies(0)
    inbox.store("1.2.3", "1.2.3.1", b"a", "PACS")  # a study still inside its quiet time
    inbox.store("1.2.3", "1.2.3.2", b"a", "PACS")
    (tmp_path / "incoming" / ".tmp" / "x.part").write_bytes(b"half")  # a write cut by the crash
    for job in (interrupted, finished):
        inbox.move(job, "running")
    (inbox.job_dir(interrupted) / "output.partial").mkdir()
    (inbox.job_dir(finished) / "output").mkdir()

    restarted = Inbox(tmp_path)
    restarted.recover()
    assert list((tmp_path / "incoming" / ".tmp").iterdir()) == []
    assert restarted.receiving() == {"1.2.3": 2}  # pending study resumes its quiet time
    assert restarted.jobs_in("queued") == [interrupted.job_id]
    assert not (tmp_path / "queued" / interrupted.job_id / "output.partial").exists()
    assert restarted.jobs_in("outbox") == [finished.job_id]  # not processed a second time
    assert restarted.jobs_in("running") == []


def test_a_damaged_spool_is_quarantined_and_the_node_starts(tmp_path: Path) -> None:
    """An empty job.json in running/ and a stray non-DICOM file in incoming/<uid>/ go to failed/ with a reason;
    the good job beside them is recovered as usual."""
    inbox = Inbox(tmp_path)
    inbox.store("1.2.4", "1.2.4.1", b"a", "PACS")
    inbox.store("1.2.5", "1.2.5.1", b"a", "PACS")
    broken, good = inbox.take_quiet_studies(0)
    for job in (broken, good):
        inbox.move(job, "running")
    (inbox.job_dir(broken) / "job.json").write_text("")
    stray = tmp_path / "incoming" / "1.2.9"
    stray.mkdir()
    (stray / "notes.txt").write_text("not DICOM")

    restarted = Inbox(tmp_path)
    restarted.recover()
    assert restarted.jobs_in("queued") == [good.job_id]
    assert sorted(restarted.jobs_in("failed")) == sorted([broken.job_id, "1.2.9"])
    assert "unreadable job.json" in (tmp_path / "failed" / broken.job_id / "error.txt").read_text()
    assert "no DICOM instance" in (tmp_path / "failed" / "1.2.9" / "error.txt").read_text()
    assert (tmp_path / "failed" / "1.2.9" / "notes.txt").read_text() == "not DICOM"  # kept, never deleted


# ---- pipeline runner ---------------------------------------------------------------------------------------
def _runner(tmp_path: Path, func: object, timeout: float = 60, **options: object) -> tuple[PipelineRunner, Path]:
    job = tmp_path / "job"
    (job / "input").mkdir(parents=True)
    (job / "out").mkdir()
    return PipelineRunner(func, None, dict(options), timeout), job


@pytest.mark.parametrize("func, expected", [
    (node_pipeline.failing, "InputError: "),
    ("testkit.node_pipeline:crashing", "exit code 139"),
])
def test_pipeline_failure_is_a_clear_reason(tmp_path: Path, func: object, expected: str) -> None:
    runner, job = _runner(tmp_path, func)
    with pytest.raises(PipelineError) as err:
        runner.run(job / "input", job / "out", job / "job.log")
    assert expected in str(err.value)
    if expected.startswith("InputError"):
        assert "no CT series matches the selection rules" in str(err.value)
        assert "Traceback" in (job / "job.log").read_text()


def test_pipeline_timeout_kills_the_run(tmp_path: Path) -> None:
    runner, job = _runner(tmp_path, "testkit.node_pipeline:sleeping", timeout=3)
    with pytest.raises(PipelineError, match="did not finish within job_timeout_seconds=3; killed"):
        runner.run(job / "input", job / "out", job / "job.log")


def test_pipeline_that_cannot_be_found_fails_at_start_up() -> None:
    with pytest.raises(InputError, match="module 'no_such_module' is not importable"):
        check_pipeline("no_such_module:run")
    with pytest.raises(InputError, match="module-level function"):
        check_pipeline(lambda *a: None)


def test_start_up_checks_model_and_ports_with_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A misspelt model and a busy port stop the node at start-up with one line naming them; a missing spool
    folder is created with a WARNING that names it."""
    import socket

    base = ["--work-dir", str(tmp_path / "spool"), "--allowed-calling-aets", "PACS", "--port", str(free_port())]
    assert main([*base, "--model", str(tmp_path / "bundel")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {tmp_path / 'bundel'}: model path does not exist"
    assert any(f"spool folder {tmp_path / 'spool'} does not exist; creating it" in line for line in err)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([*base, "--status-port", str(port)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: cannot serve the status on 127.0.0.1:{port} (")


def test_only_dicom_files_are_sent(tmp_path: Path) -> None:
    (tmp_path / "spleen_report.json").write_text("{}")
    (tmp_path / "seg.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    assert [p.name for p in dicom_files(tmp_path)] == ["seg.dcm"]


# ---- the node's job steps, called directly (no threads, no SCP) ----------------------------------------------
def _node(tmp_path: Path, **options: object) -> DicomNode:
    return DicomNode(NodeConfig(work_dir=str(tmp_path / "work"), allowed_calling_aets=["PACS"],
                                pipeline=TEST_PIPELINE, **options))


def _job_with_output(node: DicomNode, state: str, files: list[Path], **fields: object) -> JobRecord:
    job = JobRecord("20260101T000000-1.2.3", "1.2.3", 1, ["PACS"], utc_now(), state=state, **fields)
    (node.inbox.job_dir(job) / "output").mkdir(parents=True)
    for f in files:
        shutil.copy(f, node.inbox.job_dir(job) / "output")
    node.inbox.save(job)
    return job


def test_a_corrupt_outbox_record_does_not_block_later_sends(tmp_path: Path) -> None:
    node = _node(tmp_path)
    seg = tmp_path / "seg.dcm"
    seg.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    bad = _job_with_output(node, "outbox", [seg])
    (node.inbox.job_dir(bad) / "job.json").write_text("{not json")
    good = JobRecord("20260101T000001-1.2.4", "1.2.4", 1, ["PACS"], utc_now(), state="outbox")
    (node.inbox.job_dir(good) / "output").mkdir(parents=True)
    node.inbox.save(good)
    for job_id in node.inbox.jobs_in("outbox"):  # what the sender loop does on each tick
        node._send(job_id)
    assert node.inbox.jobs_in("failed") == [bad.job_id]
    assert "unreadable job.json in outbox/" in (node.inbox.root / "failed" / bad.job_id / "error.txt").read_text()
    assert node.inbox.jobs_in("outbox") == [] and node.inbox.jobs_in("done") == [good.job_id]


def test_result_uids_are_recorded_before_sending(tmp_path: Path) -> None:
    """A PACS may forward our SEG back before the C-STORE returns: its UID must be known before the association
    (here the destination is down, so nothing was sent and the UID is known all the same)."""
    ct = write_ct_study(tmp_path / "ct")
    node = _node(tmp_path, destination={"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY"})
    job = _job_with_output(node, "outbox", ct["files"][:1])
    node._send(job.job_id)
    [uid] = ct["sop_uids"][:1]
    assert node.inbox.is_own_result(uid)
    assert Inbox(node.inbox.root).is_own_result(uid), "recorded on disk for a restarted node"
    record = Inbox.load(node.inbox.job_dir(job.job_id, "outbox"))
    assert record.send_attempts == 1 and record.sent == []
    assert record.error.startswith("send attempt 1 failed: NOBODY@127.0.0.1")


def test_unreadable_result_is_a_failed_send_attempt(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM")  # looks like DICOM, has no header to read a SOP Instance UID from
    node = _node(tmp_path, destination={"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY"})
    job = _job_with_output(node, "outbox", [bad])
    node._send(job.job_id)
    record = Inbox.load(node.inbox.job_dir(job.job_id, "outbox"))
    assert record.send_attempts == 1
    assert record.error.startswith("send attempt 1 failed: AttributeError: ")


def test_job_that_failed_sending_can_be_queued_again(tmp_path: Path) -> None:
    """An operator moves failed/<job> back to queued/: it runs again with a clean output and send record."""
    ct = write_ct_study(tmp_path / "ct")
    node = _node(tmp_path)
    stale = tmp_path / "old.dcm"
    shutil.copy(ct["files"][0], stale)
    job = _job_with_output(node, "failed", [stale], sent=["old.dcm"], send_attempts=3, error="sending failed")
    shutil.copytree(ct["files"][0].parent, node.inbox.job_dir(job) / "input")
    (node.inbox.job_dir(job) / "error.txt").write_text("sending failed 3 times, giving up\n")
    os.rename(node.inbox.job_dir(job), node.inbox.job_dir(job.job_id, "queued"))

    node._process(job.job_id)
    outbox = node.inbox.job_dir(job.job_id, "outbox")
    assert sorted(p.name for p in (outbox / "output").iterdir()) == ["seg.dcm", "spleen_report.json"]
    assert not (outbox / "error.txt").exists()
    record = Inbox.load(outbox)
    assert record.sent == [] and record.send_attempts == 0 and record.error is None


def test_status_file_is_rewritten_only_when_it_changes(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.write_status()
    first = node.status_path.stat().st_ino  # every write is a new file renamed into place
    node.write_status()
    assert node.status_path.stat().st_ino == first
    node.inbox.store("1.2.3", "1.2.3.1", b"a", "PACS")
    node.write_status()
    assert node.status_path.stat().st_ino != first
    assert json.loads(node.status_path.read_text())["counts"]["receiving"] == 1


# ---- results and QA in status; "nothing to send" ------------------------------------------------------------
def _queued_job(node: DicomNode, ct: dict) -> JobRecord:
    """A received study turned into a queued job, as the SCP and the ticker make it."""
    for path in ct["files"]:
        node.inbox.store(ct["study_uid"], pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID,
                         path.read_bytes(), "PACS")
    [job] = node.inbox.take_quiet_studies(quiet_seconds=0)
    return job


def test_status_shows_volume_and_verdict_of_a_finished_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ct = write_ct_study(tmp_path / "ct")
    node = _node(tmp_path)  # no destination: a finished job goes to done/ with its results kept
    job = _queued_job(node, ct)
    with caplog.at_level(logging.INFO, logger="deploy_app.node"):
        node._process(job.job_id)
    node._send(job.job_id)
    blob_ml = len(BLOB_SLICES) * len(range(SIZE)[BLOB_ROWS]) * len(range(SIZE)[BLOB_COLS]) \
        * SPACING * SPACING * THICKNESS / 1000.0
    expected = {"series_instance_uid": ct["series_uid"], "spleen_volume_ml": pytest.approx(blob_ml),
                "seg_file": "seg.dcm", "verdict": "ok", "flags": []}
    node.write_status()
    server = StatusServer("127.0.0.1", 0, node.status)
    try:
        over_http = requests.get(f"http://127.0.0.1:{server.port}/status", timeout=10).json()
    finally:
        server.close()
    for status in (json.loads(node.status_path.read_text()), over_http):
        [entry] = status["last_results"]
        assert entry["state"] == "done" and entry["results"] == [expected]
    finished = [r.getMessage() for r in caplog.records if "finished in" in r.getMessage()]
    assert len(finished) == 1 and f"series {ct['series_uid']}: spleen {blob_ml:.1f} mL, QA ok" in finished[0]


def test_nothing_to_send_is_done_not_failed_and_not_retried(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    ct = write_ct_study(tmp_path / "ct", blob=False)  # nothing above the threshold: no SEG, exit status 3
    node = _node(tmp_path, destination={"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY"})
    job = _queued_job(node, ct)
    with caplog.at_level(logging.INFO, logger="deploy_app.node"):
        node._process(job.job_id)
    assert node.inbox.jobs_in("done") == [job.job_id]
    assert [node.inbox.jobs_in(s) for s in ("queued", "running", "outbox", "failed")] == [[], [], [], []]
    node._enqueue_new_jobs()
    assert node._jobs.empty(), "a job with nothing to send is never queued again"
    done = node.inbox.job_dir(job.job_id, "done")
    assert dicom_files(done / "output") == [] and (done / "output" / "spleen_report.json").is_file()
    assert not (done / "error.txt").exists()
    status = node.status()
    assert status["counts"]["failed"] == 0 and status["counts"]["sending"] == 0 and status["queue_length"] == 0
    [entry] = status["last_results"]
    assert entry["error"] is None and entry["send_attempts"] == 0
    assert entry["note"].startswith("done, nothing to send (pipeline exit status 3")
    assert entry["results"] == [{"series_instance_uid": ct["series_uid"], "spleen_volume_ml": 0.0,
                                 "seg_file": None, "verdict": "no spleen found", "flags": ["no_spleen"]}]
    [line] = [r for r in caplog.records if "nothing to send" in r.getMessage()]
    assert line.levelno == logging.WARNING and "no spleen found [no_spleen]" in line.getMessage()


# ---- a full work_dir: wait and retry, never a hot loop, never lose the study -------------------------------
class _NoRoom:
    """A file opened for writing on a full file system: it exists, but nothing can be written to it."""

    def __init__(self, fh) -> None:  # noqa: ANN001 - any file object
        self._fh = fh

    def write(self, data) -> int:  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device", self._fh.name)

    def __enter__(self) -> "_NoRoom":
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._fh, name)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch):
    """``full_disk(root)``: under ``root`` files can still be created, renamed and removed, but writing data to
    them fails with ENOSPC, as on a full file system; ``full_disk(None)`` frees the room again."""
    import builtins
    import io

    real_open = io.open
    state: dict[str, Path | None] = {"root": None}

    def open_(file, mode="r", *args, **kwargs):  # noqa: ANN001 - the signature of open()
        fh = real_open(file, mode, *args, **kwargs)
        root = state["root"]
        if root is not None and any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) \
                and Path(file).resolve().is_relative_to(root.resolve()):
            return _NoRoom(fh)
        return fh

    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(builtins, "open", open_)
    return lambda root: state.update(root=root)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_study_that_cannot_be_queued_waits_in_incoming_with_growing_delays(
        tmp_path: Path, full_disk, caplog: pytest.LogCaptureFixture) -> None:
    """job.json cannot be written (disk full): the study stays in incoming/ with all its instances, one ERROR per
    attempt with a doubling delay, and it is queued once there is room again. (Moving it to queued/ without its
    record would report it as "disappeared", then park it and retry it on every tick.)"""
    ct = write_ct_study(tmp_path / "ct")
    node = _node(tmp_path, disk_retry_seconds=0.2, disk_retry_max_seconds=0.4)
    for path in ct["files"]:
        node.inbox.store(ct["study_uid"], pydicom.dcmread(path).SOPInstanceUID, path.read_bytes(), "PACS")
    full_disk(node.inbox.root)
    delays = []
    with caplog.at_level(logging.ERROR, logger="deploy_app.node"):
        for _ in range(3):
            assert node.inbox.take_quiet_studies(0) == []
            node._enqueue_new_jobs()
            assert node._jobs.empty() and node.inbox.jobs_in("queued") == []
            assert node.inbox.take_quiet_studies(0) == [], "not tried again before its delay"
            [line] = _errors(caplog)
            assert f"study {ct['study_uid']}: cannot be queued" in line and "No space left on device" in line
            delays.append(line.rsplit("retrying in ", 1)[1])
            caplog.clear()
            time.sleep(0.45)
    assert delays == ["0.2 s", "0.4 s", "0.4 s"], "doubling, capped at disk_retry_max_seconds"
    assert len(list((node.inbox.incoming / ct["study_uid"]).glob("*.dcm"))) == len(ct["files"])
    assert node.inbox.receiving() == {ct["study_uid"]: len(ct["files"])}
    full_disk(None)
    [job] = node.inbox.take_quiet_studies(0)
    assert job.instances == len(ct["files"]) and job.calling_aets == ["PACS"]


def test_a_job_the_disk_has_no_room_for_goes_back_to_queued_and_waits(
        tmp_path: Path, full_disk, caplog: pytest.LogCaptureFixture) -> None:
    """The worker cannot write the job's record (disk full): the job is put back in queued/ as it was, not
    re-queued on the next ticks but after its delay, one ERROR line per attempt; with room it is processed."""
    ct = write_ct_study(tmp_path / "ct")
    node = _node(tmp_path, disk_retry_seconds=0.3, disk_retry_max_seconds=0.3)
    job = _queued_job(node, ct)
    full_disk(node.inbox.root)
    with caplog.at_level(logging.ERROR, logger="deploy_app.node"):
        node._enqueue_new_jobs()
        node._jobs.put(None)
        node._worker()  # processes the job, then stops at None
        [line] = _errors(caplog)
        assert line.startswith(f"job {job.job_id}: not processed, work_dir is full (")
        assert line.endswith("kept in queued/, retrying in 0.3 s")
        for _ in range(3):  # the ticker's next ticks
            node._enqueue_new_jobs()
        assert node._jobs.empty(), "not queued again before its delay"
    assert node.inbox.jobs_in("queued") == [job.job_id] and node.inbox.jobs_in("failed") == []
    assert len(list((node.inbox.job_dir(job.job_id, "queued") / "input").glob("*.dcm"))) == len(ct["files"])
    full_disk(None)
    time.sleep(0.35)
    node._enqueue_new_jobs()
    node._jobs.put(None)
    node._worker()
    assert node.inbox.jobs_in("outbox") == [job.job_id]


# ---- studies whose association was aborted --------------------------------------------------------------------
def test_a_held_study_survives_a_restart_and_waits_for_release_or_expiry(tmp_path: Path) -> None:
    """Held studies are never queued by the quiet timer, also after a restart; removing ``.held`` releases one
    (queued as usual); one held past ``aborted_hold_seconds`` goes to failed/ with the reason, all its instances
    and no marker, so moving it to queued/ processes it."""
    inbox = Inbox(tmp_path)
    for study in ("1.2.3", "1.2.4"):
        inbox.store(study, f"{study}.1", b"a", "PACS")
        inbox.store(study, f"{study}.2", b"b", "PACS")
        inbox.hold(study, "association from PACS was aborted after 2 instance(s) of this study")
    inbox = Inbox(tmp_path)
    inbox.recover()
    assert inbox.take_quiet_studies(0) == [] and inbox.receiving() == {}
    assert set(inbox.held()) == {"1.2.3", "1.2.4"}
    assert inbox.held()["1.2.3"]["instances"] == 2 and "aborted after 2" in inbox.held()["1.2.3"]["reason"]
    assert inbox.expire_held(3600) == []

    (tmp_path / "incoming" / "1.2.3" / ".held").unlink()  # an administrator releases it
    [released] = inbox.take_quiet_studies(0)
    assert released.study_uid == "1.2.3" and released.instances == 2
    time.sleep(0.05)
    [parked] = inbox.expire_held(0.01)
    failed = tmp_path / "failed" / parked.job_id
    assert inbox.jobs_in("failed") == [parked.job_id] and inbox.held() == {}
    assert "aborted after 2 instance(s)" in (failed / "error.txt").read_text()
    assert "aborted_hold_seconds" in Inbox.load(failed).error and Inbox.load(failed).state == "failed"
    assert sorted(p.name for p in (failed / "input").iterdir()) == ["1.2.4.1.dcm", "1.2.4.2.dcm"]


def test_a_normal_release_lifts_the_hold(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.store("1.2.3", "1.2.3.1", b"a", "PACS")
    inbox.hold("1.2.3", "association from PACS was aborted after 1 instance(s) of this study")
    inbox.store("1.2.3", "1.2.3.2", b"b", "PACS")  # sent again; held until that association ends normally
    assert inbox.take_quiet_studies(0) == []
    inbox.completed("1.2.3")
    [job] = inbox.take_quiet_studies(0)
    assert job.instances == 2 and not (tmp_path / "queued" / job.job_id / "input" / ".held").exists()


def test_a_second_seg_of_a_series_takes_the_first_ones_uids(tmp_path: Path) -> None:
    """Two runs on the same CT series: the second SEG is rewritten with the first's Series and SOP Instance UIDs
    (its own content kept, still a valid SEG); a registry reread from disk (a restarted node) does the same, and
    adopting a file again (a send retry) changes nothing."""
    import highdicom as hd

    from deploy_app.node.results import ResultRegistry

    ct = write_ct_study(tmp_path / "ct")
    segs = []
    for run in ("a", "b", "c"):
        (tmp_path / run).mkdir()
        node_pipeline.threshold_seg(str(ct["files"][0].parent), str(tmp_path / run))
        segs.append(tmp_path / run / "seg.dcm")
    first = pydicom.dcmread(segs[0])
    registry = ResultRegistry(tmp_path / "seg_series.json")
    assert registry.adopt([segs[0]], "job-a") == []
    [replaced] = registry.adopt([segs[1]], "job-b")
    assert replaced.source_series_uid == ct["series_uid"] and replaced.earlier_job_id == "job-a"
    assert ResultRegistry(tmp_path / "seg_series.json").adopt([segs[2]], "job-c")[0].earlier_job_id == "job-a"
    for path in segs[1:]:
        seg = hd.seg.segread(path)
        assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == (first.SeriesInstanceUID, first.SOPInstanceUID)
        assert seg.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct["series_uid"]
        assert dciodvfy_errors(path) == []
    assert registry.adopt([segs[1]], "job-b") == []


def test_a_second_node_on_the_same_spool_stops_at_start_up(node_factory, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Two nodes on one work_dir would take the same studies: the second one (another port) stops with one line
    naming the spool and the running node, and leaves the spool as it was; once the first is killed, the
    lock is gone with it and a new node starts on that spool."""
    first = node_factory()
    before = sorted(p.relative_to(first.work_dir) for p in first.work_dir.rglob("*"))
    argv = ["--work-dir", str(first.work_dir), "--allowed-calling-aets", "PACS", "--port", str(free_port())]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"error: {first.work_dir}: this spool is in use by node {NODE_AET} on port {first.port} "
                    f"(pid {first.proc.pid}); give each node its own work_dir")
    assert sorted(p.relative_to(first.work_dir) for p in first.work_dir.rglob("*")) == before
    first.kill()
    first.start()  # the same spool, a new process: no stale lock
