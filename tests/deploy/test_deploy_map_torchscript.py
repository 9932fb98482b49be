"""The MAP way: ``python <app folder>`` from a clean copy of the app, paths from the HOLOSCAN_* environment
variables, and a TorchScript bundle made by ``monai.bundle ckpt_export`` (as the README, "Deployment" packages it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom

import deploy_app
from spleenseg.paths import REPO_ROOT
from deploy_helpers import dice, seg_frames


def export_torchscript(bundle: Path, out: Path) -> Path:
    """``python -m monai.bundle ckpt_export``, as the MONAI model zoo does."""
    subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(out),
                    "--ckpt_file", str(bundle / "models" / "model.pt"),
                    "--meta_file", str(bundle / "configs" / "metadata.json"),
                    "--config_file", str(bundle / "configs" / "inference.json")],
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


def test_env_vars_and_torchscript_bundle_give_the_folder_bundle_result(tmp_path, small_series, trained_bundle):
    folder_result = deploy_app.run(tmp_path / "in", tmp_path / "out_folder", trained_bundle)
    model_ts = export_torchscript(trained_bundle, tmp_path / "model.ts")
    app = map_app_folder(tmp_path / "map_app")
    env = {**os.environ, "HOLOSCAN_INPUT_PATH": str(tmp_path / "in"), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "out_ts"),
           "HOLOSCAN_MODEL_PATH": str(model_ts)}
    proc = subprocess.run([sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ts_segs = sorted((tmp_path / "out_ts").glob("SEG_*.dcm"))
    assert [p.name for p in ts_segs] == [p.name for p in folder_result.seg_files]
    a = seg_frames(pydicom.dcmread(ts_segs[0]))
    b = seg_frames(pydicom.dcmread(folder_result.seg_files[0]))
    assert b.sum() > 0 and dice(a, b) > 0.99
    assert (tmp_path / "out_ts" / "spleen_report.json").is_file()
    assert np.array_equal(a.shape, b.shape)
