"""The spleen-on-the-left check on real CT: a mirrored header is flagged, the normal case is not, --flip-lr fixes."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spleenseg.dataset import build_dataset
from spleenseg.orientation import OrientationWarning, check_spleen_left, flip_lr_header, spleen_side

REAL = Path("real_ct")


def _ts_case(shared_data: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """TotalSegmentator crop (spleen = label 1) - a correctly oriented real CT."""
    image = nib.load(shared_data / REAL / "ts_abdomen_ct_3mm_crop.nii.gz")
    labels = nib.load(shared_data / REAL / "ts_abdomen_ct_3mm_crop_labels.nii.gz")
    return image, labels


def test_real_case_not_flagged_and_its_mirror_is(shared_data: Path) -> None:
    image, labels = _ts_case(shared_data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrientationWarning)
        result = check_spleen_left(labels, image, name="ts_crop")
    assert result.side == "left" and result.offset_mm > 50
    mirrored_img = flip_lr_header(image)
    mirrored_lab = flip_lr_header(labels, image.shape, image.affine)
    assert np.array_equal(np.asarray(mirrored_lab.dataobj), np.asarray(labels.dataobj))  # only the header moved
    with pytest.warns(OrientationWarning, match=r"ts_crop_mirrored: .*RIGHT.*mirrored left/right.*--flip-lr"):
        flagged = check_spleen_left(mirrored_lab, mirrored_img, name="ts_crop_mirrored")
    assert flagged.side == "right" and flagged.offset_mm == pytest.approx(-result.offset_mm, abs=1.0)


def test_msd_spleen8_mirrored_header_is_flagged(shared_data: Path) -> None:
    label = shared_data / REAL / "msd_spleen8_downsampled_label.nii.gz"
    image = shared_data / REAL / "msd_spleen8_downsampled.nii.gz"
    with pytest.warns(OrientationWarning, match="msd_spleen8_downsampled_label.nii.gz"):
        result = check_spleen_left(label, image)
    assert result.side == "right"
    fixed = spleen_side(flip_lr_header(nib.load(label), nib.load(image).shape, nib.load(image).affine),
                        flip_lr_header(nib.load(image)))
    assert fixed.side == "left"


def test_dataset_flip_lr_fixes_the_header(shared_data: Path, tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (images / "spleen_8.nii.gz").symlink_to(shared_data / REAL / "msd_spleen8_downsampled.nii.gz")
    (labels / "spleen_8.nii.gz").symlink_to(shared_data / REAL / "msd_spleen8_downsampled_label.nii.gz")
    with pytest.warns(OrientationWarning):
        meta = build_dataset(images, labels, tmp_path / "as_is", val_fraction=0.0, progress=False)
    assert meta["flipped_lr"] == []
    with pytest.warns(OrientationWarning):
        meta = build_dataset(images, labels, tmp_path / "fixed", val_fraction=0.0, flip_lr=True, progress=False)
    assert meta["flipped_lr"] == ["spleen_8"]
    img = nib.load(tmp_path / "fixed" / "imagesTr" / "spleen_8.nii.gz")
    lab = nib.load(tmp_path / "fixed" / "labelsTr" / "spleen_8.nii.gz")
    assert np.allclose(img.affine, lab.affine) and spleen_side(lab, img).side == "left"
    assert np.array_equal(np.asarray(img.dataobj), np.asarray(nib.load(images / "spleen_8.nii.gz").dataobj))


def test_check_orientation_cli(shared_data: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "spleenseg.commands.prepare_data", "check_orientation",
                             str(shared_data / REAL / "msd_spleen8_downsampled_label.nii.gz"),
                             str(shared_data / REAL / "msd_spleen8_downsampled.nii.gz")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "patient's right" in result.stdout
    assert result.stderr.count("mirrored left/right") == 1, result.stderr  # logged once, not also as a warning
