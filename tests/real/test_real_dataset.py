"""Real labelled CT prepared for training (spleenseg.dataset.real): geometry checked in patient coordinates.

Each case must end with its spleen on the patient's left (spleen_8's mirrored header fixed), image and label
on one grid, the DTU PNG masks on the right pixels of the right slices, and the held-out case kept out of the
training and validation lists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from spleenseg.dataset.real import DTU_SLABS, build_real_dataset, mask_to_grid, realistic_phantom_specs
from spleenseg.errors import GeometryError
from spleenseg.orientation import OrientationWarning, spleen_side

CASES = ("msd_spleen_8", "ts_abdomen_crop", "dtu_slab_a", "dtu_slab_b")


@pytest.fixture(scope="module")
def real_ds(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "real"
    with pytest.warns(OrientationWarning, match=r"msd_spleen_8\.nii\.gz: .*RIGHT"):  # flagged, then fixed
        build_real_dataset(out, shared_data / "real_ct", progress=False, organs=True)
    return out


def _pairs(root: Path) -> dict[str, tuple[Path, Path]]:
    meta = json.loads((root / "dataset.json").read_text())
    entries = meta["training"] + meta["validation"]
    pairs = {Path(e["image"]).name[:-7]: (root / e["image"], root / e["label"]) for e in entries}
    pairs.update({Path(i).name[:-7]: (root / i, root / lab) for i, lab in zip(meta["test"], meta["test_labels"])})
    return pairs


def test_every_case_on_one_grid_with_spleen_on_the_left(real_ds: Path) -> None:
    pairs = _pairs(real_ds)
    assert sorted(pairs) == sorted(CASES)
    for case, (img_p, lab_p) in pairs.items():
        img, lab = nib.load(img_p), nib.load(lab_p)
        assert img.shape == lab.shape, case
        np.testing.assert_allclose(img.affine, lab.affine, atol=1e-4, err_msg=case)
        values = set(np.unique(np.asarray(lab.dataobj)).tolist())
        assert values == ({0, 1, 2, 3, 4} if case == "ts_abdomen_crop" else {0, 1}), (case, values)
        side = spleen_side(lab, img)
        assert side.side == "left" and side.offset_mm > 50, (case, side)  # RAS x of spleen < body midline


def test_spleen8_header_was_mirrored_back_and_voxels_untouched(real_ds: Path, shared_data: Path) -> None:
    meta = json.loads((real_ds / "dataset.json").read_text())
    assert meta["flipped_lr"] == ["msd_spleen_8"]
    src = nib.load(shared_data / "real_ct" / "msd_spleen8_downsampled_label.nii.gz")
    assert spleen_side(src, shared_data / "real_ct" / "msd_spleen8_downsampled.nii.gz").side == "right"
    out = nib.load(real_ds / "labelsTr" / "msd_spleen_8.nii.gz")
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(src.dataobj))
    assert np.sign(out.affine[0, 0]) == -np.sign(src.affine[0, 0])  # only the LR axis of the header changed


def test_fixed_split_holds_out_totalsegmentator_crop(real_ds: Path) -> None:
    meta = json.loads((real_ds / "dataset.json").read_text())
    listed = json.dumps(meta["training"] + meta["validation"])
    assert "ts_abdomen_crop" not in listed
    assert meta["test"] == ["./imagesTs/ts_abdomen_crop.nii.gz"]
    assert [e["label"] for e in meta["validation"]] == ["./labelsTr/dtu_slab_b.nii.gz"]
    lab = np.asarray(nib.load(real_ds / meta["test_labels"][0]).dataobj)
    assert int((lab == 1).sum()) == 9452  # TotalSegmentator spleen (README: 9,452 voxels)
    assert int((lab == 2).sum()) == 38634  # TotalSegmentator liver (README: 38,634 voxels), recoded to 2
    assert "dtu_spleen_slab/Training.dcm" in meta["excluded"]


@pytest.mark.parametrize("case", sorted(DTU_SLABS))
def test_dtu_masks_land_on_their_slice_and_on_spleen(real_ds: Path, shared_data: Path, case: str) -> None:
    """Each PNG lands on the slice at its DICOM z, pixel for pixel; inside is native spleen HU and a ring
    around it is fat (a mask shifted by 5 px or mirrored left/right puts the ring in liver/muscle, >= 0 HU)."""
    img = nib.load(real_ds / "imagesTr" / f"{case}.nii.gz")
    lab = np.asarray(nib.load(real_ds / "labelsTr" / f"{case}.nii.gz").dataobj) > 0
    hu = np.asarray(img.dataobj).astype(float)
    assert lab.shape[2] == 3
    for name in DTU_SLABS[case]:
        ds = pydicom.dcmread(shared_data / "real_ct" / "dtu_spleen_slab" / f"{name}.dcm", stop_before_pixels=True)
        k = int(np.rint((np.linalg.inv(img.affine) @ [0, 0, float(ds.ImagePositionPatient[2]), 1])[2]))
        png = np.asarray(Image.open(shared_data / "real_ct" / "dtu_spleen_slab" / f"{name}_spleen.png")) > 0
        assert lab[:, :, k].sum() == png.sum() > 1000, name
        inside, mask2d = hu[:, :, k][lab[:, :, k]], lab[:, :, k]
        ring = ndimage.binary_dilation(mask2d, iterations=4) & ~mask2d
        assert 30.0 <= inside.mean() <= 70.0, (name, inside.mean())
        assert hu[:, :, k][ring].mean() < -20.0, name


def test_mask_of_wrong_size_or_off_grid_is_refused(shared_data: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(shared_data / "real_ct" / "dtu_spleen_slab" / "Test1.dcm", stop_before_pixels=True)
    affine = np.diag([-0.686, -0.686, 3.0, 1.0])
    affine[:3, 3] = [175.7812, 175.7812, 1596.0]
    mask = np.zeros((512, 512), bool)
    mask[300:310, 400:410] = True
    idx = mask_to_grid(mask, ds, affine, (512, 512, 3), "ok")
    assert set(idx[:, 2].tolist()) == {0} and idx[:, 0].min() == 400 and idx[:, 1].min() == 300  # (col, row)
    shifted = affine.copy()
    shifted[0, 3] += 0.3  # half a pixel off: not the same grid
    with pytest.raises(GeometryError, match="voxel centres"):
        mask_to_grid(mask, ds, shifted, (512, 512, 3), "off-grid")


def test_cli_refuses_nonempty_output_and_missing_data(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "real").mkdir(parents=True)
    (out / "real" / "x.txt").write_text("keep me")
    cmd = [sys.executable, "-m", "spleenseg.commands.prepare_data", "real_cases", str(out), "--phantoms", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (out / "real" / "x.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(cmd[:4] + [str(tmp_path / "new"), "--phantoms", "0", "--real_ct", str(empty)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "msd_spleen8_downsampled.nii.gz" in r.stderr
    assert not (tmp_path / "new" / "real").exists()


def test_realistic_phantoms_span_the_real_acquisitions() -> None:
    from spleenseg.phantom import make_phantom

    specs = realistic_phantom_specs(16, seed=0)
    assert specs == realistic_phantom_specs(16, seed=0)  # deterministic
    assert {s.phase for s in specs} == {"native", "portal"}
    assert min(s.spacing[2] for s in specs) <= 2.0 and max(s.spacing[2] for s in specs) >= 5.0
    assert max(s.noise_sd for s in specs) - min(s.noise_sd for s in specs) > 10.0
    small = specs[0].replace(shape=(64, 64, 24), spacing=(5.0, 5.0, 8.0))
    ph = make_phantom(small)
    assert ph.label.any() and ph.spleen_centroid_ras()[0] < 0  # RAS x < 0: the patient's left


def test_totalsegmentator_organs_keep_their_anatomy(real_ds: Path) -> None:
    """The recoded organs sit where anatomy puts them, in RAS mm: liver right of the spleen, kidneys on both
    sides (one class), stomach left of the liver; a swapped recoding table moves these centroids."""
    img = nib.load(real_ds / "imagesTs" / "ts_abdomen_crop.nii.gz")
    lab = np.asarray(nib.load(real_ds / "labelsTs" / "ts_abdomen_crop.nii.gz").dataobj)
    x = {v: float((img.affine[:3, :3] @ np.argwhere(lab == v).mean(axis=0) + img.affine[:3, 3])[0])
         for v in (1, 2, 3, 4)}
    assert x[2] - x[1] > 80.0  # RAS +x is the patient's right: liver right, spleen left
    kidney_x = img.affine[0, 0] * np.argwhere(lab == 3)[:, 0] + img.affine[0, 3]
    assert kidney_x.min() < x[1] + 60.0 and kidney_x.max() > x[2] - 60.0  # both kidneys, one label
    assert x[4] < x[2]  # stomach left of the liver


def test_phantom_organ_labels_match_their_tissues() -> None:
    from spleenseg.phantom import ORGAN_LABELS, make_phantom

    spec = realistic_phantom_specs(4, seed=0)[1].replace(shape=(80, 80, 40), spacing=(4.5, 4.5, 6.0))
    ph = make_phantom(spec)
    organs = ph.organ_labels()
    assert np.array_equal(organs == ORGAN_LABELS["spleen"], ph.label > 0)
    assert np.array_equal(organs == ORGAN_LABELS["liver"], ph.tissue_mask("liver") & (ph.label == 0))
    centroid_x = {name: (ph.affine[:3, :3] @ np.argwhere(organs == v).mean(axis=0) + ph.affine[:3, 3])[0]
                  for name, v in ORGAN_LABELS.items() if v}
    assert centroid_x["spleen"] < 0 < centroid_x["liver"]  # RAS: spleen on the patient's left, liver right


def test_realistic_phantoms_include_enhanced_spleens_fatty_livers_and_splenomegaly() -> None:
    from spleenseg.phantom.anatomy import TISSUES, spleen_volume_ml

    specs = realistic_phantom_specs(40, seed=0)
    native, portal_hu, _ = TISSUES["spleen"]
    spleen_hu = [native + (portal_hu - native) * s.contrast_scale + s.spleen_hu_shift
                 for s in specs if s.phase == "portal"]
    assert min(spleen_hu) < 100.0 and max(spleen_hu) > 165.0  # past the old window's 164 HU
    assert min(s.liver_hu_shift for s in specs) < -30.0  # fatty livers
    largest = max(spleen_volume_ml(s.spleen_radii, s.spleen_lobes, s.spleen_notch, s.spleen_bend) for s in specs)
    assert largest > 900.0


def test_cross_generator_phantoms_lie_outside_the_training_ranges() -> None:
    from spleenseg.dataset.real import cross_generator_specs

    train, cross = realistic_phantom_specs(40, seed=0), cross_generator_specs(6, seed=0)
    assert cross == cross_generator_specs(6, seed=0)
    for field in ("contrast_scale", "noise_sd", "blur_mm", "body_half_width"):
        assert min(getattr(s, field) for s in cross) > max(getattr(s, field) for s in train), field
    assert all(abs(s.tilt_deg) >= 10.0 for s in cross) and all(s.tilt_deg == 0.0 for s in train)
    liver = [s.liver_hu_shift for s in cross]
    assert all(v < min(t.liver_hu_shift for t in train) or v > max(t.liver_hu_shift for t in train) for v in liver)
