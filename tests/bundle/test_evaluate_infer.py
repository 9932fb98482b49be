"""Evaluation in the original label space and inference in the input's exact grid, checked in patient space.

Every voxel path here is checked in world (RAS) coordinates: a mirrored or shifted mask must fail a test.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from testkit.bundle import TINY, TrainRun, config_arg, run_bundle
from spleenseg.measure import dice

METRICS = ["val_mean_dice", "val_hd95_mm", "val_surface_dice_1mm", "val_pred_volume_ml", "val_ref_volume_ml"]


def _test_case(cohort: Path) -> tuple[Path, Path]:
    """The cohort's held-out test image and its label (kept apart in labelsTs)."""
    meta = json.loads((cohort / "dataset.json").read_text())
    return (cohort / meta["test"][0]).resolve(), (cohort / meta["test_labels"][0]).resolve()


def _infer(run: TrainRun, out: Path, *inputs: str) -> None:
    run_bundle(["run", "--config_file", config_arg("inference"), "--ckpt_path", str(run.model),
                "--output_dir", str(out), *inputs, *TINY])


def _world_centroid(img: nib.Nifti1Image) -> np.ndarray:
    """Centroid of the non-zero voxels in RAS mm."""
    ijk = np.argwhere(np.asarray(img.dataobj) > 0)
    assert len(ijk), "empty mask"
    return nib.affines.apply_affine(img.affine, ijk.mean(0))


def _relabel(img: nib.Nifti1Image, ornt_to: str) -> nib.Nifti1Image:
    """The same physical image stored with another axis order/direction (e.g. LPS): voxels move, world stays."""
    start = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(tuple(ornt_to))
    xform = nib.orientations.ornt_transform(start, target)
    data = nib.orientations.apply_orientation(np.asarray(img.dataobj), xform)
    affine = img.affine @ nib.orientations.inv_ornt_aff(xform, img.shape)
    return nib.Nifti1Image(data, affine)


