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
from typing import Any, Sequence

from spleenseg.dicom.nifti import write_json

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
