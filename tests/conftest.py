"""Shared pytest fixtures: tiny synthetic CTs (NIfTI, DICOM, MSD cohort) and the shared reference data.

Kept cheap on purpose (a 64x64x32 phantom builds in well under a second) so every area can use them freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from spleenseg.paths import SHARED_DATA
from spleenseg.phantom import Phantom, make_cohort, make_phantom, random_spec, write_dicom_series

#: The seed and grid of the standard tiny phantom; tests may rely on it being portal-venous with a spleen inside.
TINY_SEED = 7
TINY_SHAPE = (64, 64, 32)


@dataclass
class DicomSeries:
    """A CT series on disk: its folder, its files in InstanceNumber order, and the phantom it came from."""

    folder: Path
    paths: list[Path]
    phantom: Phantom


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (real public CT, conversion and SEG references); fails clearly if absent."""
    if not (SHARED_DATA / "real_ct").is_dir():
        pytest.fail(f"shared reference data not found at {SHARED_DATA} (expected real_ct/ inside); "
                    "it must sit beside the repository checkout as ../shared/data")
    return SHARED_DATA


@pytest.fixture
def tiny_phantom() -> Phantom:
    """A fresh small phantom (64x64x32, portal phase, ~5-6 mm voxels) - mutate it freely."""
    return make_phantom(random_spec(TINY_SEED, shape=TINY_SHAPE, phase="portal"))


@pytest.fixture
def tiny_dicom_series(tmp_path: Path, tiny_phantom: Phantom) -> DicomSeries:
    """The tiny phantom written as a plain axial CT series (signed pixels, IM0001.dcm...) in a temp folder."""
    folder = tmp_path / "ct"
    paths = write_dicom_series(tiny_phantom, folder)
    return DicomSeries(folder=folder, paths=list(paths), phantom=tiny_phantom)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide MSD-style NIfTI dataset: 6 labelled cases of 64^3 (5 training / 1 validation by
    dataset.json) + 1 test case. Treat it as read-only: it is shared by every test in the session."""
    root = tmp_path_factory.mktemp("tiny_cohort") / "Task09_Phantom"
    return make_cohort(root, n_cases=6, seed=0, fmt="nifti", size=(64, 64), val_fraction=0.2, n_test=1,
                       workers=1, progress=False)
