"""Spleen candidate selection and QA flags (bundle/scripts/transforms.py), checked in patient coordinates.

Crafted scenes are defined in world (RAS mm) and sampled onto grids stored as RAS, LPS and oblique arrays, so a
selection that reads array order instead of the affine keeps the wrong blob in at least one of them. RAS: +x is
the patient's RIGHT, so the spleen (patient's left) has the smaller x.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scipy import ndimage

from testkit.bundle import CONFIGS, TINY, TrainRun, bundle_scripts, config_arg, run_bundle
from spleenseg.orientation import flip_lr_affine

FLAGS = ["no_spleen", "implausible_volume", "several_candidates", "candidate_right", "fov_cut", "low_confidence",
         "header_mirrored", "anatomy_unsure"]
QA_KEYS = ["version", "grid", "midline_x_ras_mm", "components", "spleen_volume_ml", "mean_probability", "liver",
           "fov_cut", "flags", "messages", "verdict"]
SHAPE = (80, 56, 56)  # 4 mm voxels: 320 x 224 x 224 mm, centred on world 0
STEP = 4.0
#: (centre, radii) in RAS mm. The spleen sits left and posterior; the other blobs are what a model confuses it with.
SPLEEN = ((-75.0, -25.0, 20.0), (30.0, 25.0, 45.0))  # ~141 mL
RIGHT_BLOB = ((70.0, -10.0, 0.0), (40.0, 35.0, 50.0))  # ~293 mL: bigger than the spleen, on the patient's right
LIVER = ((60.0, 25.0, 35.0), (55.0, 45.0, 50.0))  # ~518 mL, right and anterior
NEAR_LIVER = ((45.0, -50.0, -25.0), (35.0, 28.0, 45.0))  # ~185 mL, behind the liver (right kidney region)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(4)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def _affine(name: str) -> np.ndarray:
    """Grids covering the same box around world 0: RAS-, LPS- and feet-first-ordered arrays, and an oblique one."""
    half = (np.array(SHAPE) - 1) / 2 * STEP
    signs = {"ras": (1, 1, 1), "lps": (-1, -1, 1), "feet_first": (1, 1, -1), "oblique": (1, 1, 1)}[name]
    affine = np.diag([*(STEP * np.array(signs)), 1.0])
    affine[:3, 3] = -half * np.array(signs)
    return _rotation(2, 25.0) @ _rotation(0, 10.0) @ affine if name == "oblique" else affine


def _world(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _blob(world: np.ndarray, centre_radii: tuple) -> np.ndarray:
    centre, radii = (np.array(v) for v in centre_radii)
    return (((world - centre) / radii) ** 2).sum(-1) < 1.0


def _case(affine: np.ndarray, spleen_blobs: list[tuple], liver: tuple | None = None, channels: int = 2,
          prob: float = 0.95, world_affine: np.ndarray | None = None) -> tuple[dict, list[np.ndarray]]:
    """Softmax-like prediction + body image MetaTensors; blobs are drawn with ``world_affine`` (default: the
    grid's own), so passing another affine gives the same voxels under a different header."""
    world = _world(affine if world_affine is None else world_affine)
    body = ((world[..., 0] / 130.0) ** 2 + (world[..., 1] / 85.0) ** 2 < 1).astype(np.float32)
    label = np.zeros(SHAPE, np.int64)
    if liver is not None:
        label[_blob(world, liver)] = 2
    masks = [_blob(world, b) for b in spleen_blobs]
    for m in masks:
        label[m] = 1
    p = np.full((channels, *SHAPE), (1.0 - prob) / (channels - 1), np.float32)
    for c in range(channels):
        p[c][label == c] = prob
    meta = {"affine": torch.as_tensor(affine)}
    data = {"pred": MetaTensor(torch.from_numpy(p), **meta), "image": MetaTensor(torch.from_numpy(body[None]), **meta)}
    return data, masks


@pytest.fixture(scope="module")
def module():
    """bundle/scripts/transforms.py, imported as a module of the bundle's own ``scripts`` package."""
    return bundle_scripts("transforms")


@pytest.fixture(scope="module")
def configured(module):
    """Build the selection step with inference.json's own knob values (plus overrides)."""
    def make(**overrides):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser.update(overrides)
        steps = parser["postprocessing_transforms"]
        i = next(i for i, t in enumerate(steps) if "SelectSpleenComponentd" in str(t.get("_target_", "")))
        args = {k: parser.get_parsed_content(f"postprocessing_transforms#{i}#{k}")
                for k in steps[i] if not k.startswith("_")}
        return module.SelectSpleenComponentd(**args)
    return make


def _kept(out: dict) -> np.ndarray:
    return out["pred"][0].numpy() > 0.5


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(0))


