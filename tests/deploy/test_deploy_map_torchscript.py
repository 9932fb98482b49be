"""The MAP way: ``python <app folder>`` from a clean copy of the app, paths from the HOLOSCAN_* environment
variables, and a TorchScript bundle made by ``monai.bundle ckpt_export`` (as the README, "Deployment" packages it);
and the same copy in a virtual environment that holds only ``deploy_app/requirements.txt``, as the MAP image does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import hashlib

import numpy as np
import pydicom
import pytest
import yaml

import deploy_app
from spleenseg.paths import REPO_ROOT
from testkit.deploy import dice, seg_frames


def export_torchscript(bundle: Path, out: Path) -> Path:
    """``python -m monai.bundle ckpt_export``, as the MONAI model zoo does."""
    subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(out),
                    "--ckpt_file", str(bundle / "models" / "model.pt"),
                    "--meta_file", str(bundle / "configs" / "metadata.json"),
                    "--config_file", str([str(bundle / "configs" / f"{n}.json") for n in ("inference", "deploy")])],
                   check=True, capture_output=True, timeout=300, cwd=out.parent)
    return out


def map_app_folder(dest: Path) -> Path:
    """The folder ``monai-deploy package`` gets: deploy_app/ + spleenseg/ + a __main__.py that runs the app."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("deploy_app", "spleenseg"):
        shutil.copytree(REPO_ROOT / package, dest / package, ignore=ignore)
    for name in ("requirements.txt", "app.yaml"):
        shutil.copy(REPO_ROOT / "deploy_app" / name, dest / name)
    (dest / "__main__.py").write_text('import runpy\nrunpy.run_module("deploy_app", run_name="__main__")\n')
    return dest


