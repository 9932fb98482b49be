"""The deploy report's orientation sanity check: spleen on the patient's left passes, a mirrored mask is flagged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from deploy_app.operators.report import spleen_side_entry
from spleenseg.orientation import OrientationWarning


def _report_inputs(phantom):
    """The phantom's label as the report sees a prediction: (slice, row, column) with the matching LPS affine."""
    mask = np.transpose(phantom.label > 0, (2, 1, 0))
    return mask, phantom.affine_lps[:, [2, 1, 0, 3]]


def test_phantom_spleen_is_reported_on_the_left(tiny_phantom):
    mask, affine = _report_inputs(tiny_phantom)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrientationWarning)
        entry = spleen_side_entry(mask, affine, "1.2.3")
    assert entry["spleen_side"] == "left"
    assert entry["spleen_left_of_midline_mm"] > 20


def test_mirrored_mask_is_flagged_with_the_series(tiny_phantom):
    mask, affine = _report_inputs(tiny_phantom)
    with pytest.warns(OrientationWarning, match=r"series 1\.2\.3.*RIGHT"):
        entry = spleen_side_entry(mask[:, :, ::-1], affine, "1.2.3")  # columns reversed: left <-> right
    assert entry["spleen_side"] == "right"
