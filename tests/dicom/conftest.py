"""Fixtures for the DICOM tests (helpers live in ``testkit.dicom``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from testkit.dicom import DCM2NIIX


@pytest.fixture(scope="session")
def dcm2niix() -> Path:
    """Path to the real dcm2niix binary (fails, never skips: it is part of requirements.txt)."""
    exe = DCM2NIIX if DCM2NIIX.exists() else shutil.which("dcm2niix")
    if not exe:
        pytest.fail("dcm2niix not found; `pip install -r requirements.txt` installs it")
    return Path(exe)
