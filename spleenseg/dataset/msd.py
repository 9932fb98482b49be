"""The one ``dataset.json`` writer of the project, and the MSD layout of its entries.

Why one writer: every dataset the project makes (``spleenseg-prepare dataset``, the real-CT folds, the phantom
cohorts, pseudo-labels added to a fold) is read by the same bundle datalist code and by
``monai.data.load_decathlon_datalist``, so they must agree on the Medical Segmentation Decathlon keys and on
``numTraining`` (every labelled case under ``imagesTr``, validation included). As nnU-Net's
``generate_dataset_json``, callers pass the lists and their own extra fields; the writer adds the counts and
the fixed keys, and writes atomically with sorted keys (the same input gives the same bytes).
"""

from __future__ import annotations

import os
import random
from typing import Any, Sequence

from spleenseg.dicom.nifti import write_json
from spleenseg.errors import InputError

DATASET_JSON = "dataset.json"


def case_entry(case: str, folder: str = "Tr") -> dict[str, str]:
    """``{"image": ./images<folder>/<case>.nii.gz, "label": ./labels<folder>/<case>.nii.gz}``."""
    return {"image": f"./images{folder}/{case}.nii.gz", "label": f"./labels{folder}/{case}.nii.gz"}


def dataset_json(*, name: str, description: str, labels: dict[str, str], training: Sequence[Any],
                 validation: Sequence[Any] = (), test: Sequence[Any] = (), test_labels: Sequence[str] = (),
                 **extra: Any) -> dict[str, Any]:
    """The ``dataset.json`` content: the MSD keys, the lists, and ``extra`` (e.g. ``split``, ``cases``)."""
    meta: dict[str, Any] = {
        "name": name, "description": description, "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": dict(labels), "numTraining": len(training) + len(validation), "numTest": len(test),
        "training": list(training), "validation": list(validation), "test": list(test),
    }
    if test_labels:
        meta["test_labels"] = list(test_labels)
    return {**meta, **extra}


def write_dataset_json(folder: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Write ``folder/dataset.json`` from :func:`dataset_json`'s fields (atomically); return its content."""
    meta = dataset_json(**fields)
    write_json(meta, os.path.join(folder, DATASET_JSON))
    return meta


def rewrite_dataset_json(folder: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Any]:
    """Write an updated ``dataset.json`` (lists changed by the caller) with its counts made consistent again."""
    fixed = {k: v for k, v in meta.items() if k not in ("numTraining", "numTest")}
    return write_dataset_json(folder, **fixed)


def split_cases(cases: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """The project's one train/validation split: a seeded shuffle of the sorted names, then the last
    ``round(n * val_fraction)`` cases validate (at least 1 and at most n - 1 when n > 1 and the fraction is > 0).

    Every dataset the project writes keeps the result in ``dataset.json``'s ``validation`` list, so training
    reads the split from the file; the bundle's own fallback for a foreign dataset without that list
    (``bundle/scripts/datalist.py``) rounds the same way.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = sorted(cases)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    return sorted(order[: len(order) - n_val]), sorted(order[len(order) - n_val:])
