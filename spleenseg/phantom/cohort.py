"""A cohort of phantoms as an MSD-style dataset (imagesTr/, labelsTr/, imagesTs/, dataset.json) and/or DICOM.

Why MSD layout: the MONAI bundle and every nnU-Net-style tool read it as is
(``monai.data.load_decathlon_datalist(dataset.json, data_list_key="training"|"validation")``). The
training/validation split is recorded in ``dataset.json`` so every run of the bundle uses the same one; each
case's :class:`PhantomSpec` is kept there too, so a case can be regenerated from its seed alone.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from spleenseg.errors import InputError
from spleenseg.atomic import atomic_dir
from spleenseg.dataset.msd import split_cases, write_dataset_json
from spleenseg.phantom.anatomy import make_phantom
from spleenseg.phantom.dicom import write_dicom_study
from spleenseg.phantom.nifti import write_nifti
from spleenseg.phantom.spec import PhantomSpec, random_spec

FORMATS = ("nifti", "dicom", "both")


def _check(n_cases: int, seed: int, fmt: str, size: Sequence[int], val_fraction: float, n_test: int) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for name, value in (("n_cases", n_cases), ("seed", seed), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    if n_cases < 1:
        raise InputError(f"n_cases must be at least 1, got {n_cases}")
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) for v in size) or not 8 <= size[0] <= size[1]:
        raise InputError(f"size must be (lo, hi) voxel counts with 8 <= lo <= hi, got {size!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def cohort_specs(n_cases: int, seed: int, size: Sequence[int], n_test: int = 0) -> list[PhantomSpec]:
    """The specs of a cohort: case ``c`` uses seed ``seed * 100003 + c`` and a random grid size in ``size``."""
    rng = np.random.default_rng([int(seed), 4242])
    specs = []
    for c in range(n_cases + n_test):
        nxy = int(rng.integers(size[0], size[1] + 1))
        nz = int(rng.integers(size[0], size[1] + 1))
        specs.append(random_spec(int(seed) * 100003 + c, shape=(nxy, nxy, nz)))
    return specs


def _write_case(args: tuple[PhantomSpec, str, str, str, bool]) -> dict[str, Any]:
    """Worker: build one phantom and write it (runs in a child process for speed)."""
    spec, root, case, fmt, labelled_test = args
    ph = make_phantom(spec)
    root_p = Path(root)
    entry: dict[str, Any] = {"case": case, "spleen_ml": round(ph.spleen_ml, 1), "phase": spec.phase,
                             "spacing": [round(s, 4) for s in spec.spacing], "shape": list(spec.shape),
                             "spec": spec.to_dict()}
    test = labelled_test
    if fmt in ("nifti", "both"):
        img_dir, lbl_dir = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        write_nifti(ph, root_p / img_dir / f"{case}.nii.gz", root_p / lbl_dir / f"{case}.nii.gz")
        entry["image"] = f"./{img_dir}/{case}.nii.gz"
        entry["label"] = f"./{lbl_dir}/{case}.nii.gz"
    if fmt in ("dicom", "both"):
        files = write_dicom_study(ph, root_p / "dicom" / case, junk=False, patient_id=case.upper())
        entry["dicom"] = f"./dicom/{case}"
        entry["seg"] = f"./dicom/{case}/{files['seg'][0].name}"
    return entry


def make_cohort(out_dir: str | Path, n_cases: int = 20, seed: int = 0, fmt: str = "nifti",
                size: Sequence[int] = (96, 160), val_fraction: float = 0.2, n_test: int | None = None,
                workers: int = 2, overwrite: bool = False, progress: bool = True) -> Path:
    """Generate ``n_cases`` labelled phantoms (+ ``n_test`` unlabelled-by-convention test cases) in ``out_dir``.

    Layout (fmt nifti/both): ``imagesTr/spleen_NNN.nii.gz`` (int16 HU), ``labelsTr/`` (uint8, 1 = spleen),
    ``imagesTs/`` and ``labelsTs/`` (test labels kept apart, for evaluation), ``dataset.json`` with "training" and
    "validation" lists (disjoint; the split is drawn from ``seed``) and "test". fmt dicom/both adds
    ``dicom/spleen_NNN/`` (CT series + SEG). The folder appears only when complete.
    """
    n_test = max(1, n_cases // 10) if n_test is None else n_test
    size = tuple(size)  # type: ignore[assignment]
    _check(n_cases, seed, fmt, size, val_fraction, n_test)
    specs = cohort_specs(n_cases, seed, size, n_test)
    names = [f"spleen_{c:03d}" for c in range(len(specs))]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        jobs = [(s, str(tmp), nm, fmt, c >= n_cases) for c, (s, nm) in enumerate(zip(specs, names))]
        bar = tqdm(total=len(jobs), desc=f"phantoms -> {out_dir}", unit="case", disable=not progress)
        entries: list[dict[str, Any]] = []
        if workers > 1 and len(jobs) > 1:
            # spawn, not fork: the caller may have torch/OpenMP threads running (pytest, the bundle)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
                for entry in pool.map(_write_case, jobs):
                    entries.append(entry)
                    bar.update()
        else:
            for job in jobs:
                entries.append(_write_case(job))
                bar.update()
        bar.close()
        write_dataset_json(tmp, **_dataset_fields(entries, n_cases, seed, val_fraction, fmt))
    return out_dir


def _dataset_fields(entries: list[dict[str, Any]], n_cases: int, seed: int, val_fraction: float,
                    fmt: str) -> dict[str, Any]:
    """What :func:`spleenseg.dataset.msd.write_dataset_json` gets for a cohort: lists, split and provenance."""
    train, test = entries[:n_cases], entries[n_cases:]
    val_cases = set(split_cases([e["case"] for e in train], val_fraction, seed)[1])
    val_idx = {i for i, e in enumerate(train) if e["case"] in val_cases}

    def item(e: dict[str, Any]) -> dict[str, Any]:
        keys = ("image", "label") if fmt != "dicom" else ("dicom", "seg")
        return {k: e[k] for k in keys}

    return {
        "name": "SyntheticSpleen",
        "description": "Synthetic abdominal CT phantoms (spleenseg.phantom); label 1 = spleen",
        "reference": "generated by spleenseg.phantom.make_cohort",
        "licence": "CC0 (synthetic)",
        "labels": {"0": "background", "1": "spleen"},
        "seed": int(seed),
        "format": fmt,
        "training": [item(e) for i, e in enumerate(train) if i not in val_idx],
        "validation": [item(e) for i, e in enumerate(train) if i in val_idx],
        "test": [e["image"] if fmt != "dicom" else e["dicom"] for e in test],
        "test_labels": [e["label"] for e in test if "label" in e],
        "cases": {e["case"]: {k: e[k] for k in ("spleen_ml", "phase", "spacing", "shape", "spec")} for e in entries},
    }
