"""Data preparation: DICOM files → series groups → NIfTI → MSD-style dataset (thin fire CLI over spleenseg).

Commands (``spleenseg-prepare <command> --help`` for details)::

    group IN OUT [--link] [--slices-per-group N] [--workers N]   sort files into OUT/<patient>/<study>/<series>/
    to_nifti IN OUT [--resample] [--modality CT] [--keep-localizers] [--workers N]   one .nii.gz + .json per series
      (both take --shard I/N: only shard I of N of the series, for N parallel jobs into one OUT)
    merge_manifests OUT                                          join the N shard manifests into OUT/manifest.json
    labels LABEL IMAGE OUT                                       SEG / NIfTI / NRRD label -> image grid
    dataset IMAGES LABELS OUT [--val-fraction 0.2] [--seed 0] [--flip-lr] [--spleen-label 1]
    download_msd OUT [--url URL] [--md5 MD5]                     Task09_Spleen via MONAI, MD5-checked
    check_orientation LABEL [IMAGE]                              is the spleen on the patient's left?
    real_cases OUT [--phantoms 32] [--seed 0] [--held-out CASE]  real labelled CT (fixed split) + realistic phantoms
    pseudo_labels DATASET --ckpt MODEL [--bundle bundle]         add QA-checked pseudo-labelled unlabelled real CT

Errors print one line naming the file and the problem and exit with status 2. Inputs are never changed.
"""

from __future__ import annotations

import os

from spleenseg.cli import run_fire


def _workers(workers: int | None) -> int:
    return max(1, workers if workers else (os.cpu_count() or 1))


def group(in_dir: str, out_dir: str, link: bool = False, slices_per_group: int | None = None,
          workers: int | None = None, shard: str | None = None) -> str:
    """Scan IN (headers only), group by Patient/Study/Series UID (split by orientation/size/acquisition),
    copy (or --link) the files to OUT/<patient>/<study>/<series>/ and write OUT/manifest.json.
    --shard I/N lays out only shard I (0 to N-1) of the series, by sha256 of the Series Instance UID, and
    writes OUT/manifest.shard-I-of-N.json; run all N into one OUT, then merge_manifests OUT."""
    from spleenseg.shard import parse_shard

    part = parse_shard(shard)  # before the heavy imports: a bad --shard fails at once
    from spleenseg.dicom.convert import group_folder

    groups = group_folder(in_dir, out_dir, link=link, slices_per_group=slices_per_group, workers=_workers(workers),
                          shard=part)
    return f"{len(groups)} series -> {out_dir}/{part.manifest_name if part else 'manifest.json'}"


def to_nifti(in_dir: str, out_dir: str, resample: bool = False, modality: str | None = None,
             keep_localizers: bool = False, workers: int | None = None, shard: str | None = None) -> str:
    """Convert each series in IN (a `group` output or any DICOM folder) to OUT/<series>.nii.gz + .json.
    Irregular spacing or gantry tilt is an error unless --resample (linear, onto a uniform grid).
    Scouts are skipped unless --keep-localizers; --modality CT keeps only CT series.
    --shard I/N converts only shard I (0 to N-1) of the series and, when all are written, lists them in
    OUT/manifest.shard-I-of-N.json; run all N into one OUT, then merge_manifests OUT."""
    from spleenseg.shard import parse_shard

    part = parse_shard(shard)
    from spleenseg.dicom.convert import convert_folder

    written = convert_folder(in_dir, out_dir, resample=resample, modality=modality,
                             keep_localizers=keep_localizers, workers=_workers(workers), shard=part)
    return f"{len(written)} volume(s) written to {out_dir}" + (f" (shard {part})" if part else "")


def merge_manifests(out_dir: str) -> str:
    """Join the N shard manifests of OUT (from group or to_nifti --shard I/N) into OUT/manifest.json, in the
    order an unsharded run gives, and remove them. Refused when the shards disagree on N, the command, the
    source or the options, when a shard is missing, or when two shards claim the same output."""
    from spleenseg.shard import merge_manifests as _merge

    merged = _merge(out_dir)
    return f"{len(merged['series'])} series -> {out_dir}/manifest.json"


def labels(label: str, image: str, out: str) -> str:
    """Write LABEL (DICOM SEG, NIfTI or NRRD) as a NIfTI label map aligned voxel for voxel with IMAGE
    (the DICOM series folder or its NIfTI)."""
    from spleenseg.dicom.convert import labels_to_nifti

    return labels_to_nifti(label, image, out)


def dataset(images: str, labels: str, out: str, val_fraction: float = 0.2, seed: int = 0,
            flip_lr: bool = False, spleen_label: int | None = None, name: str = "Task09_Spleen") -> str:
    """Build OUT/imagesTr, labelsTr, imagesTs and dataset.json (seeded train/validation split) after
    validating every pair. --flip-lr mirrors the header of cases whose spleen lies on the patient's right."""
    from spleenseg.dataset import build_dataset

    meta = build_dataset(images, labels, out, val_fraction=val_fraction, seed=seed, flip_lr=flip_lr,
                         spleen_label=spleen_label, name=name)
    s = meta["split"]
    return f"{out}/dataset.json: {s['n_train']} training, {s['n_val']} validation, {meta['numTest']} test"


