"""The app runs the bundle's sliding window without its tqdm bar: the bundle turns it on (``sw_progress``) for
people running ``monai.bundle`` by hand, while the app reports through its log and ``spleen_report.json``."""

from __future__ import annotations

import json
import re

import deploy_app

#: A tqdm bar as it reaches a file or pipe, e.g. ``100%|##########| 1/1 [00:00<00:00,  2.51it/s]``.
TQDM_BAR = re.compile(r"\d+%\|[^|\n]*\| \d+/\d+ \[")


def test_the_app_switches_off_the_bundle_progress_bar(tmp_path, small_series, untrained_bundle, capfd):
    config = json.loads((untrained_bundle / "configs" / "inference.json").read_text())
    assert config["sw_progress"] is True  # the bundle the app gets has the bar on
    result = deploy_app.run(tmp_path / "in", tmp_path / "out", untrained_bundle)
    assert len(result.seg_files) == 1
    captured = capfd.readouterr()
    assert not TQDM_BAR.search(captured.err + captured.out), captured.err[-2000:]