def _raised(qa: dict) -> set[str]:
    assert list(qa["flags"]) == FLAGS and all(isinstance(v, bool) for v in qa["flags"].values())
    return {k for k, v in qa["flags"].items() if v}


@pytest.mark.parametrize("grid", ["ras", "lps", "oblique"])
def test_left_blob_beats_a_bigger_right_blob(module, grid):
    affine = _affine(grid)
    data, (left, right) = _case(affine, [SPLEEN, RIGHT_BLOB])
    assert right.sum() > 1.8 * left.sum()  # "largest component" would keep the right one
    out = module.SelectSpleenComponentd("pred")(data)
    kept = _kept(out)
    assert out["pred"].shape == (1, *SHAPE)
    np.testing.assert_allclose(np.asarray(out["pred"].affine), affine)
    np.testing.assert_array_equal(kept, left)
    centroid = _centroid(kept, affine)  # in patient coordinates: the patient's left is RAS x < 0 here
    assert np.linalg.norm(centroid - np.array(SPLEEN[0])) < 3.0, centroid
    qa = out["spleen_qa"]
    assert qa["midline_x_ras_mm"] == pytest.approx(0.0, abs=3.0)
    assert [c["kept"] for c in qa["components"]] == [False, True]  # largest first
    assert qa["components"][0]["left_of_midline_mm"] < -60 < 60 < qa["components"][1]["left_of_midline_mm"]
    assert _raised(qa) == {"several_candidates"}
    assert re.search(r"\(29\d mL 7\d mm right; 14\d mL 7\d mm left, kept\)", qa["messages"][0]), qa["messages"][0]


def test_largest_cc_false_keeps_every_component_and_still_reports(configured):
    data, (left, right) = _case(_affine("lps"), [SPLEEN, RIGHT_BLOB])
    out = configured(largest_cc="false")(data)
    np.testing.assert_array_equal(_kept(out), left | right)
    qa = out["spleen_qa"]
    assert all(c["kept"] for c in qa["components"])
    assert qa["spleen_volume_ml"] == pytest.approx((left.sum() + right.sum()) * STEP ** 3 / 1000, abs=0.006)
    assert not qa["flags"]["candidate_right"]  # the main candidate is still the left one


def test_keep_accessory_keeps_small_nearby_blobs_on_the_spleen_side_only(configured):
    near = ((-100.0, -45.0, -45.0), (10.0, 10.0, 10.0))  # ~4 mL below the spleen: a splenule
    far_right = ((80.0, -40.0, -30.0), (10.0, 10.0, 10.0))
    data, (spleen, splenule, right) = _case(_affine("ras"), [SPLEEN, near, far_right])
    np.testing.assert_array_equal(_kept(configured()(data)), spleen)
    np.testing.assert_array_equal(_kept(configured(keep_accessory="true")(data)), spleen | splenule)


@pytest.mark.parametrize("grid", ["ras", "oblique"])
def test_liver_side_decides_when_the_header_is_mirrored(module, grid):
    """A bigger spleen-like blob behind the liver; same voxels under a mirrored header: the liver says which
    side is the real left, so the blob opposite the liver is kept both times."""
    affine = _affine(grid)
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine  # mirror about world x = 0, the grid's centre
    select = module.SelectSpleenComponentd("pred", liver_channel=2)
    normal, (spleen, decoy) = _case(affine, [SPLEEN, NEAR_LIVER], LIVER, channels=5)
    assert decoy.sum() > spleen.sum()
    out = select(normal)
    np.testing.assert_array_equal(_kept(out), spleen)
    qa = out["spleen_qa"]
    assert qa["liver"]["left_of_midline_mm"] < -40 and qa["liver"]["volume_ml"] > 400
    assert not qa["flags"]["header_mirrored"] and not qa["flags"]["anatomy_unsure"]

    flipped, _ = _case(mirrored, [SPLEEN, NEAR_LIVER], LIVER, channels=5, world_affine=affine)
    out = select(flipped)
    np.testing.assert_array_equal(_kept(out), spleen)  # the same voxels as with the correct header
    qa = out["spleen_qa"]
    assert qa["liver"]["left_of_midline_mm"] > 40
    assert qa["flags"]["header_mirrored"] and qa["flags"]["candidate_right"] and not qa["flags"]["anatomy_unsure"]
    assert qa["messages"][0].startswith("the predicted liver lies")
    # without the liver channel only the header is left to go by: its patient-left is the decoy
    out = module.SelectSpleenComponentd("pred", liver_channel=None)(flipped)
    np.testing.assert_array_equal(_kept(out), decoy)
    assert out["spleen_qa"]["liver"] is None and not out["spleen_qa"]["flags"]["header_mirrored"]


