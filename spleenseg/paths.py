"""Well-known locations inside the repository checkout."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
BUNDLE_DIR: Path = REPO_ROOT / "bundle"
#: Public reference data laid beside the checkout (never copied into the repo).
SHARED_DATA: Path = REPO_ROOT.parent / "shared" / "data"
