"""Helpers for the DICOM and dataset tests: run the real dcm2niix, compare NIfTI volumes in patient coordinates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: The reference converter, installed into the venv by requirements.txt (PyPI package ``dcm2niix``).
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"


def run_dcm2niix(exe: Path, src: Path, out: Path) -> list[Path]:
    """Convert ``src`` (folder) with dcm2niix into ``out``; returns the NIfTI files, sorted by name."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([str(exe), "-z", "n", "-b", "n", "-f", "%s_%j", "-o", str(out), str(src)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(out.glob("*.nii"))


def canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Same voxels, axes permuted/flipped to RAS: puts two converters' outputs in the same orientation."""
    return nib.as_closest_canonical(nib.funcs.squeeze_image(img))


def assert_same_volume(ours: nib.Nifti1Image, ref: nib.Nifti1Image, atol_mm: float = 1e-3) -> None:
    """Exact voxel values and affines within ``atol_mm`` after both are put in RAS orientation."""
    a, b = canonical(ours), canonical(ref)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    diff = np.abs(a.affine - b.affine).max()
    assert diff <= atol_mm, f"affines differ by {diff} mm:\n{a.affine}\n{b.affine}"
    va, vb = a.get_fdata(), b.get_fdata()
    bad = np.argwhere(va != vb)
    assert bad.size == 0, f"{len(bad)} voxels differ, first at {bad[0]}: {va[tuple(bad[0])]} vs {vb[tuple(bad[0])]}"


def sample_onto(src: nib.Nifti1Image, grid: nib.Nifti1Image, order: int = 1) -> np.ndarray:
    """Values of ``src`` at the world positions of ``grid``'s voxel centres (NaN outside ``src``)."""
    ijk = np.indices(grid.shape[:3]).reshape(3, -1)
    vox = np.linalg.inv(src.affine) @ grid.affine @ np.vstack([ijk, np.ones((1, ijk.shape[1]))])
    data = np.asarray(src.get_fdata()).reshape(src.shape[:3])
    return ndimage.map_coordinates(data, vox[:3], order=order, cval=np.nan).reshape(grid.shape[:3])