@pytest.fixture(scope="module")
def ts_case(shared_data):
    """The real TotalSegmentator crop: one-hot 'probabilities' (0 bg, 1 spleen, 2 liver, 3 kidneys, 4 stomach)
    from its label map, and the body from the CT itself (HU above inference.json's a_min)."""
    real = shared_data / "real_ct"
    labels = nib.load(real / "ts_abdomen_ct_3mm_crop_labels.nii.gz")
    ct = nib.load(real / "ts_abdomen_ct_3mm_crop.nii.gz")
    lab = np.asarray(labels.dataobj).astype(np.int64)
    classes = np.zeros_like(lab)
    for value, channel in ((1, 1), (5, 2), (2, 3), (3, 3), (6, 4)):
        classes[lab == value] = channel
    body = (np.asarray(ct.dataobj) > -57).astype(np.float32)
    return classes, body, labels.affine


def _one_hot(classes: np.ndarray, body: np.ndarray, affine: np.ndarray) -> dict:
    p = np.stack([(classes == c) for c in range(5)]).astype(np.float32)
    meta = {"affine": torch.as_tensor(affine)}
    return {"pred": MetaTensor(torch.from_numpy(p), **meta), "image": MetaTensor(torch.from_numpy(body[None]), **meta)}


def _wrong_spleen(classes: np.ndarray) -> np.ndarray:
    """The spleen channel replaced by a ball deep inside the liver (the spleen itself becomes background)."""
    out = classes.copy()
    out[out == 1] = 0
    liver = classes == 2
    depth = ndimage.distance_transform_edt(liver)
    centre = np.array(np.unravel_index(np.argmax(depth), liver.shape))
    ball = ((np.indices(liver.shape) - centre[:, None, None, None]) ** 2).sum(0) <= 6 ** 2
    out[ball & liver] = 1
    return out


@pytest.mark.parametrize("spleen", ["true", "wrong"])
def test_real_case_mirrored_header_follows_the_liver(module, ts_case, spleen):
    classes, body, affine = ts_case
    classes = classes if spleen == "true" else _wrong_spleen(classes)
    spleen_voxels = classes == 1
    mirrored = flip_lr_affine(affine, classes.shape)  # header mirrored, voxels unchanged
    select = module.SelectSpleenComponentd("pred", liver_channel=2)
    results = {}
    for header, aff in (("original", affine), ("mirrored", mirrored)):
        out = select(_one_hot(classes, body, aff))
        kept = _kept(out)
        assert kept.sum() > 0.9 * spleen_voxels.sum() and not (kept & ~spleen_voxels).any(), header
        results[header] = out["spleen_qa"]
    original, flipped = results["original"], results["mirrored"]
    assert original["liver"]["left_of_midline_mm"] < -30 < 30 < flipped["liver"]["left_of_midline_mm"]
    assert not original["flags"]["header_mirrored"] and flipped["flags"]["header_mirrored"]
    if spleen == "true":  # the real spleen lies on the patient's left, opposite the liver
        assert not original["flags"]["candidate_right"] and not original["flags"]["anatomy_unsure"]
        assert flipped["flags"]["candidate_right"] and not flipped["flags"]["anatomy_unsure"]
    else:  # the only candidate lies in the liver: the model is unsure, whatever the header says
        assert original["flags"]["anatomy_unsure"] and original["flags"]["candidate_right"]
        assert flipped["flags"]["anatomy_unsure"] and not flipped["flags"]["candidate_right"]
        assert original["verdict"].startswith(
            "check: the spleen candidate lies on the same side as the predicted liver")


FLAG_CASES = {
    # name: (grid, spleen blobs, liver, channels, spleen probability, flags that must be raised)
    "normal": ("ras", [SPLEEN], None, 2, 0.95, set()),
    "normal_lps_with_liver": ("lps", [SPLEEN], LIVER, 5, 0.95, set()),
    "empty": ("ras", [], None, 2, 0.95, {"no_spleen"}),
    "truncated_at_the_top": ("feet_first", [((-75.0, -25.0, 100.0), (30.0, 25.0, 45.0))], None, 2, 0.95,
                             {"fov_cut"}),
    "two_large_blobs": ("ras", [SPLEEN, ((-40.0, 50.0, 20.0), (25.0, 20.0, 30.0))], None, 2, 0.95,
                        {"several_candidates"}),
    "tiny": ("ras", [((-75.0, -25.0, 20.0), (12.0, 12.0, 15.0))], None, 2, 0.95, {"implausible_volume"}),
    "huge": ("ras", [((-60.0, -10.0, 0.0), (72.0, 56.0, 100.0))], None, 2, 0.95, {"implausible_volume"}),
    "low_probability": ("ras", [SPLEEN], None, 2, 0.6, {"low_confidence"}),
    "right_only": ("lps", [((75.0, -25.0, 20.0), (30.0, 25.0, 45.0))], None, 2, 0.95, {"candidate_right"}),
    "beside_the_liver": ("ras", [NEAR_LIVER], LIVER, 5, 0.95, {"candidate_right", "anatomy_unsure"}),
}


