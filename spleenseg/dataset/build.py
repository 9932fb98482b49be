"""MSD-style dataset: ``imagesTr/ labelsTr/ imagesTs/ dataset.json`` with a seeded training/validation split.

Every image/label pair is validated before anything is written (same shape and affine, label values in
{0, 1}, spleen on the patient's left); the dataset is built in a temporary folder and moved into place.
``dataset.json`` follows the Medical Segmentation Decathlon layout and adds ``validation``, so MONAI's
``load_decathlon_datalist(path, True, "training")`` / ``"validation"`` give the bundle's datalists.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from spleenseg.atomic import atomic_dir, output_error
from spleenseg.dataset.msd import case_entry, split_cases, write_dataset_json
from spleenseg.dicom.nifti import save_nifti
from spleenseg.errors import GeometryError, InputError
from spleenseg.orientation import check_spleen_left, flip_lr_header
from spleenseg.paths import refuse_output_in_input
from spleenseg.phantom.anatomy import ORGAN_LABELS

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Label file names may carry one of these before the extension (``case_label.nii.gz`` ↔ ``case.nii.gz``).
LABEL_TAGS = ("_label", "_labels", "_seg", "_mask", "_spleen")
AFFINE_ATOL_MM = 1e-3


@dataclass
class Pair:
    """One training case: an image and its label (same stem)."""

    case: str
    image: Path
    label: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _case_of_label(path: Path) -> str:
    stem = _stem(path)
    for tag in LABEL_TAGS:
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem


def _nifti_files(folder: str | os.PathLike, what: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: {what} folder does not exist")
    files = sorted(p for p in root.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise InputError(f"{root}: no NIfTI files (.nii/.nii.gz) in the {what} folder")
    return files


def pair_files(images: str | os.PathLike, labels: str | os.PathLike) -> tuple[list[Pair], list[Path]]:
    """Match images with labels by case name; images without a label become test images."""
    label_by_case = {}
    for lab in _nifti_files(labels, "labels"):
        case = _case_of_label(lab)
        if case in label_by_case:
            raise InputError(f"{lab}: a second label for case {case!r} (first: {label_by_case[case]})")
        label_by_case[case] = lab
    pairs, tests = [], []
    for img in _nifti_files(images, "images"):
        case = _stem(img)
        if case in label_by_case:
            pairs.append(Pair(case, img, label_by_case.pop(case)))
        else:
            tests.append(img)
    if label_by_case:
        raise InputError(f"labels without an image: {', '.join(str(p) for p in label_by_case.values())}")
    if not pairs:
        raise InputError(f"{images}: no image has a matching label in {labels}")
    return pairs, tests


def validate_pair(image: nib.Nifti1Image, label: nib.Nifti1Image, case: str, organs: bool = False) -> None:
    """Same grid (shape, affine within 1e-3 mm) and label values in {0, 1} (``organs``: in the organ scheme
    :data:`spleenseg.phantom.ORGAN_LABELS`); :class:`GeometryError` / :class:`InputError` otherwise."""
    if image.shape[:3] != label.shape[:3] or len(label.shape) != 3:
        raise GeometryError(f"case {case}: image shape {image.shape} and label shape {label.shape} differ "
                            "(use `spleenseg-prepare labels` to resample the label into the image grid)")
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > AFFINE_ATOL_MM:
        raise GeometryError(f"case {case}: image and label affines differ by up to {diff:.4f} mm; they are "
                            "not aligned voxel for voxel")
    values = np.unique(np.asarray(label.dataobj))
    if organs:
        if not set(values.tolist()) <= set(ORGAN_LABELS.values()):
            raise InputError(f"case {case}: label values {values.tolist()[:10]} are not in the organ scheme "
                             f"{ORGAN_LABELS}")
        return
    if not set(values.tolist()) <= {0, 1}:
        raise InputError(f"case {case}: label values {values.tolist()[:10]} are not a subset of {{0, 1}} "
                         "(spleen = 1); select the spleen label first")


def _load(path: Path, what: str) -> nib.Nifti1Image:
    """``nib.load``, or :class:`InputError` naming the file when it is not NIfTI (random bytes, another format)."""
    try:
        return nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds on foreign files
        raise InputError(f"{path}: not a readable NIfTI {what} ({exc})") from exc


def _voxels(img: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    """The voxels, or :class:`InputError` naming the file: data cut short or corrupt (a header that parses, then
    a broken gzip stream) fails here with the file's name, not as a traceback from inside a later check."""
    try:
        return np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - EOFError, zlib.error, OSError, ValueError...
        raise InputError(f"{path}: cannot read the voxels of this NIfTI {what} ({type(exc).__name__}: {exc})") \
            from exc


