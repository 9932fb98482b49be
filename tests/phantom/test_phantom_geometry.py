"""Anatomy in patient coordinates: spleen on the patient's LEFT (RAS x smaller / LPS x larger than the midline),
posterior, liver on the right; spleen volume within 80-600 mL and varied between patients."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from spleenseg.phantom import Phantom, make_phantom, random_spec, write_dicom_series


def centroid_ras(ph: Phantom, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return ph.affine[:3, :3] @ ijk + ph.affine[:3, 3]


@pytest.mark.parametrize("seed", range(6))
def test_spleen_left_posterior_liver_right_in_world(seed: int) -> None:
    ph = make_phantom(random_spec(seed, shape=(48, 48, 40), tilt_deg=10.0 * (seed % 2)))
    spleen = centroid_ras(ph, ph.label > 0)
    body = centroid_ras(ph, ph.tissue_mask("skin", "fat", "muscle", "visceral_fat"))
    spine = centroid_ras(ph, ph.tissue_mask("bone_cancellous", "disc"))
    liver = centroid_ras(ph, ph.tissue_mask("liver"))
    # RAS+: x grows towards the patient's right, so the patient's left is smaller x
    assert spleen[0] < spine[0] - 40.0, (spleen, spine)
    assert spleen[0] < body[0] - 40.0
    assert liver[0] > spine[0] + 20.0, (liver, spine)
    # posterior: RAS y grows anteriorly
    assert spleen[1] < body[1], (spleen, body)
    # the spleen is visible in the image itself: splenic voxels are soft tissue, not fat or air
    assert 20 < float(np.median(ph.image[ph.label > 0])) < 200


def test_spleen_left_from_dicom_headers(tmp_path) -> None:
    """Read positions back from the DICOM headers only (IPP, IOP, PixelSpacing): LPS x of the spleen is larger
    than that of the spine (LPS +x = patient's left)."""
    ph = make_phantom(random_spec(3, shape=(48, 44, 24)))
    paths = write_dicom_series(ph, tmp_path, reverse=True, shuffle_names=True, feet_first=True)

    def lps_centroid(mask: np.ndarray) -> np.ndarray:
        points = []
        for p in paths:
            ds = pydicom.dcmread(p)
            iop = np.asarray(ds.ImageOrientationPatient, float)
            ipp = np.asarray(ds.ImagePositionPatient, float)
            dr, dc = (float(v) for v in ds.PixelSpacing)
            # find the slice of the phantom this file holds by matching pixels
            hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
            k = [kk for kk in range(ph.image.shape[2]) if np.array_equal(np.flip(ph.image[:, :, kk], 0).T, hu)]
            assert len(k) == 1
            rows, cols = np.nonzero(np.flip(mask[:, :, k[0]], 0).T)
            points += list(ipp + np.outer(cols * dc, iop[:3]) + np.outer(rows * dr, iop[3:]))
        return np.mean(points, axis=0)

    spleen, spine = lps_centroid(ph.label > 0), lps_centroid(ph.tissue_mask("bone_cancellous", "disc"))
    assert spleen[0] > spine[0] + 40.0, (spleen, spine)


def test_spleen_volume_range_and_variety() -> None:
    """Large coarse grids so the whole spleen is inside: 80-600 mL, and patients differ."""
    volumes, centres = [], []
    for seed in range(12):
        ph = make_phantom(random_spec(seed, shape=(64, 64, 64), spacing=(6.0, 6.0, 6.0)))
        assert not ph.label[:, :, [0, -1]].any(), "spleen cut by the field of view"
        assert ndimage.label(ph.label)[1] == 1, "spleen in pieces"
        assert np.array_equal(ph.label > 0, ph.tissue_mask("spleen")), "label and painted spleen differ"
        volumes.append(ph.spleen_ml)
        centres.append(ph.spec.spleen_centre)
    assert min(volumes) > 80.0 and max(volumes) < 600.0, volumes
    assert np.std(volumes) > 40.0, volumes
    assert np.std(np.asarray(centres), axis=0).min() > 3.0
