"""Input discovery and atomic output for ``inference.json``.

Why: the model-zoo inference config globs ``imagesTs/*.nii.gz`` and writes straight into the output folder.
Here the input is a single file (``--input_file``) or a folder, a missing/empty input is one clear error,
and results are written to a hidden staging folder and moved into place only when the run succeeded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def input_datalist(input_dir: str | None = None, input_file: str | None = None) -> list[dict[str, str]]:
    """``[{"image": path}]`` for one file or every NIfTI file directly inside a folder (sorted)."""
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise InputError(f"{path}: input file does not exist")
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise InputError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
        return [{"image": str(path.absolute())}]
    if not input_dir:
        raise InputError("no input: pass --input_file FILE.nii.gz or --input_dir FOLDER")
    folder = Path(input_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder does not exist")
    files = sorted(p for p in folder.iterdir() if _is_nifti(p))
    if not files:
        raise InputError(f"{folder}: no NIfTI files (.nii/.nii.gz) in this folder")
    return [{"image": str(p.absolute())} for p in files]


def publish(staging: str, output_dir: str) -> list[str]:
    """Move every finished file from ``staging`` into ``output_dir`` (same file system: atomic renames)."""
    moved = []
    for src in sorted(Path(staging).rglob("*")):
        if src.is_file():
            dst = Path(output_dir) / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append(str(dst))
    shutil.rmtree(staging, ignore_errors=True)
    return moved
