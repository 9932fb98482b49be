"""The phantom looks like an abdominal CT where it matters for a spleen model: Hounsfield units per phase,
neighbouring organs on the right sides, the stomach's air-fluid level, noise, and body proportions close to the
real CT in shared/data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from spleenseg.phantom import Phantom, make_phantom, random_spec

SHAPE = (72, 72, 56)


@pytest.fixture(scope="module")
def pair() -> dict[str, Phantom]:
    return {phase: make_phantom(random_spec(4, shape=SHAPE, phase=phase)) for phase in ("native", "portal")}


def median_hu(ph: Phantom, *tissues: str) -> float:
    # erode so the value is the organ's, not its partial-volume edge
    mask = ndimage.binary_erosion(ph.tissue_mask(*tissues), iterations=1)
    return float(np.median(ph.image[mask]))


def test_hounsfield_units_by_phase(pair: dict[str, Phantom]) -> None:
    native, portal = pair["native"], pair["portal"]
    assert 30 < median_hu(native, "spleen") < 55 and 90 < median_hu(portal, "spleen") < 170
    assert 40 < median_hu(native, "liver") < 65 and 80 < median_hu(portal, "liver") < 150
    assert median_hu(portal, "aorta") > 130 > median_hu(native, "aorta")
    assert -125 < median_hu(native, "fat", "visceral_fat") < -80
    assert 35 < median_hu(native, "muscle") < 70
    assert median_hu(native, "bone_cancellous") > 150 and native.image.max() > 400
    outside = native.tissue_mask("air")
    assert float(np.median(native.image[outside])) < -950
    # CT-like noise: soft tissue is not flat, but not absurdly noisy either
    sd = float(np.std(native.image[ndimage.binary_erosion(native.tissue_mask("liver"), iterations=2)]))
    assert 3 < sd < 45


def test_neighbours_and_air_fluid_level(pair: dict[str, Phantom]) -> None:
    ph = pair["portal"]

    def centroid(mask: np.ndarray) -> np.ndarray:
        return ph.affine[:3, :3] @ np.argwhere(mask).mean(0) + ph.affine[:3, 3]

    spine = centroid(ph.tissue_mask("bone_cancellous"))
    kidneys = np.argwhere(ph.tissue_mask("kidney_cortex"))
    x = (ph.affine[:3, :3] @ kidneys.T + ph.affine[:3, 3:4])[0]
    assert (x > spine[0] + 20).any() and (x < spine[0] - 20).any()  # one kidney each side
    stomach = centroid(ph.tissue_mask("stomach_wall"))
    spleen = centroid(ph.label > 0)
    assert stomach[0] < spine[0] and stomach[1] > spleen[1]  # stomach on the left, in front of the spleen
    # supine patient: gastric gas floats anteriorly (larger RAS y) above a flat level of fluid
    gas, fluid = ph.tissue_mask("gastric_gas"), ph.tissue_mask("gastric_fluid")
    assert gas.sum() > 0 and fluid.sum() > 0
    y_gas = (ph.affine[:3, :3] @ np.argwhere(gas).T + ph.affine[:3, 3:4])[1]
    y_fluid = (ph.affine[:3, :3] @ np.argwhere(fluid).T + ph.affine[:3, 3:4])[1]
    assert y_gas.min() > y_fluid.max() - 1.5 * ph.spacing[1]
    assert ph.tissue_mask("gas").sum() > 0  # bowel gas
    assert ph.tissue_mask("rib").sum() > 0 and ph.tissue_mask("ivc").sum() > 0


def test_body_proportions_like_real_ct(shared_data) -> None:
    """Share of fat and soft tissue inside the body is in the range of the real abdominal CT (TotalSegmentator
    example: fat 0.46, soft 0.48); phantoms vary around it."""

    def proportions(a: np.ndarray) -> tuple[float, float]:
        body = ndimage.binary_fill_holes(ndimage.binary_opening(a > -500))
        b = a[body]
        return float(((b > -200) & (b < -30)).mean()), float(((b >= -30) & (b < 150)).mean())

    real = np.asarray(nib.load(shared_data / "real_ct" / "ts_abdomen_ct_3mm.nii.gz").dataobj)
    real_fat, real_soft = proportions(real)
    for seed in (0, 1, 2):
        fat, soft = proportions(make_phantom(random_spec(seed, shape=(64, 64, 48))).image)
        assert abs(fat - real_fat) < 0.2 and abs(soft - real_soft) < 0.2, (fat, soft, real_fat, real_soft)
