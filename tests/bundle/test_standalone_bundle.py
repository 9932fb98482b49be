"""The bundle on its own: copied out of the repository, it runs where the ``spleenseg`` library cannot be imported.

Why: a MONAI model-zoo bundle is shipped as its folder alone, with only the packages ``metadata.json`` lists;
an import of the project library from ``bundle/scripts`` passes every in-repository test and breaks every user.
Each run is a subprocess that blocks the library (``sys.modules['spleenseg'] = None`` makes any import of it
fail) with the copy as ``bundle_root`` and an unrelated working folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from testkit.bundle import TINY
from spleenseg.paths import BUNDLE_DIR

#: Python code run instead of ``python -m monai.bundle``/``python -c``: the library is unimportable (its
#: submodules too, should anything have loaded them at start-up), then the given code runs.
BLOCK = ("import sys; [sys.modules.pop(m) for m in list(sys.modules) if m.startswith('spleenseg.')]; "
         "sys.modules['spleenseg'] = None; ")
RUN_BUNDLE = BLOCK + ("import runpy; sys.argv = ['monai.bundle', *sys.argv[1:]]; "
                      "runpy.run_module('monai.bundle', run_name='__main__')")


def _run(code: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONPATH", None)  # nothing of the repository on the path: only the copy and installed packages
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bundle/`` alone (configs, scripts, docs, the shipped checkpoint) copied into an empty folder."""
    copy = tmp_path_factory.mktemp("standalone") / "spleen_ct_segmentation"
    for part in ("configs", "scripts", "docs"):
        shutil.copytree(BUNDLE_DIR / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "models").mkdir()
    shutil.copy2(BUNDLE_DIR / "models" / "model.pt", copy / "models" / "model.pt")
    shutil.copy2(BUNDLE_DIR / "LICENSE", copy / "LICENSE")
    return copy


def _infer(bundle: Path, input_file: Path, out: Path) -> subprocess.CompletedProcess:
    return _run(RUN_BUNDLE, ["run", "--config_file", str(bundle / "configs" / "inference.json"),
                             "--bundle_root", str(bundle), "--input_file", str(input_file),
                             "--output_dir", str(out), *TINY], cwd=bundle.parent)


def test_inference_runs_without_the_project_library(standalone: Path, tiny_cohort: Path) -> None:
    image = sorted((tiny_cohort / "imagesTs").glob("*.nii.gz"))[0]
    out = standalone.parent / "out"
    proc = _infer(standalone, image, out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    name = image.name.split(".nii")[0]
    seg = nib.load(out / f"{name}_seg.nii.gz")
    src = nib.load(image)
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
    qa = json.loads((out / f"{name}_qa.json").read_text())
    assert isinstance(qa, dict) and qa


def test_missing_input_is_one_line_and_status_2(standalone: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_ct.nii.gz"
    proc = _infer(standalone, missing, tmp_path / "out")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {missing}: input file does not exist"
    assert "Traceback" not in proc.stderr


def test_library_extras_are_skipped_with_one_warning(standalone: Path, tmp_path: Path) -> None:
    """Learning curves and the patient-left check use the library when present; without it each is skipped
    with one WARNING (however often it is asked for) and the rest of the work is done."""
    code = BLOCK + f"""
import logging, sys
import torch
from monai.data import MetaTensor
logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
sys.path.insert(0, {str(standalone)!r})
import scripts.training, scripts.orientation
writer = scripts.training.EpochMetricsWriter({str(tmp_path)!r})
writer.rows = [{{"epoch": 1, "train_loss": 0.5, "val_mean_dice": 0.1}}]
writer._write(); writer._plot(); writer._plot()
mask = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.eye(4))
check = scripts.orientation.SpleenSideCheckd(keys=["pred"], image_key=None)
for _ in range(2):
    assert check({{"pred": mask}})["pred"] is mask
"""
    proc = _run(code, [], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING scripts.optional")]
    assert warnings == [
        "WARNING scripts.optional: learning-curve PNG skipped: the spleenseg package is not installed; "
        "metrics.json and metrics.csv are written",
        "WARNING scripts.optional: spleen left/right check of the masks skipped: the spleenseg package is not "
        "installed; the metrics are computed as usual",
    ], proc.stderr[-2000:]
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "metrics.csv").is_file()
    assert not (tmp_path / "learning_curves.png").exists()
