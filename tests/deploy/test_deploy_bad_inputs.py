"""Bad input: one clear error naming the file and the problem, non-zero exit, nothing written to OUT_DIR."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import deploy_app
from spleenseg.errors import GeometryError, InputError
from spleenseg.phantom import write_non_ct_series, write_scout
from testkit.deploy import PATIENT_B_SEED, assert_nothing_written, cropped_phantom


def run_expecting(error: type, match: str, inp: Path, out: Path, model: Path, **opts) -> InputError:
    with pytest.raises(error, match=match) as info:
        deploy_app.run(inp, out, model, **opts)
    assert_nothing_written(out)
    return info.value


def test_empty_folder(tmp_path, untrained_bundle):
    (tmp_path / "in").mkdir()
    run_expecting(InputError, "empty", tmp_path / "in", tmp_path / "out", untrained_bundle)


def test_missing_folder(tmp_path, untrained_bundle):
    run_expecting(InputError, "does not exist", tmp_path / "nope", tmp_path / "out", untrained_bundle)


def test_folder_without_dicom(tmp_path, untrained_bundle):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "IM0001.dcm").write_bytes(os.urandom(4000))
    run_expecting(InputError, r"no DICOM image files found among 2 file", tmp_path / "in", tmp_path / "out",
                  untrained_bundle)


def test_no_ct_series_matches_the_rules(tmp_path, untrained_bundle):
    ph = cropped_phantom(PATIENT_B_SEED)
    write_scout(ph, tmp_path / "in")
    write_non_ct_series(ph, tmp_path / "in")
    run_expecting(InputError, "no series matches the selection rules", tmp_path / "in", tmp_path / "out",
                  untrained_bundle)


def test_series_with_a_missing_slice(tmp_path, small_series, untrained_bundle):
    small_series[10].unlink()
    err = run_expecting(GeometryError, "uneven slice spacing", tmp_path / "in", tmp_path / "out", untrained_bundle)
    assert "missing" in str(err) and small_series[9].name in str(err) and small_series[11].name in str(err)


def test_truncated_slice_makes_the_series_incomplete(tmp_path, small_series, untrained_bundle, caplog):
    data = small_series[12].read_bytes()
    small_series[12].write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        run_expecting(GeometryError, "uneven slice spacing", tmp_path / "in", tmp_path / "out", untrained_bundle)
    assert any(small_series[12].name in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_corrupt_extra_file_is_skipped_when_the_series_is_complete(tmp_path, small_series, untrained_bundle, caplog):
    junk = tmp_path / "in" / "IM9999.dcm"
    junk.write_bytes(b"DICM" + os.urandom(3000))
    with caplog.at_level(logging.WARNING):
        result = deploy_app.run(tmp_path / "in", tmp_path / "out", untrained_bundle)
    assert len(result.seg_files) == 1 and result.seg_files[0].is_file()
    assert any(junk.name in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def _not_torchscript(path: Path, kind: str, bundle: Path) -> Path:
    """A ``model.ts`` that is no TorchScript: random bytes, a zip of something else, or a zip with the bundle's
    ``extra/`` configs but no network (no ``code/``, ``data.pkl``, ``constants``)."""
    import zipfile

    if kind == "random_bytes":
        path.write_bytes(os.urandom(5000))
        return path
    with zipfile.ZipFile(path, "w") as archive:
        if kind == "plain_zip":
            archive.writestr("notes/readme.txt", "not a model")
        else:
            archive.writestr("model/extra/metadata.json", (bundle / "configs" / "metadata.json").read_text())
            archive.writestr("model/extra/inference.json", '{"preprocessing": {}}')
            archive.writestr("model/data.pkl", "garbage")
    return path


@pytest.mark.parametrize("kind, message", [
    ("random_bytes", "not a MONAI bundle folder nor a TorchScript bundle file"),
    ("plain_zip", "not a TorchScript bundle (no extra/metadata.json"),
    ("zip_without_network", "not a TorchScript model (a TorchScript file is a zip holding code/"),
])
def test_command_line_model_file_that_is_not_torchscript(tmp_path, small_series, untrained_bundle, kind, message):
    """``--model model.ts`` that is no TorchScript: one line naming the file, status 2, no traceback, no output."""
    model = _not_torchscript(tmp_path / "model.ts", kind, untrained_bundle)
    proc = subprocess.run([sys.executable, "-m", "deploy_app", "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "-m", str(model)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {model}: {message}")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("problem", ["missing", "no_weights", "garbage_weights", "not_a_bundle_file"])
def test_model_path_without_a_usable_model(tmp_path, small_series, untrained_bundle, problem):
    import shutil

    model = tmp_path / "model"
    if problem != "missing":
        shutil.copytree(untrained_bundle, model)
    if problem == "no_weights":
        (model / "models" / "model.pt").unlink()
    if problem == "garbage_weights":
        (model / "models" / "model.pt").write_bytes(os.urandom(1000))
    if problem == "not_a_bundle_file":
        model = model / "models" / "model.pt"
    match = {"missing": "does not exist", "no_weights": "models/model.pt is missing",
             "garbage_weights": "not a usable MONAI bundle", "not_a_bundle_file": "not a TorchScript bundle"}[problem]
    err = run_expecting(InputError, match, tmp_path / "in", tmp_path / "out", model)
    assert str(model) in str(err)


def test_output_inside_input_is_refused(tmp_path, small_series, untrained_bundle):
    run_expecting(InputError, "must not be inside the input", tmp_path / "in", tmp_path / "in" / "out",
                  untrained_bundle)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(p.name for p in small_series)


@pytest.mark.parametrize("where", ["parent", "grandparent", "output"])
def test_output_path_through_a_file_is_refused(tmp_path, untrained_bundle, where):
    (tmp_path / "in").mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = {"parent": blocker / "out", "grandparent": blocker / "sub" / "out", "output": blocker}[where]
    with pytest.raises(InputError, match="a_file: exists and is not a folder|a_file is a file") as info:
        deploy_app.run(tmp_path / "in", out, untrained_bundle)
    assert str(blocker) in str(info.value)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in"]  # no staging folder anywhere


def test_staging_folder_is_on_the_output_folders_file_system(tmp_path):
    """Inside an existing OUT_DIR (a MAP's mounted output: a move across the mount would fail), else beside it."""
    from deploy_app.runner import _staging_dir

    mounted = tmp_path / "mounted_out"
    mounted.mkdir()
    inside = _staging_dir(mounted)
    assert inside.parent == mounted and inside.name.startswith(".")
    fresh = tmp_path / "new" / "out"
    beside = _staging_dir(fresh)
    assert beside.parent == fresh.parent and beside.name.startswith(".") and not fresh.exists()


def test_command_line_exits_2_when_the_output_parent_is_a_file(tmp_path, untrained_bundle):
    (tmp_path / "in").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "deploy_app", "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "a_file" / "out"), "-m", str(untrained_bundle)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'a_file'}: exists and is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in"]


def test_command_line_exits_2_with_one_message(tmp_path, untrained_bundle):
    (tmp_path / "in").mkdir()
    proc = subprocess.run([sys.executable, "-m", "deploy_app", "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "-m", str(untrained_bundle)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'in'}: the folder is empty" in proc.stderr
    assert_nothing_written(tmp_path / "out")


def test_rules_file_is_overridable_and_checked(tmp_path, small_series, untrained_bundle, caplog):
    import json

    strict = tmp_path / "strict.json"
    rules = json.loads((Path(deploy_app.__file__).parent / "series_rules.json").read_text())
    rules["selections"][0]["min_slices"] = 30
    strict.write_text(json.dumps(rules))
    with caplog.at_level(logging.INFO):
        run_expecting(InputError, "no series matches", tmp_path / "in", tmp_path / "out", untrained_bundle,
                      rules=strict)
    assert any("only 24 images, rule wants at least 30" in r.getMessage() for r in caplog.records)
    broken = tmp_path / "broken.json"
    broken.write_text('{"selections": []}')
    run_expecting(InputError, "broken.json: rules need a non-empty", tmp_path / "in", tmp_path / "out",
                  untrained_bundle, rules=broken)
