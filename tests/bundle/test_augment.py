"""Augmentations that make real training cases look like the scans they lack (bundle/scripts/augment.py).

Each is checked in the units it promises (HU of the window, mm of the affine), on a patch laid out as training
hands it over: channel-first, RAS, image in window units 0..1, label 0/1.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from testkit.bundle import bundle_scripts

aug = bundle_scripts("augment")
A_MIN, A_MAX = -57.0, 164.0


def _window(hu: float) -> float:
    return (hu - A_MIN) / (A_MAX - A_MIN)


def _patch(z_mm: float = 2.0, depth: int = 32) -> tuple[MetaTensor, MetaTensor]:
    """Fat (the window floor) everywhere, a soft-tissue block (40 HU) with a spleen (label 1), a bone column."""
    affine = torch.diag(torch.tensor([1.5, 1.5, z_mm, 1.0], dtype=torch.float64))
    image = torch.full((1, 24, 24, depth), _window(A_MIN))
    image[0, 4:20, 4:20, :] = _window(40.0)
    image[0, 0:2, 0:2, :] = 1.0  # bone, saturated at the window's top
    label = torch.zeros_like(image)
    label[0, 8:16, 8:16, 10:20] = 1
    return MetaTensor(image, affine=affine), MetaTensor(label, affine=affine)


def test_contrast_phase_brightens_tissue_and_spleen_in_hu_and_leaves_fat_and_bone() -> None:
    image, label = _patch()
    t = aug.RandContrastPhased(keys="image", prob=1.0, a_min=A_MIN, a_max=A_MAX, tissue_hu=(30, 30),
                               spleen_hu=(50, 50), sigma_vox=1.0)
    out = t({"image": image, "label": label})["image"]
    hu = out * (A_MAX - A_MIN) + A_MIN
    assert torch.allclose(hu[0, 12, 12, 15], torch.tensor(40.0 + 30 + 50), atol=0.5)  # spleen core
    assert torch.allclose(hu[0, 5, 5, 15], torch.tensor(40.0 + 30), atol=0.5)  # tissue away from the spleen
    assert torch.allclose(hu[0, 22, 22, 15], torch.tensor(A_MIN), atol=1e-3)  # fat
    assert float(out[0, 0, 0, 0]) == 1.0 and float(out.max()) <= 1.0  # bone stays, nothing leaves the window
    assert 40.0 + 30 < float(hu[0, 16, 12, 15]) < 40.0 + 30 + 50  # the spleen's edge is smoothed, not a step
    assert torch.equal(t({"image": image, "label": label})["label"], label)


def test_contrast_phase_can_darken_the_spleen_and_prob_zero_is_identity() -> None:
    image, label = _patch()
    t = aug.RandContrastPhased(keys="image", prob=1.0, a_min=A_MIN, a_max=A_MAX, tissue_hu=(0, 0),
                               spleen_hu=(-30, -30))
    hu = t({"image": image, "label": label})["image"] * (A_MAX - A_MIN) + A_MIN
    assert torch.allclose(hu[0, 12, 12, 15], torch.tensor(10.0), atol=0.5)
    off = aug.RandContrastPhased(keys="image", prob=0.0)
    assert torch.equal(off({"image": image, "label": label})["image"], image)


def test_thin_slab_keeps_the_asked_thickness_in_mm_through_the_spleen() -> None:
    for z_mm, expected in ((2.0, 5), (4.0, 3)):  # 10 mm and 12 mm slabs, rounded to whole slices
        image, label = _patch(z_mm=z_mm)
        t = aug.RandThinSlabd(keys=["image", "label"], prob=1.0, thickness_mm=(expected * z_mm,) * 2)
        for seed in range(5):
            t.set_random_state(seed)
            d = t({"image": image, "label": label})
            kept = torch.nonzero(d["image"][0].abs().sum(dim=(0, 1)) > 0).flatten().tolist()
            assert len(kept) == expected and kept == list(range(kept[0], kept[0] + expected))
            assert d["label"][0][..., kept].sum() > 0  # the slab goes through the spleen
            outside = [z for z in range(image.shape[-1]) if z not in kept]
            assert float(d["label"][0][..., outside].abs().sum()) == 0.0
            assert torch.equal(d["image"][..., kept], image[..., kept])


def test_thick_slices_blur_along_patient_z_only() -> None:
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.zeros(1, 8, 8, 20), affine=affine)
    image[0, 4, 4, 10] = 1.0
    out = aug.RandThickSlicesd(keys="image", prob=1.0, thickness_mm=(6.0, 6.0))({"image": image})["image"]
    spread = out[0, 4, 4].numpy()
    assert np.allclose(spread[9:12], 1 / 3) and spread[:9].sum() == 0 and spread[12:].sum() == 0
    assert float(out[0, 3, 4].abs().sum()) == 0.0 and float(out[0, 4, 3].abs().sum()) == 0.0
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)


def test_zoom_overlay_magnifies_real_patches_after_the_crop(monkeypatch) -> None:
    """train_zoom.json, layered after train_realaug.json: the zoom runs on the cropped patch, only ever magnifies
    (so no padded border enters a patch), keeps the patch size and label values, and flips nothing."""
    from monai.bundle import ConfigParser
    from monai.transforms import RandZoomd

    from spleenseg.paths import BUNDLE_DIR

    configs = BUNDLE_DIR / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in
                        ("train.json", "train_real.json", "train_realaug.json", "train_zoom.json")])
    parser.update({"bundle_root": str(BUNDLE_DIR), "train#zoom#prob": 1.0})
    monkeypatch.syspath_prepend(str(BUNDLE_DIR))
    parser.get_parsed_content("initialize")
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert names.index("RandCropByPosNegLabeld") < names.index("RandZoomd") < names.index("RandAffined")
    assert not any("Flip" in n or "Rotate90" in n for n in names)
    zoom = parser.get_parsed_content("train#zoom")
    assert isinstance(zoom, RandZoomd) and zoom.rand_zoom.min_zoom[0] >= 1.0
    image, label = _patch()
    before = float(label.sum())
    for seed in range(3):
        zoom.set_random_state(seed)
        out = zoom({"image": image.clone(), "label": label.clone()})
        assert out["label"].shape == label.shape
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        assert float(out["label"].sum()) >= before