def _oblique(img: nib.Nifti1Image, degrees: float = 20.0) -> nib.Nifti1Image:
    """The same voxels under an affine rotated about the body's long axis (an oblique acquisition)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return nib.Nifti1Image(np.asarray(img.dataobj), rot @ img.affine)


def test_evaluate_csv_has_every_metric_in_label_space(trained_run: TrainRun, tmp_path: Path) -> None:
    """Held-out test split (labels from ``test_labels``): one row per case, every metric, values in mm/mL."""
    out = tmp_path / "eval"
    run_bundle(["run", "--config_file", config_arg("train", "evaluate"), "--dataset_dir", str(trained_run.dataset_dir),
                "--ckpt_dir", str(trained_run.ckpt_dir), "--output_dir", str(out), "--eval_split", "test", *TINY])
    with (out / "metrics_per_case.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", *METRICS]
    cases = [r for r in rows if r["case"] not in ("mean", "std", "median")]
    assert [r["case"] for r in rows[len(cases):]] == ["mean", "std", "median"]
    meta = json.loads((trained_run.dataset_dir / "dataset.json").read_text())
    assert len(cases) == len(meta["test"]) == len(meta["test_labels"])
    for row, image, label_file in zip(cases, meta["test"], meta["test_labels"]):
        assert Path(row["case"]).name == Path(image).name
        # the reference volume is measured on the ORIGINAL label file, not on a resampled copy
        label = nib.load(trained_run.dataset_dir / label_file)
        ref_ml = (np.asarray(label.dataobj) > 0).sum() * abs(np.linalg.det(label.affine[:3, :3])) / 1000.0
        assert float(row["val_ref_volume_ml"]) == pytest.approx(ref_ml, rel=1e-4)
        assert 0.5 < float(row["val_mean_dice"]) <= 1.0
        assert 0.0 <= float(row["val_surface_dice_1mm"]) <= 1.0
        assert 0.0 <= float(row["val_hd95_mm"]) < 60.0
        assert float(row["val_pred_volume_ml"]) == pytest.approx(ref_ml, rel=0.6)
    for name in METRICS:  # MONAI's own per-metric files are there too
        assert (out / f"{name}_raw.csv").is_file()
    assert {line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()} == set(METRICS)


def _eval_rows(run: TrainRun, dataset_dir: Path, out: Path) -> list[dict[str, str]]:
    run_bundle(["run", "--config_file", config_arg("train", "evaluate"), "--dataset_dir", str(dataset_dir),
                "--ckpt_dir", str(run.ckpt_dir), "--output_dir", str(out), "--eval_split", "test", *TINY])
    with (out / "metrics_per_case.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["case"] not in ("mean", "std", "median")]


def test_evaluate_scores_the_spleen_of_a_multi_organ_reference(trained_run: TrainRun, tmp_path: Path) -> None:
    """A reference that also labels the liver (2) and a kidney (3), as the multi-organ data has, is scored on the
    spleen alone: every metric equals the spleen-only reference's (it used to fail one-hot encoding)."""
    organs = tmp_path / "organs"
    shutil.copytree(trained_run.dataset_dir, organs)
    meta = json.loads((organs / "dataset.json").read_text())
    for label_file in meta["test_labels"]:
        img = nib.load(organs / label_file)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        free = np.argwhere(lab == 0)
        lab[tuple(free[: len(free) // 3].T)] = 2  # a liver on the first third of the background voxels
        lab[tuple(free[-len(free) // 10:].T)] = 3
        nib.save(nib.Nifti1Image(lab, img.affine), organs / label_file)
    spleen_only = _eval_rows(trained_run, trained_run.dataset_dir, tmp_path / "spleen")
    multi = _eval_rows(trained_run, organs, tmp_path / "multi")
    assert len(multi) == len(spleen_only) == len(meta["test"])
    for a, b in zip(spleen_only, multi):
        for name in METRICS:
            assert float(b[name]) == pytest.approx(float(a[name]), rel=1e-5, abs=1e-6), name


def test_inference_grid_and_left_side_for_ras_lps_oblique(trained_run: TrainRun, tmp_path: Path) -> None:
    image_path, label_path = _test_case(trained_run.dataset_dir)
    src = nib.load(image_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    variants = {"ras": src, "lps": _relabel(src, "LPS"), "oblique": _oblique(src)}
    for name, img in variants.items():
        nib.save(img, inputs / f"{name}.nii.gz")
    assert nib.aff2axcodes(variants["lps"].affine) == ("L", "P", "S")
    out = tmp_path / "out"
    _infer(trained_run, out, "--input_dir", str(inputs))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_{kind}" for n in variants
                                                           for kind in ("seg.nii.gz", "qa.json"))
    for name in ("ras", "lps"):  # the QA dict beside each mask: the spleen found on the patient's left
        qa = json.loads((out / f"{name}_qa.json").read_text())
        assert not qa["flags"]["no_spleen"] and not qa["flags"]["candidate_right"], (name, qa["messages"])

    preds = {}
    for name, img in variants.items():
        pred = nib.load(out / f"{name}_seg.nii.gz")
        assert pred.shape == img.shape, name
        np.testing.assert_allclose(pred.affine, img.affine, atol=1e-4, err_msg=name)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
        preds[name] = pred

    # LPS is a pure voxel permutation of the same physical image: the mask must be the same in patient space
    lps_back = _relabel(preds["lps"], "".join(nib.aff2axcodes(src.affine)))
    np.testing.assert_allclose(lps_back.affine, src.affine, atol=1e-4)
    assert dice(np.asarray(lps_back.dataobj) > 0, np.asarray(preds["ras"].dataobj) > 0) > 0.99

    # the spleen is where the reference says and on the patient's LEFT (RAS x below the body's centre)
    ref = nib.load(label_path)
    assert dice(np.asarray(preds["ras"].dataobj) > 0, np.asarray(ref.dataobj) > 0) > 0.6
    body = nib.Nifti1Image((np.asarray(src.dataobj) > -300).astype(np.uint8), src.affine)
    body_x = _world_centroid(body)[0]
    for name in ("ras", "lps"):
        spleen = _world_centroid(preds[name])
        assert spleen[0] < body_x - 30.0, f"{name}: spleen centroid x={spleen[0]:.0f} mm not left of {body_x:.0f}"
        assert np.linalg.norm(spleen - _world_centroid(ref)) < 15.0, name
    # oblique: the same voxels under a rotated affine; the mask must stay on those voxels, i.e. on the reference
    # drawn in the same rotated frame (the model sees a resampled, rotated image, hence the lower bound)
    oblique_ref = _oblique(ref)
    assert dice(np.asarray(preds["oblique"].dataobj) > 0, np.asarray(oblique_ref.dataobj) > 0) > 0.6
    # in patient coordinates (the rotation moves this spleen by about 35 mm, so a mask left unrotated fails)
    assert np.linalg.norm(_world_centroid(preds["oblique"]) - _world_centroid(oblique_ref)) < 15.0


def test_inference_single_file_with_probability(trained_run: TrainRun, tmp_path: Path) -> None:
    image_path, _ = _test_case(trained_run.dataset_dir)
    out = tmp_path / "out"
    _infer(trained_run, out, "--input_file", str(image_path), "--save_prob", "true", "--largest_cc", "false")
    stem = image_path.name[: -len(".nii.gz")]
    seg, prob = nib.load(out / f"{stem}_seg.nii.gz"), nib.load(out / f"{stem}_prob.nii.gz")
    src = nib.load(image_path)
    for img in (seg, prob):
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-4)
    p = prob.get_fdata()
    assert 0.0 <= p.min() and p.max() <= 1.0 and p.max() > 0.5
    # the saved probability and mask agree: with largest_cc off the mask is the spleen probability above 0.5
    assert dice(p > 0.5, np.asarray(seg.dataobj) > 0) > 0.98
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # staging folder cleaned up


def _a_test_image(run: TrainRun) -> Path:
    return sorted((run.dataset_dir / "imagesTs").glob("*.nii.gz"))[0]


def _last_line_error(proc) -> str:
    """A bad-input bundle run: status 2, no traceback, and a last line that names the problem."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Failed to evaluate" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["input", "checkpoint", "folder"])
def test_inference_bad_input_ends_with_one_line_naming_it(case: str, trained_run: TrainRun, tmp_path: Path
                                                          ) -> None:
    missing = tmp_path / ("nope.pt" if case == "checkpoint" else "nope.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    source = {"input": ["--input_file", str(missing)], "folder": ["--input_dir", str(empty)],
              "checkpoint": ["--input_file", str(_a_test_image(trained_run))]}[case]
    ckpt = missing if case == "checkpoint" else trained_run.model
    out = tmp_path / "out"
    proc = run_bundle(["run", "--config_file", config_arg("inference"), "--ckpt_path", str(ckpt),
                       "--output_dir", str(out), *source], check=False)
    expected = {"input": f"error: {missing}: input file does not exist",
                "checkpoint": f"error: {missing}: checkpoint not found",
                "folder": f"error: {empty}: no NIfTI files (.nii/.nii.gz) in this folder"}[case]
    assert _last_line_error(proc) == expected
    assert not out.exists() or not list(out.iterdir()), "nothing may be written for a run that cannot start"


def test_evaluate_missing_checkpoint_or_dataset_ends_with_one_line(trained_run: TrainRun, tmp_path: Path) -> None:
    args = ["run", "--config_file", config_arg("train", "evaluate"), "--output_dir", str(tmp_path / "eval"), *TINY]
    proc = run_bundle([*args, "--dataset_dir", str(trained_run.dataset_dir), "--ckpt_path", str(tmp_path / "x.pt")],
                      check=False)
    assert _last_line_error(proc) == f"error: {tmp_path / 'x.pt'}: checkpoint not found"
    proc = run_bundle([*args, "--dataset_dir", str(tmp_path / "none"), "--ckpt_path", str(trained_run.model)],
                      check=False)
    assert _last_line_error(proc).startswith(f"error: {tmp_path / 'none'}")


def test_an_unexpected_error_keeps_its_traceback_and_repeats_the_cause_last(trained_run: TrainRun,
                                                                            tmp_path: Path) -> None:
    """A checkpoint of random bytes is not a known input error: the traceback stays, the cause ends it."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    proc = run_bundle(["run", "--config_file", config_arg("inference"), "--ckpt_path", str(junk),
                       "--output_dir", str(tmp_path / "out"),
                       "--input_file", str(_a_test_image(trained_run))], check=False)
    assert proc.returncode not in (0, 2) and "Traceback" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Failed to evaluate" not in last, last


def test_torchrun_evaluate_matches_one_process(trained_run: TrainRun, tmp_path: Path) -> None:
    """Two gloo processes split the cases; the per-case table is the same as one process would write, and only
    rank 0 draws its sliding-window bars (two processes would garble one terminal)."""
    import re
    import sys

    tables, bars = {}, {}
    for name, configs, launcher in (
        ("one", ("train", "evaluate"), None),
        ("two", ("train", "evaluate", "multi_gpu_evaluate"),
         [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519"]),
    ):
        out = tmp_path / name
        proc = run_bundle(["run", "--config_file", config_arg(*configs), "--dataset_dir",
                           str(trained_run.dataset_dir), "--ckpt_dir", str(trained_run.ckpt_dir), "--output_dir",
                           str(out), "--eval_split", "training", *TINY], launcher=launcher)
        bars[name] = len(re.findall(r"(?:^|\s)0%\|", proc.stderr))  # a bar starts once per case scored
        with (out / "metrics_per_case.csv").open() as fh:
            tables[name] = {r["case"]: r for r in csv.DictReader(fh) if r["case"] not in ("mean", "std", "median")}
    assert tables["one"].keys() == tables["two"].keys() and len(tables["one"]) >= 2
    assert bars == {"one": len(tables["one"]), "two": (len(tables["one"]) + 1) // 2}  # rank 0: every other case
    for case, row in tables["one"].items():
        for metric in METRICS:
            assert float(tables["two"][case][metric]) == pytest.approx(float(row[metric]), rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("configs, typo, hint", [
    (("inference",), "--overlapp", "--overlapp (did you mean --overlap?)"),
    (("train",), "--epoch", "--epoch (did you mean --epochs?)"),
    (("inference", "batch_inference"), "--input_cvs", "--input_cvs (did you mean --input_csv?)"),
])
def test_a_misspelt_option_is_one_line_before_any_work(tmp_path: Path, configs: tuple, typo: str, hint: str) -> None:
    """monai.bundle would add an unknown option as a new, unused key and run with the default; the configs'
    first initialize step refuses it instead, naming the option, the likely key and the config files."""
    out = tmp_path / "out"
    proc = run_bundle(["run", "--config_file", config_arg(*configs), "--output_dir", str(out), typo, "3"],
                      check=False)
    last = _last_line_error(proc)
    assert last.startswith(f"error: unknown option(s) {hint}: not a key of "), last
    assert not out.exists()
