"""Synthetic abdominal CT phantoms with a known spleen (deterministic from a seed).

Commands:
  cohort       MSD-style dataset: imagesTr/ labelsTr/ imagesTs/ labelsTs/ dataset.json (and/or DICOM)
  dicom_study  one folder of DICOM studies (one per patient): CT series, scout, secondary capture, SEG
  case         a single phantom as NIfTI image + label
  spec         print the parameters a seed gives (JSON)

Examples:
  spleenseg-phantom cohort data/phantoms --n 20 --seed 0 --fmt nifti
  spleenseg-phantom dicom_study data/dicom_in --patients 3 --reverse --shuffle_names --nested
  spleenseg-phantom case out/ --seed 5 --shape 512,512,80
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from spleenseg.cli import run_fire
from spleenseg.errors import InputError
from spleenseg.phantom import (
    FORMATS,
    ORIENTATIONS,
    make_cohort,
    make_phantom,
    random_spec,
    write_dicom_study,
    write_nifti,
)
from spleenseg.atomic import atomic_dir, ensure_writable_dir


def _count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _shape(value: object) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(v, int) for v in value):
        raise InputError(f"--shape must be three integers like 128,128,96, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


class PhantomCLI:
    """Synthetic abdominal CT phantoms (NIfTI and DICOM) with a ground-truth spleen label."""

    def cohort(self, out: str, n: int = 20, seed: int = 0, fmt: str = "nifti", size: Sequence[int] = (96, 160),
               val_fraction: float = 0.2, n_test: int | None = None, workers: int = 2,
               overwrite: bool = False) -> None:
        """Write an MSD-style dataset of ``n`` labelled phantoms (+ ``n_test`` test cases) to ``out``.

        Args:
          out: output folder; must be absent or empty (unless --overwrite). It appears only when complete.
          n: number of labelled cases (training + validation).
          seed: cohort seed; the same seed gives the same bytes.
          fmt: nifti | dicom | both.
          size: lo,hi voxel count per axis (each case draws its grid size in this range).
          val_fraction: share of labelled cases listed under "validation" in dataset.json.
          n_test: test cases in imagesTs/ (default n // 10, at least 1).
          workers: processes used to generate cases.
          overwrite: replace a non-empty ``out``.
        """
        _count("n", n, 1)
        _count("seed", seed)
        _count("workers", workers, 1)
        if n_test is not None:
            _count("n_test", n_test)
        if fmt not in FORMATS:
            raise InputError(f"--fmt {fmt!r} is not an output format; choose one of {', '.join(FORMATS)}")
        if isinstance(size, (list, tuple)):
            size = tuple(size)
        else:
            raise InputError(f"--size must be lo,hi voxel counts like 96,160, got {size!r}")
        path = make_cohort(out, n_cases=n, seed=seed, fmt=fmt, size=size, val_fraction=val_fraction,
                           n_test=n_test, workers=workers, overwrite=overwrite)
        print(f"wrote {n} labelled + test phantoms to {path} (see {path / 'dataset.json'})")
        return None

    def dicom_study(self, out: str, patients: int = 1, seed: int = 0, shape: Sequence[int] | None = (128, 128, 64),
                    reverse: bool = False, shuffle_names: bool = False, nested: bool = False,
                    unsigned: bool = False, orientation: str = "axial", tilt: float = 0.0,
                    feet_first: bool = False, junk: bool = True, seg: bool = True, phase: str | None = None,
                    overwrite: bool = False) -> None:
        """Write ``patients`` DICOM studies into one folder ``out`` (as a PACS export would).

        Each study holds a CT series, and with --junk a coronal scout (Modality CT, LOCALIZER) and a secondary
        capture (Modality OT); with --seg the spleen as DICOM SEG referencing the CT.

        Args:
          out: output folder; must be absent or empty (unless --overwrite).
          patients: number of patients/studies (seeds seed, seed+1, ...).
          seed: first seed.
          shape: voxels per axis, e.g. 512,512,80 (None: a clinical-size scan is drawn).
          reverse: reverse the InstanceNumber order.
          shuffle_names: random, extension-less file names.
          nested: spread files over nested sub-folders.
          unsigned: unsigned 12-bit pixels with RescaleIntercept -1024 (default signed int16).
          orientation: axial | oblique (needs --tilt) | coronal | sagittal.
          tilt: oblique acquisition: rotation of the slice plane about the left-right axis, in degrees.
          feet_first: PatientPosition FFS (image rows mirrored accordingly).
          junk: add a scout and a non-CT series beside the CT.
          seg: add the label as DICOM SEG.
          phase: native | portal (default: drawn from the seed).
          overwrite: replace a non-empty ``out``.
        """
        _count("patients", patients, 1)
        _count("seed", seed)
        shape_t = _shape(tuple(shape) if isinstance(shape, list) else shape)
        if orientation not in ORIENTATIONS:
            raise InputError(f"--orientation {orientation!r} is unknown; choose one of {', '.join(ORIENTATIONS)}")
        with atomic_dir(Path(out), overwrite=overwrite) as tmp:
            for p in tqdm(range(patients), desc=f"studies -> {out}", unit="patient"):
                spec = random_spec(seed + p, shape=shape_t, phase=phase, tilt_deg=tilt)
                write_dicom_study(make_phantom(spec), tmp, seg=seg, junk=junk, reverse=reverse,
                                  shuffle_names=shuffle_names, nested=nested, pixel_signed=not unsigned,
                                  orientation=orientation, feet_first=feet_first)
        print(f"wrote {patients} DICOM studies to {out}")
        return None

    def case(self, out: str, seed: int = 0, shape: Sequence[int] | None = None, phase: str | None = None,
             tilt: float = 0.0) -> None:
        """Write one phantom as ``out/phantom_<seed>.nii.gz`` and ``out/phantom_<seed>_label.nii.gz``.

        Args:
          out: output folder (created if needed).
          seed: phantom seed.
          shape: voxels per axis, e.g. 128,128,96 (None: clinical size, 512x512 and 1-5 mm slices).
          phase: native | portal (default: drawn from the seed).
          tilt: oblique acquisition angle in degrees.
        """
        _count("seed", seed)
        shape_t = _shape(tuple(shape) if isinstance(shape, list) else shape)
        folder = ensure_writable_dir(Path(out))
        ph = make_phantom(random_spec(seed, shape=shape_t, phase=phase, tilt_deg=tilt))
        image, label = folder / f"phantom_{seed}.nii.gz", folder / f"phantom_{seed}_label.nii.gz"
        write_nifti(ph, image, label)
        print(f"wrote {image} and {label}: {ph.spec.phase}, {ph.image.shape}, spleen {ph.spleen_ml:.0f} mL")
        return None

    def spec(self, seed: int = 0, shape: Sequence[int] | None = None, phase: str | None = None) -> str:
        """Print the acquisition and anatomy parameters drawn for ``seed`` as JSON."""
        _count("seed", seed)
        shape_t = _shape(tuple(shape) if isinstance(shape, list) else shape)
        return json.dumps(random_spec(seed, shape=shape_t, phase=phase).to_dict(), indent=2)


def main() -> None:
    """Console script ``spleenseg-phantom``."""
    run_fire(PhantomCLI(), name="spleenseg-phantom")


if __name__ == "__main__":
    main()
