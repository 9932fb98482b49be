"""Learning curves, slice panels and GIFs (spleenseg.report), with the patient's left/right checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from testkit.bundle import TINY, TrainRun
from spleenseg.errors import InputError
from spleenseg.measure import dice
from spleenseg.paths import BUNDLE_DIR, REPO_ROOT
from spleenseg.report.curves import best_epoch, plot_learning_curves, read_metrics
from spleenseg.report.overlay import (RasVolume, case_title, load_ras, panel_figure, slice_panel, slices_gif,
                                      to_display, voxel_ml)
from spleenseg.report.visualize import model_label


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


def _saved_ras(data: np.ndarray, affine: np.ndarray, path: Path) -> RasVolume:
    nib.save(nib.Nifti1Image(data, affine), path)
    return load_ras(path)


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[RasVolume, RasVolume, RasVolume]:
    """(CT, prediction, reference) stored LPS with 2 x 2 x 2.5 mm voxels (10 uL each): the prediction has 400
    voxels (4.0 mL), the reference 400 of which 200 are shared, so Dice is exactly 0.5."""
    affine = np.diag([-2.0, -2.0, 2.5, 1.0])
    pred = np.zeros((20, 16, 8), np.uint8)
    pred[2:12, 2:12, 2:6] = 1
    ref = np.zeros_like(pred)
    ref[7:17, 2:12, 2:6] = 1
    ct = np.full(pred.shape, -100, np.int16) + 150 * pred
    return (_saved_ras(ct, affine, tmp_path / "ct.nii.gz"), _saved_ras(pred, affine, tmp_path / "pred.nii.gz"),
            _saved_ras(ref, affine, tmp_path / "ref.nii.gz"))


def test_title_has_case_model_and_the_dice_or_the_volume_of_the_masks(crafted) -> None:
    _, pred, ref = crafted
    assert case_title("case7", "m.pt (bundle 9.9)", pred, ref) == "case7 | model m.pt (bundle 9.9) | Dice 0.500"
    assert case_title("case7", "m.pt", pred) == "case7 | model m.pt | predicted spleen 4.0 mL"
    c, s = np.cos(0.5), np.sin(0.5)  # an oblique grid keeps its voxel volume
    assert voxel_ml(np.array([[2 * c, -2 * s, 0, 0], [2 * s, 2 * c, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])) == \
        pytest.approx(0.01)
    with pytest.raises(ValueError, match="reference grid"):
        case_title("case7", "m.pt", pred, RasVolume(ref.data[:-1], ref.spacing, ref.affine))


def test_panel_and_gif_carry_the_title(crafted, tmp_path: Path) -> None:
    """The figure's heading, the PNG's Title text and the GIF's comment are the title; the GIF draws it in a
    band above the slice."""
    ct, pred, ref = crafted
    title = case_title("case7", "m.pt (bundle 9.9)", pred, ref)
    assert panel_figure(ct, ref, pred, 3, title)._suptitle.get_text().startswith(title + "\n")
    with Image.open(slice_panel(ct, ref, pred, 3, tmp_path / "p.png", title)) as png:
        assert png.text["Title"] == title
    with Image.open(slices_gif(ct, ref, pred, tmp_path / "t.gif", title=title)) as gif, \
            Image.open(slices_gif(ct, ref, pred, tmp_path / "u.gif")) as plain:
        assert gif.info["comment"] == title.encode() and "comment" not in plain.info
        band = gif.height - plain.height
        assert band > 0 and gif.width == plain.width
        text = np.asarray(gif.convert("RGB"))[:band].min(axis=2)
        assert (text > 200).any() and (text == 0).mean() > 0.5  # white (anti-aliased) letters on black


def test_visualize_cli_writes_panels_gif_and_curves(trained_run: TrainRun, tmp_path: Path) -> None:
    out = tmp_path / "fig"
    proc = subprocess.run([sys.executable, "-m", "spleenseg.commands.visualize",
                           "--dataset_dir", str(trained_run.dataset_dir), "--out_dir", str(out),
                           "--ckpt", str(trained_run.model), "--split", "test",
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
    name = panels[0].name.split("_slice")[0]
    pred = nib.load(next((out / "predictions").glob(f"*{name}_seg.nii.gz"))).get_fdata()
    ref = nib.load(trained_run.dataset_dir / "labelsTs" / f"{name}.nii.gz").get_fdata()
    with Image.open(panels[0]) as png:
        model = model_label(trained_run.model, BUNDLE_DIR)
        assert png.text["Title"] == f"{name} | model {model} | Dice {dice(pred, ref):.3f}"


def test_visualize_gif_false_and_a_misspelt_option(trained_run: TrainRun, tmp_path: Path) -> None:
    """Also: without a reference label the title gives the predicted spleen volume of the written mask."""
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(trained_run.dataset_dir, unlabelled)
    meta = json.loads((unlabelled / "dataset.json").read_text())
    del meta["test_labels"]
    (unlabelled / "dataset.json").write_text(json.dumps(meta))
    base = [sys.executable, "-m", "spleenseg.commands.visualize", "--dataset_dir", str(unlabelled), "--ckpt",
            str(trained_run.model), "--split", "test", "--n_cases", "1", "--n_slices", "1", *TINY]
    typo = subprocess.run([*base, "--out_dir", str(tmp_path / "typo"), "--n_slice", "2"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stderr[-2000:]
    assert "unknown option(s) --n_slice: not an option of visualize" in typo.stderr
    assert not (tmp_path / "typo").exists()
    proc = subprocess.run([*base, "--out_dir", str(tmp_path / "fig"), "--gif", "false"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    panel = next((tmp_path / "fig").glob("*_slice*.png"))
    assert not list((tmp_path / "fig").glob("*.gif"))
    mask = nib.load(next((tmp_path / "fig" / "predictions").glob("*_seg.nii.gz")))
    ml = float((mask.get_fdata() > 0).sum()) * abs(np.linalg.det(mask.affine[:3, :3])) / 1000.0
    with Image.open(panel) as png:
        assert png.text["Title"].endswith(f" | predicted spleen {ml:.1f} mL"), png.text["Title"]


def test_visualize_picks_the_validation_cases_training_used(tiny_cohort: Path, tmp_path: Path) -> None:
    """A dataset without a ``validation`` list (as MSD Task09) gets the same split training derives."""
    from spleenseg.report.visualize import _bundle_datalist, _cases

    msd_like = tmp_path / "Task09"
    shutil.copytree(tiny_cohort, msd_like)
    meta = json.loads((msd_like / "dataset.json").read_text())
    meta["training"] += meta.pop("validation")
    (msd_like / "dataset.json").write_text(json.dumps(meta))
    training_split = _bundle_datalist(BUNDLE_DIR).load_datalist(msd_like, "validation", 0.2, 0)  # train.json's defaults
    cases = _cases(BUNDLE_DIR, msd_like, "validation", n_cases=10)
    assert [c["image"] for c in cases] == [Path(d["image"]) for d in training_split] and cases
    assert all(c["label"] is not None and c["label"].is_file() for c in cases)


def test_gif_frames_show_the_prediction_in_red_only_where_it_is(crafted, tmp_path: Path) -> None:
    """A slice through the prediction has red pixels (half CT grey, half the prediction colour), a slice
    without it has none: the blend must neither drop the mask nor colour the background."""
    from PIL import ImageSequence

    ct, pred, ref = crafted
    with Image.open(slices_gif(ct, None, pred, tmp_path / "g.gif", slices=[3, 7])) as gif:
        frames = [np.asarray(frame.convert("RGB")).astype(int) for frame in ImageSequence.Iterator(gif)]
    red = [int(((f[..., 0] - f[..., 1] > 60) & (f[..., 0] - f[..., 2] > 60)).sum()) for f in frames]
    assert red[0] > 0 and red[1] == 0, red


def test_visualize_uses_the_given_bundle(tiny_cohort: Path, tmp_path: Path) -> None:
    """Another bundle folder (a copy with its own version and split settings) is the one whose scripts pick the
    cases and whose version the title names; the repository's bundle is only the command line's default."""
    from spleenseg.report.visualize import _bundle_datalist, _cases

    other = tmp_path / "other_bundle"
    shutil.copytree(BUNDLE_DIR / "configs", other / "configs")
    shutil.copytree(BUNDLE_DIR / "scripts", other / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    for name, changes in (("metadata", {"version": "9.9.9"}), ("train", {"val_fraction": 0.5, "seed": 7})):
        path = other / "configs" / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    version = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())["version"]
    assert model_label(ckpt, other).endswith("model.pt (bundle 9.9.9)")
    assert model_label(ckpt, BUNDLE_DIR).endswith(f"model.pt (bundle {version})")

    msd_like = tmp_path / "Task09"
    shutil.copytree(tiny_cohort, msd_like)
    meta = json.loads((msd_like / "dataset.json").read_text())
    meta["training"] += meta.pop("validation")
    (msd_like / "dataset.json").write_text(json.dumps(meta))
    copy_datalist = _bundle_datalist(other)
    assert Path(copy_datalist.__file__).parent == (other / "scripts").resolve()
    expected = [Path(d["image"]) for d in copy_datalist.load_datalist(msd_like, "validation", 0.5, 7)]
    assert [c["image"] for c in _cases(other, msd_like, "validation", n_cases=100)] == expected
    assert len(expected) != len(_cases(BUNDLE_DIR, msd_like, "validation", n_cases=100))
    with pytest.raises(InputError, match="dataset folder does not exist"):  # the bundle's error, re-raised as ours
        _cases(other, tmp_path / "nowhere", "validation", n_cases=1)
