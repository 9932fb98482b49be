"""The inference post-processing shortcuts give the masks of the plain MONAI steps, in patient coordinates.

* ``BoxInvertd`` (``bundle/scripts/transforms.py``, named in ``inference.json``, so the app and ``monai.bundle
  run`` both run it) resamples only around the foreground; after the threshold its mask must equal ``Invertd``
  + ``AsDiscreted`` voxel for voxel, on CT stored in orientations that make the bundle's ``Orientationd`` flip
  and permute axes and on an oblique (rotated) grid, and it must fall back to ``Invertd`` where the shortcut
  would not be exact; with ``save_prob`` (the whole probability map is saved) it is the plain ``Invertd``.
* The spleen selection step of ``bundle/configs/inference.json`` runs on the model grid: islands go, the
  largest component stays, and ``--largest_cc false`` keeps both.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from deploy_app.bundle_info import use_bundle_scripts
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, Invertd
from spleenseg.coords import LPS_TO_RAS
from spleenseg.paths import BUNDLE_DIR
from spleenseg.phantom import make_phantom, random_spec, stack_geometry

RADIUS_MM = 18.0
#: Model grid of these tests: coarser than the bundle's 1.5 mm so that source voxels are finer than model voxels
#: (as in clinical CT) by a wide margin, and small enough to keep the tests fast.
MODEL_PIXDIM = [4.0, 4.0, 5.0]


def bundle_parser(**overrides) -> ConfigParser:
    use_bundle_scripts(BUNDLE_DIR)  # the configs name the bundle's own ``scripts`` package
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_DIR / "configs" / "inference.json"))
    parser.update(overrides)
    return parser


def box_invertd() -> type:
    use_bundle_scripts(BUNDLE_DIR)
    import scripts.transforms

    return scripts.transforms.BoxInvertd


def source_image(orientation: str, feet_first: bool) -> MetaTensor:
    """A phantom CT as a DICOM stack would hold it: (column, row, slice) voxels with their RAS affine."""
    tilt = 12.0 if orientation == "oblique" else 0.0
    ph = make_phantom(random_spec(5, shape=(128, 112, 40), spacing=(1.5, 1.5, 2.5), phase="portal", tilt_deg=tilt))
    volume, affine_lps = stack_geometry(ph, orientation, feet_first=feet_first)
    affine_ras = LPS_TO_RAS @ affine_lps
    meta = {"original_affine": affine_ras, "original_channel_dim": "no_channel", "space": "RAS"}
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32),
                      affine=torch.as_tensor(affine_ras), meta=meta)


def ball_probability(image: MetaTensor, centre_ras: np.ndarray) -> torch.Tensor:
    """A (1, x, y, z) probability on the model grid: 0.9 in a ball of RADIUS_MM around ``centre_ras``, 0.2 out.

    Hard-edged on purpose: the 0.5 crossing then lies 4/7 of a model voxel outside the ball's outer voxels, and with
    the coarse model grid of these tests that is more than one source voxel, so a box without its one-voxel
    margin loses voxels."""
    shape = image.shape[1:]
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(3, -1)
    world = np.asarray(image.affine, float)[:3, :3] @ index + np.asarray(image.affine, float)[:3, 3:4]
    distance = np.linalg.norm(world - centre_ras[:, None], axis=0).reshape(shape)
    return torch.as_tensor(np.where(distance <= RADIUS_MM, 0.9, 0.2), dtype=torch.float32)[None]


def model_grid_point(image: MetaTensor, fraction: tuple[float, float, float]) -> np.ndarray:
    """RAS point at ``fraction`` of the model grid's extent along each axis."""
    index = np.array([f * (n - 1) for f, n in zip(fraction, image.shape[1:])] + [1.0])
    return (np.asarray(image.affine, float) @ index)[:3]


def invert_both(parser: ConfigParser, orientation: str, feet_first: bool, fraction) -> tuple:
    """(mask from Invertd + threshold, mask from BoxInvertd + threshold, source affine, ball centre)."""
    pre = parser.get_parsed_content("preprocessing")
    pre.transforms = tuple(t for t in pre.transforms if "LoadImage" not in type(t).__name__)
    image = pre({"image": source_image(orientation, feet_first)})["image"]
    centre = model_grid_point(image, fraction)
    prob = MetaTensor(ball_probability(image, centre), affine=image.affine)

    chain = Compose([Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
                     AsDiscreted("pred", threshold=0.5)])
    fast = Compose([box_invertd()("pred", transform=pre, orig_keys="image", nearest_interp=False, threshold=0.5),
                    AsDiscreted("pred", threshold=0.5)])
    plain = np.asarray(chain({"pred": prob.clone(), "image": image})["pred"][0]) > 0
    swapped = np.asarray(fast({"pred": prob.clone(), "image": image})["pred"][0]) > 0
    return plain, swapped, np.asarray(image.meta["original_affine"], float), centre


