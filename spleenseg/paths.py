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


def refuse_output_in_input(in_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse an output folder that is the input folder or lies inside it (the input must stay unchanged)."""
    from spleenseg.errors import InputError

    src, out = Path(in_dir).resolve(), Path(out_dir).resolve()
    if out == src or src in out.parents:
        raise InputError(f"{out_dir}: output folder must not be inside the input folder {in_dir}")
