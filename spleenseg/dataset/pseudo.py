"""Pseudo-labels: the unlabelled real CT, segmented by a model, filtered by the anatomy QA, added to training.

Why: the project has 1.2 labelled real volumes; ``../shared/data/real_ct`` also holds real CT without a label
(the spleen_15 crop and the full 3 mm TotalSegmentator volume). Self-training adds them as training cases with
the labelling model's own mask, but only when the bundle's QA raises no flag (one candidate on the patient's
left, plausible volume, confident, not cut by the field of view): a mask the QA doubts would teach the network
its own mistake.

Honesty rules, enforced here:

- a pseudo-labelled case of the same **patient** as a held-out case is never added (the full 3 mm
  TotalSegmentator volume contains the held-out crop);
- the labelling model must not have trained on the held-out case: for a leave-one-out fold it is that fold's
  own first-stage model (the shipped model is the TotalSegmentator fold's), which the caller passes.

Each case is labelled with the bundle's own ``inference.json`` through ``python -m monai.bundle run``, the
command a user types, so the pseudo-label is exactly what the bundle would deliver.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from spleenseg.dataset.msd import rewrite_dataset_json
from spleenseg.errors import InputError
from spleenseg.paths import SHARED_DATA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnlabelledCase:
    """A real CT without a label: its file under ``real_ct`` and the patient it belongs to."""

    case: str
    file: str
    patient: str


#: The unlabelled real CT of ``../shared/data/real_ct`` (the J2K series is the TotalSegmentator patient too, and
#: is the demo's input, so it is never trained on).
UNLABELLED: tuple[UnlabelledCase, ...] = (
    UnlabelledCase("msd_spleen_15", "msd_spleen15_crop_unlabeled.nii.gz", "msd_spleen_15"),
    UnlabelledCase("ts_abdomen_full", "ts_abdomen_ct_3mm.nii.gz", "ts_abdomen"),
)
#: Patient of each labelled real case (``spleenseg.dataset.real``): the two DTU slabs are one patient.
PATIENT_OF: dict[str, str] = {"msd_spleen_8": "msd_spleen_8", "ts_abdomen_crop": "ts_abdomen",
                              "dtu_slab_a": "dtu", "dtu_slab_b": "dtu"}


def eligible(held_out: Sequence[str], cases: Sequence[UnlabelledCase] = UNLABELLED) -> list[UnlabelledCase]:
    """The unlabelled cases of patients that are not held out."""
    unknown = [h for h in held_out if h not in PATIENT_OF]
    if unknown:
        raise InputError(f"unknown held-out case(s) {unknown}; choose from {list(PATIENT_OF)}")
    excluded = {PATIENT_OF[h] for h in held_out}
    return [c for c in cases if c.patient not in excluded]


def label_with_bundle(image: Path, out_dir: Path, bundle: Path, ckpt: Path,
                      bundle_args: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """Segment ``image`` with ``bundle``'s ``inference.json`` and ``ckpt``; returns the mask and its QA dict.

    ``bundle_args``: overrides the model was trained with (a window such as ``--a_min -150 --a_max 250``).
    """
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--ckpt_path", str(ckpt), "--input_file", str(image),
           "--output_dir", str(out_dir), *bundle_args]
    log.info("$ %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"{image}: bundle inference failed: {tail[0]}")
    stem = image.name.removesuffix(".nii.gz").removesuffix(".nii")
    mask, qa = out_dir / f"{stem}_seg.nii.gz", out_dir / f"{stem}_qa.json"
    if not mask.is_file() or not qa.is_file():
        raise InputError(f"{image}: bundle inference wrote no {mask.name} / {qa.name} in {out_dir}")
    return mask, json.loads(qa.read_text())


#: QA flags that do not make a pseudo-label wrong: a field of view that cuts the spleen cuts the image too, so
#: the mask still matches what the network sees.
TOLERATED_FLAGS: tuple[str, ...] = ("fov_cut",)


def rejection(qa: dict[str, Any], tolerated: Sequence[str] = TOLERATED_FLAGS) -> str | None:
    """Why a pseudo-label must not be trained on (a raised QA flag not in ``tolerated``), or None if usable."""
    flags = [name for name, raised in qa.get("flags", {}).items() if raised and name not in tolerated]
    return ", ".join(flags) if flags else None


def add_pseudo_labels(dataset_dir: str | os.PathLike, bundle: str | os.PathLike, ckpt: str | os.PathLike, *,
                      real_ct: str | os.PathLike = SHARED_DATA / "real_ct",
                      cases: Sequence[UnlabelledCase] | None = None,
                      bundle_args: Sequence[str] = ()) -> dict[str, Any]:
    """Label the eligible unlabelled CT and append the accepted ones to ``dataset_dir``'s training list.

    ``dataset_dir`` is a ``real_cases`` dataset (its ``split.held_out`` decides which patients are excluded).
    Accepted cases go to ``imagesTr``/``labelsTr`` as ``pseudo_<case>``; every decision (accepted, or rejected
    with the QA flags) is recorded under ``dataset.json`` ``pseudo_labels``. Returns that record.
    """
    root, bundle, ckpt, real_ct = Path(dataset_dir), Path(bundle), Path(ckpt), Path(real_ct)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing; build the dataset first (spleenseg-prepare real_cases)")
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: checkpoint not found")
    meta = json.loads(meta_path.read_text())
    held_out = meta.get("split", {}).get("held_out", [])
    chosen = eligible(held_out, UNLABELLED if cases is None else cases)
    record: dict[str, Any] = {"model": str(ckpt), "held_out": held_out, "cases": {}}
    if bundle_args:
        record["bundle_args"] = list(bundle_args)
    with tempfile.TemporaryDirectory(prefix=".pseudo-", dir=root) as tmp:
        for case in chosen:
            image = real_ct / case.file
            if not image.is_file():
                raise InputError(f"{image}: unlabelled real CT file is missing (see ../shared/data/README.md)")
            mask, qa = label_with_bundle(image, Path(tmp) / case.case, bundle, ckpt, bundle_args)
            _check_same_grid(image, mask)
            why = rejection(qa)
            entry = {"source": case.file, "patient": case.patient, "volume_ml": qa.get("spleen_volume_ml"),
                     "mean_probability": qa.get("mean_probability"), "verdict": qa.get("verdict")}
            if why:
                record["cases"][case.case] = {**entry, "accepted": False, "reason": why}
                log.warning("%s: pseudo-label rejected (%s)", case.case, why)
                continue
            name = f"pseudo_{case.case}"
            shutil.copyfile(image, root / "imagesTr" / f"{name}.nii.gz")
            shutil.copyfile(mask, root / "labelsTr" / f"{name}.nii.gz")
            meta["training"].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
            record["cases"][case.case] = {**entry, "accepted": True}
    meta["pseudo_labels"] = record
    rewrite_dataset_json(root, meta)
    return record


def _check_same_grid(image: Path, mask: Path) -> None:
    """The mask must lie on the image's own grid (the bundle inverts its resampling)."""
    a, b = nib.load(str(image)), nib.load(str(mask))
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise InputError(f"{mask}: pseudo-label grid {b.shape[:3]} differs from its image {image} {a.shape[:3]}")
