"""Well-known locations inside the repository checkout."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
BUNDLE_DIR: Path = REPO_ROOT / "bundle"
#: Public reference data laid beside the checkout (never copied into the repo).
SHARED_DATA: Path = REPO_ROOT.parent / "shared" / "data"


def inside(root: str | Path, relative: str | Path, what: str = "path") -> Path:
    """``root / relative``, refused unless it resolves inside ``root``.

    Why: file and folder names built from file content (UIDs, descriptions, a manifest's entries) must never
    write or read outside the folder they belong to, whatever they contain (``..``, absolute paths, links).
    """
    from spleenseg.errors import InputError

    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise InputError(f"{Path(root) / relative}: {what} {str(relative)!r} leads outside {root}")
    return Path(root) / relative
