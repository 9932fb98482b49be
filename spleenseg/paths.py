"""Well-known locations inside the repository checkout."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from spleenseg.errors import InputError

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


def bundle_module(bundle: str | Path, module: str) -> ModuleType:
    """``<bundle>/scripts/<module>.py`` imported as a module of that bundle's own ``scripts`` package.

    Why a package of its own, named after the folder: the bundle's modules import each other relatively
    (``from .errors import InputError``), and two bundles (a copy, an older release) must not share modules.
    """
    root = (Path(bundle) / "scripts").resolve()
    if not (root / "__init__.py").is_file():
        raise InputError(f"{bundle}: not a bundle folder (no scripts/__init__.py)")
    name = "spleen_bundle_" + hashlib.sha1(str(root).encode()).hexdigest()[:12]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[name]
            raise
    return importlib.import_module(f"{name}.{module}")
