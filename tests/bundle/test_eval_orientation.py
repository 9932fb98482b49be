"""The evaluation's orientation check (bundle/scripts/orientation.py) flags a mirrored header, and only that."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from monai.transforms import LoadImaged

from testkit.bundle import bundle_scripts
from spleenseg.orientation import OrientationWarning


@pytest.fixture(scope="module")
def check_cls():
    return bundle_scripts("orientation").SpleenSideCheckd


@pytest.fixture(scope="module")
def real_case(shared_data):
    real = shared_data / "real_ct"
    data = LoadImaged(keys=["image", "reference"], ensure_channel_first=True)(
        {"image": str(real / "ts_abdomen_ct_3mm_crop.nii.gz"),
         "reference": str(real / "ts_abdomen_ct_3mm_crop_labels.nii.gz")})
    data["reference"] = (data["reference"] == 1).float()  # TotalSegmentator label 1 = spleen
    return data


def _mirrored(item):
    """Same voxels, header mirrored left/right about the volume centre (the MSD spleen_8 problem)."""
    out = item.clone()
    affine = np.asarray(item.affine, dtype=float)
    centre_x = (affine[:3, :3] @ ((np.array(item.shape[1:]) - 1) / 2.0) + affine[:3, 3])[0]
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[0, 3] = 2 * centre_x
    out.affine = mirror @ affine
    return out


def test_correct_case_is_not_flagged(check_cls, real_case):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrientationWarning)
        check_cls(keys=["reference"], image_key="image")(real_case)


def test_mirrored_reference_is_flagged_with_its_file_name(check_cls, real_case):
    mirrored = {"image": _mirrored(real_case["image"]), "reference": _mirrored(real_case["reference"])}
    with pytest.warns(OrientationWarning, match=r"ts_abdomen_ct_3mm_crop\.nii\.gz \[reference\].*RIGHT"):
        out = check_cls(keys=["reference"], image_key="image")(mirrored)
    assert out["reference"] is mirrored["reference"]  # data pass through unchanged
