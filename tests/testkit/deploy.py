"""Helpers shared by the deploy app tests (``testkit.deploy``; fixtures live in tests/deploy/conftest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from testkit.dicom_checks import dciodvfy_errors  # noqa: F401  (the tests import these from here)
from spleenseg.measure import dice  # noqa: F401
from spleenseg.phantom import Phantom, label_on_frame, make_phantom, random_spec

#: Phantoms of the end-to-end study (also in the tiny model's training set, see conftest.py).
PATIENT_A_SEED, PATIENT_B_SEED = 7, 11

#: Grid centre relative to the spleen centre (LPS mm): towards the patient's right and front, so the spleen sits
#: off-centre (left, back) and a left-right or front-back mirror in the pipeline moves the mask off the spleen.
FOV_OFFSET_MM = (-30.0, -15.0, 0.0)


def cropped_phantom(seed: int, shape=(48, 48, 24), spacing=(3.0, 3.0, 4.0)) -> Phantom:
    """A portal-phase phantom on a small grid (144 x 144 x 96 mm) that holds its whole spleen, off-centre."""
    spec = random_spec(seed, shape=(64, 64, 32), phase="portal")
    centre = tuple(float(t + c + o) for t, c, o in zip(spec.table_offset_mm, spec.spleen_centre, FOV_OFFSET_MM))
    spec = dataclasses.replace(spec, shape=tuple(shape), spacing=tuple(spacing), slice_thickness=float(spacing[2]),
                               fov_centre_mm=centre)
    return make_phantom(spec)


def label_at_frames(phantom, seg: pydicom.Dataset) -> np.ndarray:
    """Phantom label sampled at each SEG frame's pixel centres, in patient (LPS) coordinates: the frame's own
    position and the SEG's orientation and spacing, not the source images'."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    plane = pydicom.Dataset()
    plane.Rows, plane.Columns = seg.Rows, seg.Columns
    plane.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
    plane.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    out = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        plane.ImagePositionPatient = frame.PlanePositionSequence[0].ImagePositionPatient
        out.append(label_on_frame(phantom, plane) > 0)
    return np.stack(out)


def seg_frames(seg: pydicom.Dataset) -> np.ndarray:
    """Decoded (frames, rows, columns) booleans of a single-segment BINARY SEG, in frame order."""
    return np.asarray(hd.seg.Segmentation.from_dataset(seg).pixel_array, bool).reshape(
        int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))


def assert_nothing_written(out: Path) -> None:
    """OUT_DIR absent (or empty) and no staging folder left beside it."""
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
