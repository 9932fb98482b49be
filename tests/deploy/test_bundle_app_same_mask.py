"""One inference graph: the bundle's ``inference.json`` run by ``python -m monai.bundle run`` on the NIfTI of a
series, and the app run on the DICOM of the same series, give the same spleen mask and the same QA verdict.

Both masks are compared in patient coordinates (their RAS affines must agree), so a graph difference that
shifts, mirrors or trims the result fails here, and so does a difference in the kept component.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from spleenseg.dicom.convert import convert_folder
from spleenseg.paths import REPO_ROOT


def _bundle_inference(bundle: Path, image: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--input_file", str(image), "--output_dir", str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj) > 0, img.affine


def test_bundle_run_and_app_give_the_same_mask(e2e_result, phantom_study, trained_bundle, tmp_path):
    series_dir = Path(phantom_study["a_thin"][0]).parent
    uid = str(pydicom.dcmread(phantom_study["a_thin"][0], stop_before_pixels=True).SeriesInstanceUID)
    images = convert_folder(series_dir, tmp_path / "nifti", modality="CT", progress=False)
    assert len(images) == 1, images  # the scout and the secondary capture are not converted
    _bundle_inference(trained_bundle, Path(images[0]), tmp_path / "bundle_out")

    bundle_masks = sorted((tmp_path / "bundle_out").rglob("*_seg.nii.gz"))
    qa_files = sorted((tmp_path / "bundle_out").rglob("*_qa.json"))
    assert len(bundle_masks) == 1 and len(qa_files) == 1, sorted((tmp_path / "bundle_out").rglob("*"))
    entry = next(e for e in e2e_result.report["series"] if e["series_instance_uid"] == uid)
    app_mask, app_affine = _canonical(e2e_result.output_dir / entry["nifti_file"])
    bundle_mask, bundle_affine = _canonical(bundle_masks[0])

    np.testing.assert_allclose(app_affine, bundle_affine, atol=1e-3)  # the same grid in patient space
    assert app_mask.shape == bundle_mask.shape
    assert app_mask.sum() > 500  # the phantom spleen was found, so the comparison means something
    assert int((app_mask != bundle_mask).sum()) == 0
    bundle_qa = json.loads(qa_files[0].read_text())
    assert bundle_qa["flags"] == entry["qa"]["flags"] and bundle_qa["verdict"] == entry["qa"]["verdict"]
    assert abs(bundle_qa["spleen_volume_ml"] - entry["qa"]["spleen_volume_ml"]) < 1e-6