@pytest.mark.parametrize("orientation,feet_first", [("axial", True), ("coronal", False), ("oblique", False)])
def test_box_invert_equals_invertd_in_patient_space(orientation, feet_first, caplog):
    caplog.set_level(logging.INFO, logger="scripts.transforms")
    parser = bundle_parser(pixdim=MODEL_PIXDIM)
    plain, swapped, affine, centre = invert_both(parser, orientation, feet_first, (0.5, 0.45, 0.5))
    assert "not exact" not in caplog.text  # the shortcut ran
    assert plain.sum() > 500
    assert np.array_equal(plain, swapped), f"{int((plain != swapped).sum())} voxels differ"
    # the ball sits where it was put, in patient coordinates (the source grid is not the model grid)
    voxels = np.argwhere(swapped).T
    world = affine[:3, :3] @ voxels + affine[:3, 3:4]
    assert np.linalg.norm(world.mean(axis=1) - centre) < 2.0


def test_box_invert_falls_back_at_the_grid_edge(caplog):
    caplog.set_level(logging.INFO, logger="scripts.transforms")
    plain, swapped, _, _ = invert_both(bundle_parser(pixdim=MODEL_PIXDIM), "axial", False, (0.5, 0.5, 0.0))
    assert "not exact" in caplog.text  # a ball cut by the grid's edge takes the full Invertd
    assert plain.sum() > 0 and np.array_equal(plain, swapped)


@pytest.mark.parametrize("save_prob", [False, True])
def test_inference_json_inverts_with_the_box_unless_the_probability_is_saved(save_prob):
    post = bundle_parser(save_prob=save_prob).get_parsed_content("postprocessing")
    names = [type(t).__name__ for t in post.transforms]
    invert = post.transforms[names.index("BoxInvertd")]
    assert names.index("BoxInvertd") + (2 if save_prob else 1) == names.index("AsDiscreted")  # a threshold follows
    assert invert.threshold == (None if save_prob else 0.5)


def test_box_invertd_without_a_threshold_is_invertd():
    pre = bundle_parser(pixdim=MODEL_PIXDIM).get_parsed_content("preprocessing")
    pre.transforms = tuple(t for t in pre.transforms if "LoadImage" not in type(t).__name__)
    image = pre({"image": source_image("axial", False)})["image"]
    prob = MetaTensor(ball_probability(image, model_grid_point(image, (0.5, 0.45, 0.5))), affine=image.affine)
    plain = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)
    box = box_invertd()("pred", transform=pre, orig_keys="image", nearest_interp=False, threshold=None)
    expected = plain({"pred": prob.clone(), "image": image})["pred"]
    got = box({"pred": prob.clone(), "image": image})["pred"]
    assert torch.equal(torch.as_tensor(expected), torch.as_tensor(got))  # the probability kept everywhere
    outside_ball = int(((got > 0.1) & (got < 0.5)).sum())  # 0.2 around the ball, not zeroed outside a box
    assert outside_ball > 2 * int((got >= 0.5).sum()) > 0


@pytest.mark.parametrize("largest_cc", [True, False])
def test_largest_component_on_the_model_grid(largest_cc):
    use_bundle_scripts(BUNDLE_DIR)  # the selection lives in the bundle's ``scripts`` package
    post = bundle_parser(largest_cc=largest_cc).get_parsed_content("postprocessing")
    keep = [t for t in post.transforms if type(t).__name__ == "SelectSpleenComponentd"]
    assert len(keep) == 1  # the step runs either way: with largest_cc false it keeps every component
    logits = torch.full((2, 40, 40, 40), 0.0)
    logits[1] = -4.0
    logits[1, 5:20, 5:20, 5:20] = 4.0  # the large component, on the patient's left (RAS: low x)
    logits[1, 30:34, 30:34, 30:34] = 4.0  # an island
    pred = MetaTensor(torch.softmax(logits, 0), affine=torch.eye(4))
    pred = Compose(keep)({"pred": pred})["pred"]
    assert pred.shape[0] == 1  # the spleen probability only
    assert bool((pred[0, 5:20, 5:20, 5:20] > 0.5).all())
    assert bool((pred[0, 30:34, 30:34, 30:34] > 0.5).any()) is not largest_cc
