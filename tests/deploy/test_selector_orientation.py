"""The selector names a series' plane from its ImageOrientationPatient (the rule "axial CT" depends on it):
highdicom's closest patient direction to the slice normal, for the planes and for tilted or oblique slices."""

from __future__ import annotations

import pytest

from deploy_app.operators.selector import orientation_name


@pytest.mark.parametrize("iop,plane", [
    ([1, 0, 0, 0, 1, 0], "Axial"),
    ([-1, 0, 0, 0, -1, 0], "Axial"),  # rotated in-plane by 180 degrees: still axial
    ([1, 0, 0, 0, 0, -1], "Coronal"),
    ([0, 1, 0, 0, 0, -1], "Sagittal"),
    ([1, 0, 0, 0, 0.966, -0.259], "Axial"),  # 15 degrees gantry tilt
    ([1, 0, 0, 0, 0.5, -0.866], "Coronal"),  # 60 degrees from axial: closer to coronal
    ([" 1", "0", "0", "0", "1", "0"], "Axial"),  # DS strings, as pydicom may hand them over
])
def test_orientation_name_in_patient_coordinates(iop, plane):
    assert orientation_name(iop) == plane