def download_msd(out: str, url: str | None = None, md5: str | None = None) -> str:
    """Download Task09_Spleen.tar with MONAI's download_and_extract (MD5 checked) and extract to OUT."""
    from spleenseg.dataset import MSD_SPLEEN_MD5, MSD_SPLEEN_URL
    from spleenseg.dataset import download_msd as _download

    return str(_download(out, url=url or MSD_SPLEEN_URL, md5=md5 or MSD_SPLEEN_MD5))


def check_orientation(label: str, image: str | None = None, spleen_label: int = 1) -> str:
    """Report on which side of the patient the spleen of LABEL lies (warning when on the right)."""
    from spleenseg.orientation import check_spleen_left

    r = check_spleen_left(label, image, spleen_value=spleen_label)
    return f"{label}: spleen on the patient's {r.side}" + (
        f" ({r.offset_mm:+.0f} mm from the body midline)" if r.offset_mm is not None else "")


def real_cases(out: str, phantoms: int = 32, seed: int = 0, real_ct: str | None = None,
               workers: int | None = None, held_out: str | list[str] | None = None,
               validation: str | list[str] | None = None, cross_phantoms: int = 0, organs: bool = False) -> str:
    """Build OUT/real (the real labelled CT of ../shared/data/real_ct: spleen_8 header mirrored back with
    --flip-lr, TotalSegmentator crop with spleen, liver, kidney and stomach labels, DTU DICOM slices + PNG
    masks; fixed split, by default the TotalSegmentator crop held out and DTU slab B validating) and
    OUT/phantoms (domain-randomised multi-organ phantoms; --phantoms 0 skips them). --held-out and
    --validation take case names (comma-separated) for leave-one-case-out folds; "none" for no case.
    --cross-phantoms N also writes OUT/phantoms_cross: N test phantoms outside the training ranges.
    --organs writes multi-organ labels (1 spleen, 2 liver, 3 kidney, 4 stomach) where the source has them, for
    bundle/configs/train_organs.json; the default is spleen-only labels (the shipped recipe)."""
    from pathlib import Path

    from spleenseg.dataset.real import (HELD_OUT, REAL_CT_DIR, VALIDATION, build_phantom_dataset, build_real_dataset,
                                        cross_generator_specs)

    def names(value: str | list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
        if value is None:
            return default
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(n.strip() for n in items if n.strip() and n.strip() != "none")

    meta = build_real_dataset(Path(out) / "real", real_ct or REAL_CT_DIR, held_out=names(held_out, HELD_OUT),
                              validation=names(validation, VALIDATION), organs=bool(organs))
    msg = f"{out}/real/dataset.json: split {meta['split']}"
    if phantoms:
        pm = build_phantom_dataset(Path(out) / "phantoms", n=phantoms, seed=seed, workers=_workers(workers),
                                   organs=bool(organs))
        msg += (f"\n{out}/phantoms/dataset.json: {len(pm['training'])} training, {len(pm['validation'])} "
                f"validation, {len(pm['test'])} test")
    if cross_phantoms:
        cm = build_phantom_dataset(Path(out) / "phantoms_cross", n=0, n_val=0, n_test=cross_phantoms,
                                   workers=_workers(workers), specs=cross_generator_specs(cross_phantoms, seed),
                                   organs=bool(organs))
        msg += f"\n{out}/phantoms_cross/dataset.json: {len(cm['test'])} test phantoms outside the training ranges"
    return msg


def pseudo_labels(dataset: str, ckpt: str, bundle: str | None = None, real_ct: str | None = None,
                  bundle_args: str = "") -> str:
    """Segment the unlabelled real CT of ../shared/data/real_ct with BUNDLE's inference.json and CKPT, and add
    each mask the QA raises no flag on (a cut field of view is tolerated) to DATASET's training list as
    pseudo_<case>. Patients held out in DATASET are skipped; CKPT must not have trained on them.
    --bundle_args: the overrides CKPT was trained with, e.g. "--a_min -150 --a_max 250"."""
    import shlex

    from spleenseg.dataset.pseudo import add_pseudo_labels
    from spleenseg.paths import BUNDLE_DIR, SHARED_DATA

    record = add_pseudo_labels(dataset, bundle or BUNDLE_DIR, ckpt, real_ct=real_ct or SHARED_DATA / "real_ct",
                               bundle_args=shlex.split(bundle_args))
    lines = [f"{dataset}/dataset.json: pseudo-labels from {ckpt}"]
    for case, r in record["cases"].items():
        lines.append(f"  {case}: " + ("added" if r["accepted"] else f"rejected ({r['reason']})")
                     + f", {r['volume_ml']} mL, mean probability {r['mean_probability']}")
    return "\n".join(lines)


COMMANDS = {"group": group, "to_nifti": to_nifti, "merge_manifests": merge_manifests, "labels": labels,
            "dataset": dataset, "download_msd": download_msd, "check_orientation": check_orientation,
            "real_cases": real_cases, "pseudo_labels": pseudo_labels}

def main() -> None:
    """Console script ``spleenseg-prepare``."""
    run_fire(COMMANDS, name="spleenseg-prepare")


if __name__ == "__main__":
    main()
