"""``spleenseg-phantom`` (``python -m spleenseg.commands.phantom``): documented --help, a working run, and one
clear error + non-zero exit on bad options without leaving output behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spleenseg.paths import REPO_ROOT

MODULE = "spleenseg.commands.phantom"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", MODULE, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)


def test_help_documents_commands_and_options() -> None:
    top = run("--help")  # fire prints help on stderr when not on a terminal
    assert top.returncode == 0
    for command in ("cohort", "dicom_study", "case", "spec"):
        assert command in top.stdout + top.stderr
    sub = run("cohort", "--help")
    text = sub.stdout + sub.stderr
    assert sub.returncode == 0 and "--fmt" in text and "nifti | dicom | both" in text and "--val_fraction" in text


def test_cohort_and_dicom_study_run(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    proc = run("cohort", str(out), "--n", "2", "--size", "24,28", "--n_test", "0", "--workers", "1", "--fmt", "both")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and len(meta["training"]) + len(meta["validation"]) == 2
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 2 and (out / "dicom" / "spleen_000").is_dir()
    study = tmp_path / "study"
    proc = run("dicom_study", str(study), "--patients", "2", "--shape", "24,24,6", "--shuffle_names", "--nested")
    assert proc.returncode == 0, proc.stderr
    files = [p for p in study.rglob("*") if p.is_file()]
    assert len(files) == 2 * (6 + 3), files


@pytest.mark.parametrize(
    "args, message",
    [
        (("--fmt", "jpeg"), "jpeg"),
        (("--n=-3",), "--n must be"),
        (("--size", "50,20"), "size"),
    ],
)
def test_bad_options_fail_clearly(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = tmp_path / "out"
    proc = run("cohort", str(out), *args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run("cohort", str(blocker / "out"), "--n", "1")
    assert proc.returncode != 0 and str(blocker) in proc.stderr and "Traceback" not in proc.stderr
    assert blocker.read_text() == "not a folder"


def test_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    proc = run("cohort", str(tmp_path), "--n", "1")
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"