def run_app_copy(python: Path | str, app: Path, args: list[str], env: dict[str, str],
                 cwd: Path) -> subprocess.CompletedProcess:
    """``python <app folder> [args]`` as the MAP container runs it; fails the test with its stderr."""
    proc = subprocess.run([str(python), str(app), *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def seg_pair(out_dir: Path, reference: deploy_app.RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the one SEG in ``out_dir`` and of the reference run's SEG (same file name required)."""
    segs = sorted(out_dir.glob("SEG_*.dcm"))
    assert [p.name for p in segs] == [p.name for p in reference.seg_files]
    return seg_frames(pydicom.dcmread(segs[0])), seg_frames(pydicom.dcmread(reference.seg_files[0]))


def torchscript_bundle(bundle: Path, dest: Path) -> Path:
    """The model-zoo layout of a TorchScript bundle: ``configs/``, ``scripts/`` and ``models/model.ts``."""
    for part in ("configs", "scripts"):
        shutil.copytree(bundle / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "models").mkdir()
    return export_torchscript(bundle, dest / "models" / "model.ts")


def test_env_vars_and_torchscript_bundle_give_the_folder_bundle_result(tmp_path, small_series, trained_bundle):
    folder_result = deploy_app.run(tmp_path / "in", tmp_path / "out_folder", trained_bundle)
    model_ts = torchscript_bundle(trained_bundle, tmp_path / "ts_bundle")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # stdout block-buffered, as in a MAP
           "HOLOSCAN_INPUT_PATH": str(tmp_path / "in"), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "out_ts"),
           "HOLOSCAN_MODEL_PATH": str(model_ts)}
    (tmp_path / "out_ts").mkdir()  # exists, as a container's mounted output folder does
    proc = run_app_copy(sys.executable, map_app_folder(tmp_path / "map_app"), [], env, tmp_path)
    a, b = seg_pair(tmp_path / "out_ts", folder_result)
    assert b.sum() > 0 and dice(a, b) > 0.99
    # The app ends with os._exit (no interpreter teardown): what it printed and logged must still come out.
    printed = sorted(Path(line) for line in proc.stdout.splitlines())
    assert printed == sorted((tmp_path / "out_ts").iterdir())  # and no staging folder left inside
    assert (tmp_path / "out_ts" / "spleen_report.json") in printed
    assert "done in" in proc.stderr
    assert np.array_equal(a.shape, b.shape)


@pytest.fixture(scope="session")
def map_python(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a virtual environment with only the app's requirements (no pytest, ignite, fire, matplotlib...).

    Built once per machine (about 40 s with a warm pip cache) and kept in pytest's cache, keyed by the
    requirements file and the Python version; with the cache plugin off (``-p no:cacheprovider``) it is built
    in a session temp folder instead.
    """
    requirements = REPO_ROOT / "deploy_app" / "requirements.txt"
    key = hashlib.sha1(requirements.read_bytes() + sys.version.encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    venv = (cache.mkdir("map_venv") if cache is not None else tmp_path_factory.mktemp("map_venv")) / key
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"pip install -r {requirements} failed:\n{proc.stderr[-3000:]}"
        (venv / ".complete").write_text("ok\n")
    return python


def test_app_runs_with_only_its_own_requirements(tmp_path, small_series, trained_bundle, map_python):
    installed = subprocess.run([str(map_python), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                               text=True, check=True).stdout.lower()
    assert "pytorch-ignite" not in installed and "fire==" not in installed  # really only the app's requirements
    folder_result = deploy_app.run(tmp_path / "in", tmp_path / "out_dev", trained_bundle)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    args = ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out_map"), "-m", str(trained_bundle)]
    run_app_copy(map_python, map_app_folder(tmp_path / "map_app"), args, env, tmp_path)
    a, b = seg_pair(tmp_path / "out_map", folder_result)
    assert b.sum() > 0 and np.array_equal(a, b)


def test_a_lone_torchscript_file_without_the_bundle_code_is_one_clear_error(tmp_path, trained_bundle):
    """The post-processing names the bundle's own transforms, which a TorchScript file does not carry."""
    from deploy_app.bundle_info import read_model_metadata
    from spleenseg.errors import InputError

    model_ts = export_torchscript(trained_bundle, tmp_path / "model.ts")
    with pytest.raises(InputError, match=r"model.ts: this TorchScript bundle's inference.json uses the bundle's own"):
        read_model_metadata(model_ts)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_app_runs_on_the_k8s_jobs_mounts(tmp_path, small_series, trained_bundle):
    """The example Job's environment (deploy_app/examples/k8s-job.yaml), with each container path standing for a
    folder here: the study mounted as input, an empty output volume, and the image's models folder holding the
    one bundle as the packager lays it out. The app needs nothing else, writes only into the output mount and
    leaves the study as it was."""
    job = yaml.safe_load((REPO_ROOT / "deploy_app" / "examples" / "k8s-job.yaml").read_text())
    [container] = job["spec"]["template"]["spec"]["containers"]
    job_env = {e["name"]: e["value"] for e in container["env"]}
    models = tmp_path / "opt_holoscan_models"
    shutil.copytree(trained_bundle, models / "spleen_ct_seg")
    here = {job_env["HOLOSCAN_INPUT_PATH"]: tmp_path / "in", job_env["HOLOSCAN_OUTPUT_PATH"]: tmp_path / "out",
            job_env["HOLOSCAN_MODEL_PATH"]: models}
    (tmp_path / "out").mkdir()  # a mounted volume exists before the container starts
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_") and k != "PYTHONPATH"},
           **{name: str(here[value]) for name, value in job_env.items()}}
    study = tree_digest(tmp_path / "in")
    reference = deploy_app.run(tmp_path / "in", tmp_path / "out_dev", trained_bundle)
    run_app_copy(sys.executable, map_app_folder(tmp_path / "map_app"), [], env, tmp_path)
    assert tree_digest(tmp_path / "in") == study
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in (tmp_path / "out_dev").iterdir())  # SEG + report, no staging folder left
    a, b = seg_pair(tmp_path / "out", reference)
    assert b.sum() > 0 and np.array_equal(a, b)
