"""The app's handling of the bundle's QA dict (``deploy_app.qa``): unwrapping what the SDK emits, the source-grid
"no spleen" rule, and the log lines (one WARNING per raised flag naming the series, then the verdict)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from deploy_app.qa import log_qa, qa_summary, raised_flags, settle_no_spleen, unwrap_qa

FLAGS = ("no_spleen", "implausible_volume", "several_candidates", "candidate_right", "fov_cut", "low_confidence",
         "header_mirrored", "anatomy_unsure")


def _qa(**raised: bool) -> dict:
    flags = {name: bool(raised.get(name)) for name in FLAGS}
    messages = [f"{name} message" for name in FLAGS if flags[name]]
    return {"version": 1, "flags": flags, "messages": messages,
            "verdict": f"check: {messages[0]}" if messages else "ok"}


def test_the_sdk_series_output_is_unwrapped_to_the_dict():
    qa = _qa(fov_cut=True)
    emitted = np.asarray(qa)  # what MonaiBundleInferenceOperator sends for a "series" output
    assert emitted.shape == () and unwrap_qa(emitted) is qa
    with pytest.raises(RuntimeError, match="spleen_qa output is not a QA dict"):
        unwrap_qa(np.asarray([1.0, 2.0]))


def test_an_empty_source_grid_mask_means_no_spleen_without_changing_the_bundle_dict():
    qa = _qa()
    settled = settle_no_spleen(qa, mask_has_spleen=False)
    assert settled["flags"]["no_spleen"] and settled["verdict"] == "no spleen found"
    assert settled["messages"][0] == "the mask is empty on the source grid"
    assert qa["flags"]["no_spleen"] is False and qa["verdict"] == "ok"
    assert settle_no_spleen(qa, mask_has_spleen=True) is qa


def test_each_raised_flag_is_a_warning_naming_the_series_and_the_verdict_is_logged(caplog):
    qa = _qa(header_mirrored=True, fov_cut=True)
    with caplog.at_level(logging.INFO, logger="deploy_app.qa"):
        log_qa("1.2.3", qa)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines[:2] == [(logging.WARNING, "series 1.2.3: QA flag fov_cut raised"),
                         (logging.WARNING, "series 1.2.3: QA flag header_mirrored raised")]
    assert lines[2] == (logging.WARNING, "series 1.2.3: QA verdict: check: fov_cut message (header_mirrored message)")
    assert raised_flags(qa) == ["fov_cut", "header_mirrored"]
    assert qa_summary(qa) == {"verdict": qa["verdict"], "flags": ["fov_cut", "header_mirrored"]}


def test_a_clean_verdict_is_logged_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="deploy_app.qa"):
        log_qa("1.2.3", _qa())
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, "series 1.2.3: QA verdict: ok")]
