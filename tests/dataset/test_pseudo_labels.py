"""Pseudo-labels: real unlabelled CT segmented by the shipped bundle, kept only when the anatomy QA agrees.

Real components: the bundle's inference.json through ``python -m monai.bundle run``, the shipped weights, and
the real MSD spleen_15 crop. A copy of the full TotalSegmentator volume with its header mirrored left/right must
be rejected (the liver then lies on the patient's left and competes with the spleen), and the held-out
patient's unlabelled volume must never be used. The mirrored copy is of a whole abdomen on purpose: in a tight
crop around the spleen the body midline is the crop's centre, so the side checks cannot see a mirror there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spleenseg.dataset.pseudo import UNLABELLED, UnlabelledCase, add_pseudo_labels, eligible, rejection
from spleenseg.dataset.real import build_real_dataset
from spleenseg.errors import InputError
from spleenseg.paths import BUNDLE_DIR

CKPT = BUNDLE_DIR / "models" / "model.pt"


def test_held_out_patient_is_never_pseudo_labelled() -> None:
    names = lambda held: [c.case for c in eligible(held)]  # noqa: E731
    # the full 3 mm TotalSegmentator volume contains the held-out crop: same patient, never trained on
    assert names(["ts_abdomen_crop"]) == ["msd_spleen_15"]
    assert names(["msd_spleen_8"]) == [c.case for c in UNLABELLED]
    assert names(["dtu_slab_a", "dtu_slab_b"]) == [c.case for c in UNLABELLED]
    with pytest.raises(InputError, match="unknown held-out"):
        eligible(["spleen_99"])


def test_rejection_names_each_raised_flag_but_tolerates_a_cut_field_of_view() -> None:
    flags = {"no_spleen": False, "candidate_right": True, "fov_cut": True, "low_confidence": True}
    assert rejection({"flags": flags}) == "candidate_right, low_confidence"
    assert rejection({"flags": {**flags, "candidate_right": False, "low_confidence": False}}) is None


def test_spleen_15_is_added_and_its_mirrored_copy_rejected(tmp_path: Path, shared_data: Path) -> None:
    real_ct = shared_data / "real_ct"
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    src = nib.load(str(real_ct / "ts_abdomen_ct_3mm.nii.gz"))
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0]) @ src.affine  # world x -> -x: the header now mirrors left/right
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), mirror, src.header), unlabelled / "mirrored.nii.gz")
    (unlabelled / "spleen15.nii.gz").symlink_to(real_ct / "msd_spleen15_crop_unlabeled.nii.gz")
    before = (real_ct / "msd_spleen15_crop_unlabeled.nii.gz").read_bytes()

    dataset = tmp_path / "fold" / "real"
    build_real_dataset(dataset, real_ct, progress=False)  # default split: ts_abdomen_crop held out
    cases = [UnlabelledCase("msd_spleen_15", "spleen15.nii.gz", "msd_spleen_15"),
             UnlabelledCase("mirrored_ts", "mirrored.nii.gz", "test_only_patient")]
    record = add_pseudo_labels(dataset, BUNDLE_DIR, CKPT, real_ct=unlabelled, cases=cases)

    ok, bad = record["cases"]["msd_spleen_15"], record["cases"]["mirrored_ts"]
    assert ok["accepted"] and 100 < ok["volume_ml"] < 400, ok
    assert not bad["accepted"] and bad["reason"], bad
    meta = json.loads((dataset / "dataset.json").read_text())
    training = [e["label"] for e in meta["training"]]
    assert "./labelsTr/pseudo_msd_spleen_15.nii.gz" in training
    assert not any("mirrored" in t for t in training)
    assert not (dataset / "labelsTr" / "pseudo_mirrored_ts.nii.gz").exists()
    assert meta["pseudo_labels"]["held_out"] == ["ts_abdomen_crop"]
    # the added label lies on its image's grid, and the input is untouched
    label = dataset / "labelsTr" / "pseudo_msd_spleen_15.nii.gz"
    image = dataset / "imagesTr" / "pseudo_msd_spleen_15.nii.gz"
    source = real_ct / "msd_spleen15_crop_unlabeled.nii.gz"
    assert np.allclose(nib.load(str(label)).affine, nib.load(str(source)).affine)
    assert nib.load(str(label)).shape == nib.load(str(image)).shape
    assert (real_ct / "msd_spleen15_crop_unlabeled.nii.gz").read_bytes() == before
    assert not list(dataset.glob(".pseudo-*")), "the temporary inference folder must be removed"


def test_cli_names_a_missing_checkpoint_and_exits_2(tmp_path: Path, shared_data: Path) -> None:
    dataset = tmp_path / "real"
    build_real_dataset(dataset, shared_data / "real_ct", progress=False)
    done = subprocess.run([sys.executable, "-m", "spleenseg.commands.prepare_data", "pseudo_labels",
                           str(dataset), "--ckpt", str(tmp_path / "nope.pt")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "nope.pt: checkpoint not found" in done.stderr.strip().splitlines()[-1]


def test_cli_passes_the_model_overrides_to_the_labelling_run(tmp_path: Path, shared_data: Path) -> None:
    """--bundle_args reaches inference.json (a model trained with another window must label with it): an
    override that names no bundle key is refused there, in one line that names it, and nothing is added."""
    dataset = tmp_path / "real"
    build_real_dataset(dataset, shared_data / "real_ct", progress=False)
    before = (dataset / "dataset.json").read_text()
    done = subprocess.run([sys.executable, "-m", "spleenseg.commands.prepare_data", "pseudo_labels",
                           str(dataset), "--ckpt", str(CKPT), "--bundle_args=--a_min -150 --a_maxx 250"],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "bundle inference failed" in last and "a_maxx" in last, last
    assert (dataset / "dataset.json").read_text() == before
    assert not list((dataset / "labelsTr").glob("pseudo_*"))
