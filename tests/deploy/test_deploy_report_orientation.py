"""The report's side measurement: the spleen's side is measured on the source grid, but a spleen on the right is
not judged there any more (no "header probably mirrored" warning): that judgement is the bundle's QA flags'."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from deploy_app.operators.report import spleen_side_entry
from spleenseg.orientation import OrientationWarning


def _report_inputs(phantom):
    """The phantom's label as the report sees a prediction: (slice, row, column) with the matching LPS affine."""
    mask = np.transpose(phantom.label > 0, (2, 1, 0))
    return mask, phantom.affine_lps[:, [2, 1, 0, 3]]


def test_phantom_spleen_is_reported_on_the_left(tiny_phantom):
    mask, affine = _report_inputs(tiny_phantom)
    entry = spleen_side_entry(mask, affine, "1.2.3")
    assert entry["spleen_side"] == "left"
    assert entry["spleen_left_of_midline_mm"] > 20


def test_mirrored_mask_is_measured_on_the_right_without_a_mirrored_header_warning(tiny_phantom, caplog):
    mask, affine = _report_inputs(tiny_phantom)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error", OrientationWarning)
        entry = spleen_side_entry(mask[:, :, ::-1], affine, "1.2.3")  # columns reversed: left <-> right
    assert entry["spleen_side"] == "right"
    assert entry["spleen_left_of_midline_mm"] < -20
    assert caplog.records == []


def test_empty_mask_has_no_side(tiny_phantom):
    mask, affine = _report_inputs(tiny_phantom)
    assert spleen_side_entry(np.zeros_like(mask), affine, "1.2.3") == {"spleen_side": "empty",
                                                                        "spleen_left_of_midline_mm": None}
