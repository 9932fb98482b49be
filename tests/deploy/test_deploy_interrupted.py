"""Runs that share an output folder: the staging folder of a run that died (SIGKILL, or SIGTERM/Ctrl-C while the
Holoscan graph runs) is removed by the next run into that folder, and two runs keep both reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy_app.runner import OWNER_FILE, _staging_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staging_of_a_dead_run_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    host = os.uname().nodename
    dead, live, unknown = (out / f".out.partial-{n}" for n in ("dead", "live", "unknown"))
    for folder, owner in ((dead, f"{host} {_dead_pid()}"), (live, f"{host} {os.getpid()}"), (unknown, None)):
        folder.mkdir()
        (folder / "SEG_x.dcm").write_bytes(b"half")
        if owner:
            (folder / OWNER_FILE).write_text(owner)
    staging = _staging_dir(out)
    assert not dead.exists() and live.exists() and unknown.exists()
    assert (staging / OWNER_FILE).read_text().split() == [host, str(os.getpid())]


def test_two_runs_into_one_output_folder_keep_both_reports(tmp_path: Path, small_series, fast_bundle) -> None:
    """The second run's report lists the first run's series too; a series run again replaces its entry."""
    import json

    import deploy_app
    import pydicom
    from testkit.deploy import PATIENT_A_SEED, cropped_phantom
    from spleenseg.phantom import write_dicom_series

    other = write_dicom_series(cropped_phantom(PATIENT_A_SEED), tmp_path / "in2")
    uids = [str(pydicom.dcmread(p[0], stop_before_pixels=True).SeriesInstanceUID) for p in (small_series, other)]
    out = tmp_path / "out"
    deploy_app.run(tmp_path / "in", out, fast_bundle)
    second = deploy_app.run(tmp_path / "in2", out, fast_bundle)
    report = json.loads((out / "spleen_report.json").read_text())
    assert [e["series_instance_uid"] for e in report["series"]] == uids
    assert [e["input_dir"] for e in report["series"]] == [str((tmp_path / d).resolve()) for d in ("in", "in2")]
    assert [e["series_instance_uid"] for e in second.report["series"]] == uids[1:]  # the run's own result
    assert report["app_version"] and report["created_at"] and report["input_dir"] == str((tmp_path / "in2").resolve())
    deploy_app.run(tmp_path / "in", out, fast_bundle)  # the first series again: replaced, not duplicated
    report = json.loads((out / "spleen_report.json").read_text())
    assert [e["series_instance_uid"] for e in report["series"]] == uids[::-1]
