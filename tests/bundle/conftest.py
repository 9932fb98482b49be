"""Fixtures for the bundle tests: run ``python -m monai.bundle`` for real, on the shared tiny phantom cohort.

Two trainings are shared by the whole session: a 2-epoch run (outputs, resume) and a ~20-epoch run whose model
is good enough to find the phantom spleen (evaluation, inference geometry, left/right, export).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.bundle import TrainRun, train


@pytest.fixture(scope="session")
def short_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    """Two epochs with validation after each: enough to check every training output (read-only)."""
    return train(tiny_cohort, tmp_path_factory.mktemp("short_run"), 2, "--val_interval", "1")


@pytest.fixture(scope="session")
def trained_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    """A model trained long enough to find the phantom spleen (shared by evaluation/inference/export tests)."""
    return train(tiny_cohort, tmp_path_factory.mktemp("trained_run"), 24, "--val_interval", "4",
                 "--learning_rate", "0.002", "--lr_min_factor", "0.1", "--loss#_target_", "DiceCELoss",
                 "--num_samples", "4")
