"""Learning curves, slice panels and GIFs (spleenseg.report), with the patient's left/right checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from bundle_util import TINY, TrainRun
from spleenseg.paths import REPO_ROOT
from spleenseg.report.curves import best_epoch, plot_learning_curves, read_metrics
from spleenseg.report.overlay import load_ras, to_display


def test_curves_mark_the_best_epoch(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_mean_dice": d} for e, d in [(1, None), (2, 0.5), (3, None),
                                                                                  (4, 0.8), (5, None), (6, 0.7)]]
    assert best_epoch(rows) == (4, 0.8)
    png = plot_learning_curves(rows, tmp_path / "curves.png")
    with Image.open(png) as img:
        assert img.format == "PNG"
    (tmp_path / "m.csv").write_text("epoch,train_loss,val_mean_dice\n1,0.9,\n2,0.5,0.6\n")
    assert best_epoch(read_metrics(tmp_path / "m.csv")) == (2, 0.6)


def test_display_is_radiological_for_ras_and_lps_files(tmp_path: Path) -> None:
    """A mark on the patient's left must be drawn on the viewer's right, whatever the file's axis order."""
    data = np.zeros((20, 10, 4), np.uint8)
    data[2, 7, :] = 1  # RAS: low x = patient's left, high y = anterior
    ras = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    lps_affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    lps_affine[:2, 3] = [38.0, 18.0]  # same world box
    lps = nib.Nifti1Image(data[::-1, ::-1].copy(), lps_affine)
    for name, img in (("ras", ras), ("lps", lps)):
        nib.save(img, tmp_path / f"{name}.nii.gz")
        shown = to_display(load_ras(tmp_path / f"{name}.nii.gz").data[:, :, 1])
        row, col = np.argwhere(shown)[0]
        assert col > shown.shape[1] / 2, f"{name}: patient's left not on the viewer's right"
        assert row < shown.shape[0] / 2, f"{name}: anterior not at the top"


def test_visualize_cli_writes_panels_gif_and_curves(trained_run: TrainRun, tmp_path: Path) -> None:
    out = tmp_path / "fig"
    proc = subprocess.run([sys.executable, "scripts/visualize.py", "--dataset_dir", str(trained_run.dataset_dir),
                           "--out_dir", str(out), "--ckpt", str(trained_run.model), "--split", "test",
                           "--n_cases", "1", "--n_slices", "2",
                           "--metrics", str(trained_run.output_dir / "metrics.json"), *TINY],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    panels = sorted(out.glob("*_slice*.png"))
    assert 1 <= len(panels) <= 2
    n_slices = nib.load(next((trained_run.dataset_dir / "imagesTs").glob("*.nii.gz"))).shape[2]
    with Image.open(next(out.glob("*.gif"))) as gif:
        assert n_slices / 2 < gif.n_frames <= n_slices  # one frame per slice (PIL may merge identical ones)
    assert (out / "learning_curves.png").is_file()


def test_visualize_gif_false_and_a_misspelt_option(trained_run: TrainRun, tmp_path: Path) -> None:
    base = [sys.executable, "scripts/visualize.py", "--dataset_dir", str(trained_run.dataset_dir), "--ckpt",
            str(trained_run.model), "--split", "test", "--n_cases", "1", "--n_slices", "1", *TINY]
    typo = subprocess.run([*base, "--out_dir", str(tmp_path / "typo"), "--n_slice", "2"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stderr[-2000:]
    assert "unknown option(s) --n_slice: not an option of visualize" in typo.stderr
    assert not (tmp_path / "typo").exists()
    proc = subprocess.run([*base, "--out_dir", str(tmp_path / "fig"), "--gif", "false"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "fig").glob("*_slice*.png")) and not list((tmp_path / "fig").glob("*.gif"))


def test_visualize_picks_the_validation_cases_training_used(tiny_cohort: Path, tmp_path: Path) -> None:
    """A dataset without a ``validation`` list (as MSD Task09) gets the same split training derives."""
    import json
    import shutil

    from spleenseg.report.visualize import _bundle_datalist, _cases

    msd_like = tmp_path / "Task09"
    shutil.copytree(tiny_cohort, msd_like)
    meta = json.loads((msd_like / "dataset.json").read_text())
    meta["training"] += meta.pop("validation")
    (msd_like / "dataset.json").write_text(json.dumps(meta))
    training_split = _bundle_datalist().load_datalist(msd_like, "validation", 0.2, 0)  # train.json's defaults
    cases = _cases(msd_like, "validation", n_cases=10)
    assert [c["image"] for c in cases] == [Path(d["image"]) for d in training_split] and cases
    assert all(c["label"] is not None and c["label"].is_file() for c in cases)
