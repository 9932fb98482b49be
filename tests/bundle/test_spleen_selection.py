"""Anatomy-aware spleen candidate selection and QA flags (bundle/scripts/transforms.py) on crafted masks.

Every check is made in patient coordinates: the kept voxels are mapped through the affine, so a transform that
worked in array indices (and kept "the left of the array") fails on the LPS and oblique grids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle_util import load_bundle_module

tr = load_bundle_module("transforms")

SHAPE = (48, 40, 32)
SPACING = 4.0


def _affine(kind: str) -> np.ndarray:
    """RAS affine of the grid: RAS-ordered, LPS-ordered (x and y axes reversed) or oblique (20 degrees about S)."""
    a = np.diag([SPACING, SPACING, SPACING, 1.0])
    if kind == "lps":
        a[:3, :3] = np.diag([-SPACING, -SPACING, SPACING])
    elif kind == "oblique":
        t = np.radians(20.0)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a[:3, :3] = rot @ np.diag([SPACING] * 3)
    centre = (np.array(SHAPE) - 1) / 2.0
    a[:3, 3] = -a[:3, :3] @ centre  # the grid centre at world (0, 0, 0): the body midline is x = 0
    return a


def _world(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*SHAPE, 3)


def _ball(world: np.ndarray, centre_ras: tuple[float, float, float], radius: float) -> np.ndarray:
    return np.linalg.norm(world - np.array(centre_ras), axis=-1) <= radius


def _case(kind: str, blobs: list[tuple[tuple[float, float, float], float]], prob: float = 0.97,
          liver: tuple[tuple[float, float, float], float] | None = None) -> dict:
    affine = _affine(kind)
    world = _world(affine)
    body = np.linalg.norm(world[..., :2] / np.array([85.0, 70.0]), axis=-1) <= 1.0
    spleen = np.zeros(SHAPE, bool)
    for centre, radius in blobs:
        spleen |= _ball(world, centre, radius)
    channels = 3 if liver else 2
    p = np.zeros((channels, *SHAPE), np.float32)
    p[1][spleen] = prob
    if liver:
        p[2][_ball(world, *liver) & ~spleen] = 0.97
    p[0] = 1.0 - p[1:].sum(0)
    meta = {"affine": torch.as_tensor(affine)}
    return {"pred": MetaTensor(torch.as_tensor(p), meta=dict(meta)),
            "image": MetaTensor(torch.as_tensor(body[None].astype(np.float32)), meta=dict(meta))}


def _select(case: dict, **kw) -> tuple[np.ndarray, dict]:
    liver = 2 if case["pred"].shape[0] > 2 else None
    out = tr.SelectSpleenComponentd("pred", liver_channel=liver, qa_min_mean_prob=0.8, **kw)(case)
    return out["pred"][0].numpy() > 0.5, out["spleen_qa"]


def _kept_x(mask: np.ndarray, kind: str) -> float:
    return float(_world(_affine(kind))[mask][:, 0].mean())


LEFT, RIGHT = (-45.0, -10.0, 0.0), (45.0, 0.0, 0.0)  # RAS: -x is the patient's left


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_left_blob_kept_over_a_bigger_right_blob(kind: str) -> None:
    mask, qa = _select(_case(kind, [(LEFT, 18.0), (RIGHT, 24.0)]))
    assert mask.any() and _kept_x(mask, kind) < -30.0  # the kept voxels lie on the patient's left
    assert qa["flags"]["several_candidates"] and not qa["flags"]["candidate_right"]
    assert [c["kept"] for c in qa["components"]] == [False, True]  # largest first: the right blob was dropped


def test_liver_on_the_header_left_means_a_mirrored_header() -> None:
    """Liver on the header's left: the anatomy says mirrored; the blob opposite the liver is the spleen."""
    normal = _case("ras", [(LEFT, 14.0), (RIGHT, 16.0)], liver=((50.0, 10.0, 0.0), 32.0))
    mask, qa = _select(normal)
    assert _kept_x(mask, "ras") < -30.0 and not qa["flags"]["header_mirrored"]
    mirrored = _case("ras", [(RIGHT, 14.0), (LEFT, 16.0)], liver=((-50.0, 10.0, 0.0), 32.0))
    mask, qa = _select(mirrored)
    assert _kept_x(mask, "ras") > 30.0  # opposite the liver, although it is on the header's right
    assert qa["flags"]["header_mirrored"]


def test_spleen_candidate_on_the_liver_side_is_unsure() -> None:
    mask, qa = _select(_case("ras", [((40.0, -20.0, 0.0), 14.0)], liver=((50.0, 20.0, 0.0), 32.0)))
    assert qa["flags"]["anatomy_unsure"] or qa["flags"]["candidate_right"]
    assert not qa["flags"]["header_mirrored"]


def test_flags_quiet_on_a_normal_case() -> None:
    mask, qa = _select(_case("ras", [(LEFT, 24.0)]))  # ~58 mL, inside the body, high probability
    assert mask.any() and not any(qa["flags"].values()), qa["flags"]
    assert qa["verdict"].startswith("ok")


@pytest.mark.parametrize("case, flag", [
    (dict(blobs=[]), "no_spleen"),
    (dict(blobs=[(LEFT, 8.0)]), "implausible_volume"),  # ~2 mL
    (dict(blobs=[((-45.0, -10.0, 60.0), 24.0)]), "fov_cut"),  # cut by the top slice
    (dict(blobs=[(LEFT, 24.0)], prob=0.6), "low_confidence"),
    (dict(blobs=[(LEFT, 24.0), ((-40.0, 30.0, -30.0), 20.0)]), "several_candidates"),
])
def test_each_flag_fires_on_its_crafted_case(case: dict, flag: str) -> None:
    _, qa = _select(_case("ras", **case))
    assert qa["flags"][flag], (flag, qa["flags"])
    assert qa["verdict"] != "ok" and qa["messages"]