@pytest.mark.parametrize("name", list(FLAG_CASES))
def test_each_flag_fires_on_its_case_and_stays_quiet_otherwise(configured, name):
    grid, blobs, liver, channels, prob, expected = FLAG_CASES[name]
    data, masks = _case(_affine(grid), blobs, liver, channels, prob)
    out = configured(**({"network_def#out_channels": 5} if channels == 5 else {}))(data)
    qa = json.loads(json.dumps(out["spleen_qa"]))  # plain JSON types only
    assert list(qa) == QA_KEYS and qa["version"] == 1 and qa["grid"] == "model"
    assert _raised(qa) == expected
    assert len(qa["messages"]) == len(expected)
    if not expected:
        assert qa["verdict"] == "ok"
    elif "no_spleen" in expected:
        assert qa["verdict"] == "no spleen found" and qa["components"] == [] and qa["mean_probability"] is None
        assert qa["spleen_volume_ml"] == 0.0
    else:
        assert qa["verdict"] == f"check: {qa['messages'][0]}"
    if masks:
        assert qa["mean_probability"] == pytest.approx(prob, abs=1e-4)
        assert (qa["liver"] is None) == (liver is None)
    if name == "truncated_at_the_top":
        # feet-first array: the superior face is index 0 of the last axis, so the name must come from the affine
        assert qa["fov_cut"] == ["superior"] and _kept(out)[:, :, 0].any() and not _kept(out)[:, :, -1].any()
    if name in ("tiny", "huge"):
        volume = masks[0].sum() * STEP ** 3 / 1000
        assert qa["spleen_volume_ml"] == pytest.approx(volume, abs=0.006) and not 40 <= volume <= 1500


def test_qa_file_name_matches_the_mask_name(module):
    assert module.qa_file_name("/x/ct_1.nii.gz") == "ct_1_qa.json"
    assert module.qa_file_name("ct.2.nii") == "ct.2_qa.json"


def test_bundle_run_writes_the_qa_beside_an_unchanged_mask(trained_run: TrainRun, tmp_path: Path) -> None:
    """``monai.bundle run`` on a phantom: ``<name>_qa.json`` is published with the mask, every raised flag is
    logged, and the mask equals the one the previous largest-component step writes on this normal case."""
    meta = json.loads((trained_run.dataset_dir / "dataset.json").read_text())
    image = (trained_run.dataset_dir / meta["test"][0]).resolve()
    stem = image.name[: -len(".nii.gz")]
    before = tmp_path / "before.json"  # inference.json 0.1.2's two steps in place of the selection
    before.write_text(json.dumps({"postprocessing_transforms#1": {
        "_target_": "Lambdad", "keys": "pred",
        "func": "$lambda x: (lambda p: p.masked_fill((p > 0.5) & ~monai.transforms.utils."
                "get_largest_connected_component_mask(p[0] > 0.5)[None], 0.0))(x[1:2])"}}))
    outputs = {}
    for name, configs in (("new", config_arg("inference")),
                          ("before", f"['{CONFIGS / 'inference.json'}','{before}']")):
        out = tmp_path / name
        proc = run_bundle(["run", "--config_file", configs, "--ckpt_path", str(trained_run.model),
                           "--output_dir", str(out), "--input_file", str(image), *TINY])
        outputs[name] = (out, proc.stdout + proc.stderr)
    out, log = outputs["new"]
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}_qa.json", f"{stem}_seg.nii.gz"]
    assert sorted(p.name for p in outputs["before"][0].iterdir()) == [f"{stem}_seg.nii.gz"]
    new_mask = nib.load(out / f"{stem}_seg.nii.gz")
    old_mask = np.asarray(nib.load(outputs["before"][0] / f"{stem}_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(new_mask.dataobj), old_mask)

    qa = json.loads((out / f"{stem}_qa.json").read_text())
    assert list(qa) == QA_KEYS and list(qa["flags"]) == FLAGS
    assert not qa["flags"]["no_spleen"] and not qa["flags"]["candidate_right"]
    mask_ml = (old_mask > 0).sum() * abs(np.linalg.det(new_mask.affine[:3, :3])) / 1000
    assert qa["spleen_volume_ml"] == pytest.approx(mask_ml, rel=0.25)  # model grid vs the input's grid
    kept = [c for c in qa["components"] if c["kept"]]
    assert len(kept) == 1 and kept[0]["left_of_midline_mm"] > 30
    for message in qa["messages"]:
        assert f"WARNING - {image.name}: {message}" in log
    assert qa["verdict"] == ("ok" if not qa["messages"] else f"check: {qa['messages'][0]}")