def label_names(organs: bool) -> dict[str, str]:
    """``dataset.json``'s ``labels``: the organ scheme, or background/spleen for spleen-only labels."""
    return {str(v): k for k, v in ORGAN_LABELS.items()} if organs else {"0": "background", "1": "spleen"}


def build_dataset(images: str | os.PathLike, labels: str | os.PathLike, out: str | os.PathLike, *,
                  val_fraction: float = 0.2, seed: int = 0, flip_lr: bool = False, spleen_label: int | None = None,
                  organs: bool = False, name: str = "Task09_Spleen",
                  description: str = "Spleen segmentation (CT)", progress: bool = True) -> dict[str, Any]:
    """Validate every pair, then write the dataset to ``out`` (must not exist or be empty). Returns dataset.json.

    ``flip_lr``: mirror the header (image and label together) of cases whose spleen lies on the patient's
    right, the MSD spleen_8 problem; without it such cases are written as they are, with a warning.
    ``spleen_label``: for multi-organ label maps (e.g. TotalSegmentator, spleen = 1), keep only that value as 1.
    ``organs``: labels may hold every organ of :data:`spleenseg.phantom.ORGAN_LABELS` (multi-organ training);
    a case labelled 0/1 only is then a spleen-only case, which the training loss treats as such.
    """
    out = Path(out)
    refuse_output_in_input(images, out)
    refuse_output_in_input(labels, out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: output folder exists and is not empty; choose a new one")
    pairs, tests = pair_files(images, labels)
    loaded = []
    flipped = []
    for pair in tqdm(pairs, desc="validating pairs", unit="case", disable=not progress):
        img, lab = _load(pair.image, "image"), _load(pair.label, "label")
        lab_data = _voxels(lab, pair.label, "label")
        if spleen_label is not None:
            lab = nib.Nifti1Image((lab_data == spleen_label).astype(np.uint8), lab.affine, lab.header)
            lab_data = np.asarray(lab.dataobj)
        checked = nib.Nifti1Image(lab_data, lab.affine, lab.header)  # read once, for the checks only
        validate_pair(img, checked, pair.case, organs)
        body = nib.Nifti1Image(_voxels(img, pair.image, "image"), img.affine, img.header)
        side = check_spleen_left(checked, body, name=str(pair.label))
        del checked, body, lab_data
        if side.side == "right" and flip_lr:
            img, lab = flip_lr_header(img), flip_lr_header(lab, img.shape, img.affine)
            flipped.append(pair.case)
            log.warning("case %s: header mirrored left/right (--flip-lr)", pair.case)
        loaded.append((pair, img, lab))
    test_images = [(path, _load(path, "image")) for path in tests]
    train, val = split_cases([p.case for p in pairs], val_fraction, seed)
    with atomic_dir(out) as tmp:
        for pair, img, lab in tqdm(loaded, desc="writing dataset", unit="case", disable=not progress):
            _write_case(img, tmp / "imagesTr" / f"{pair.case}.nii.gz", pair.image, pair.case in flipped)
            save_nifti(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.uint8), lab.affine, lab.header),
                       tmp / "labelsTr" / f"{pair.case}.nii.gz")
        for img_path, img in test_images:
            _write_case(img, tmp / "imagesTs" / f"{_stem(img_path)}.nii.gz", img_path, False)
        meta = write_dataset_json(
            tmp, name=name, description=description, labels=label_names(organs),
            training=[case_entry(c) for c in train], validation=[case_entry(c) for c in val],
            test=[f"./imagesTs/{_stem(p)}.nii.gz" for p in tests],
            split={"seed": seed, "val_fraction": val_fraction, "n_train": len(train), "n_val": len(val)},
            flipped_lr=flipped)
    log.info("dataset %s: %d training, %d validation, %d test cases", out, len(train), len(val), len(tests))
    return meta


def _write_case(img: nib.Nifti1Image, dst: Path, src: Path, modified: bool) -> None:
    """Copy a NIfTI as ``.nii.gz`` (re-encode only when needed: flipped header or ``.nii`` input)."""
    if not modified and src.name.endswith(".nii.gz"):
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # content only: the copy gets the umask's mode, not the input's
        except OSError as exc:
            raise output_error(dst, exc, f"cannot copy {src} here") from exc
    else:
        save_nifti(img, dst)
