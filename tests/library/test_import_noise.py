"""Our command lines import ``spleenseg`` before MONAI; that import silences Holoscan's stack-size warning."""

from __future__ import annotations

import subprocess
import sys

from spleenseg.paths import REPO_ROOT

WARNING = "Current stack size"


def _stderr(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_importing_monai_after_spleenseg_is_quiet() -> None:
    """``import monai`` alone warns (holoscan comes with the MONAI Deploy SDK): the control shows the test can
    fail; after ``import spleenseg`` the same import prints nothing about the stack."""
    assert WARNING in _stderr("import monai")
    quiet = _stderr("import spleenseg, monai, monai.deploy.core")
    assert WARNING not in quiet, quiet
