"""Real labelled CT from ``../shared/data/real_ct`` plus phantoms made to look like it, as MSD-style datasets.

Why: a model trained on phantoms alone scored Dice 0.001 on real CT (``ts_abdomen_crop``, below). The only real
labelled data reachable here are three sources with three different problems, each fixed here once and tested:

- ``msd_spleen_8`` (MSD Task09 spleen_8, portal-venous, 0.79x0.79x7.5 mm): its header mirrors left/right.
  :func:`spleenseg.dataset.build_dataset` with ``flip_lr=True`` mirrors image and label header together
  (the orientation check then passes; the voxel arrays are untouched).
- ``ts_abdomen_crop`` (TotalSegmentator example, native, 3 mm): a multi-organ label map; only label 1
  (spleen) is kept.
- ``dtu_slab_a`` / ``dtu_slab_b`` (DTU exercise, native, 7 DICOM slices 3 mm apart, 0.686 mm pixels): each
  slice comes as its own DICOM file with a PNG mask (non-zero = spleen). The middle slice (``Training.dcm``,
  z = 1605 mm) has no mask, so it is **excluded**; leaving it in with an empty label would teach "no spleen"
  where there is one, and interpolating a mask would invent ground truth. The six labelled slices form two
  contiguous 3-slice slabs on either side of it. The PNG masks are placed through patient coordinates (pixel
  (row, column) of the DICOM slice -> LPS via ImagePositionPatient/ImageOrientationPatient/PixelSpacing -> the
  NIfTI voxel), not by array-index assumptions.

Split (documented, fixed, not random): ``ts_abdomen_crop`` is held out for testing (``imagesTs``/``labelsTs``,
``test`` + ``test_labels`` in ``dataset.json``): it is the case the phantom-only model was measured on,
a third scanner and phase not otherwise seen as a 3-D volume, and it comes from the TotalSegmentator example
whose DICOM series the demo segments, so training on it would flatter the demo. ``dtu_slab_b`` validates
(chooses the best checkpoint on real native CT); ``msd_spleen_8`` and ``dtu_slab_a`` train.

:func:`realistic_phantom_specs` draws domain-randomised phantoms (phase, contrast strength, HU shifts, noise,
blur, slice spacing/thickness, field of view cropping, partial z coverage) through
:class:`spleenseg.phantom.PhantomSpec` fields only. ``bundle/configs/train_real.json`` joins both datasets,
repeating the real cases so that they are sampled about as often as the much more numerous phantoms.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pydicom
from tqdm import tqdm

from spleenseg.atomic import atomic_dir
from spleenseg.coords import LPS_TO_RAS
from spleenseg.dataset.build import build_dataset, label_names
from spleenseg.dataset.msd import case_entry, rewrite_dataset_json, write_dataset_json
from spleenseg.dicom import load_series_volume, to_ras_nifti
from spleenseg.dicom.nifti import save_nifti
from spleenseg.errors import GeometryError, InputError
from spleenseg.orientation import spleen_side
from spleenseg.paths import SHARED_DATA
from spleenseg.phantom.anatomy import ORGAN_LABELS

log = logging.getLogger(__name__)

REAL_CT_DIR: Path = SHARED_DATA / "real_ct"
#: DTU slab: labelled slices on either side of the unlabelled middle slice (``Training.dcm``, excluded).
DTU_SLABS: dict[str, tuple[str, ...]] = {
    "dtu_slab_a": ("Test1", "Test2", "Validation1"),  # z = 1596, 1599, 1602 mm
    "dtu_slab_b": ("Validation2", "Validation3", "Test3"),  # z = 1608, 1611, 1614 mm
}
DTU_EXCLUDED = {"Training": "no spleen mask is provided for this slice"}
#: TotalSegmentator class -> project organ label (its class map: 1 spleen, 2/3 right/left kidney, 5 liver,
#: 6 stomach; the kidneys are one class here, so the network learns no left/right cue from them).
TS_TO_ORGAN: dict[int, int] = {1: ORGAN_LABELS["spleen"], 2: ORGAN_LABELS["kidney"], 3: ORGAN_LABELS["kidney"],
                               5: ORGAN_LABELS["liver"], 6: ORGAN_LABELS["stomach"]}
HELD_OUT: tuple[str, ...] = ("ts_abdomen_crop",)
VALIDATION: tuple[str, ...] = ("dtu_slab_b",)
#: Sub-pixel tolerance when PNG pixels are mapped onto the NIfTI grid through patient coordinates.
GRID_TOL_VOX = 1e-3


@dataclass
class RealCase:
    """One real labelled CT as image + binary spleen label on the same grid (label may still be mirrored)."""

    case: str
    image: nib.Nifti1Image
    label: nib.Nifti1Image
    source: str
    phase: str
    notes: list[str] = field(default_factory=list)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: real CT file is missing (expected the shared reference data, see "
                         "../shared/data/README.md)")
    return path


def msd_spleen_8(root: Path = REAL_CT_DIR) -> RealCase:
    """MSD spleen_8 as shipped (mirrored header; :func:`build_real_dataset` fixes it with ``flip_lr``)."""
    img = nib.load(_need(root / "msd_spleen8_downsampled.nii.gz"))
    lab = nib.load(_need(root / "msd_spleen8_downsampled_label.nii.gz"))
    return RealCase("msd_spleen_8", img, _organ_label(lab, {1: ORGAN_LABELS["spleen"]}),
                    "MSD Task09 spleen_8 (CC-BY-SA 4.0), expert label",
                    "portal", ["header mirrors left/right in the source; fixed with --flip-lr"])


def _organ_label(label: nib.Nifti1Image, mapping: dict[int, int]) -> nib.Nifti1Image:
    """A uint8 label map recoded into :data:`ORGAN_LABELS` (values not in ``mapping`` become background)."""
    src = np.asarray(label.dataobj)
    data = np.zeros(src.shape, np.uint8)
    for value, organ in mapping.items():
        data[src == value] = organ
    out = nib.Nifti1Image(data, label.affine, label.header.copy())
    out.set_data_dtype(np.uint8)
    return out


def ts_abdomen_crop(root: Path = REAL_CT_DIR, organs: bool = False) -> RealCase:
    """TotalSegmentator example crop (native, 3 mm): label 1 = spleen only, or (``organs``) its spleen, liver,
    kidneys and stomach labels in the organ scheme."""
    img = nib.load(_need(root / "ts_abdomen_ct_3mm_crop.nii.gz"))
    lab = nib.load(_need(root / "ts_abdomen_ct_3mm_crop_labels.nii.gz"))
    mapping = TS_TO_ORGAN if organs else {1: ORGAN_LABELS["spleen"]}
    note = ("multi-organ label map recoded to 1 spleen, 2 liver, 3 kidneys, 4 stomach" if organs
            else "multi-organ label map reduced to label 1 = spleen")
    return RealCase("ts_abdomen_crop", img, _organ_label(lab, mapping),
                    "TotalSegmentator example_ct_sm (Apache-2.0), TotalSegmentator v2 label", "native", [note])


def _read_png_mask(path: Path, rows: int, cols: int) -> np.ndarray:
    from PIL import Image

    with Image.open(_need(path)) as im:
        mask = np.asarray(im)
    if mask.ndim == 3:  # RGB(A) masks: any non-zero colour channel is spleen
        mask = mask[..., :3].max(axis=-1)
    if mask.shape != (rows, cols):
        raise GeometryError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} pixels but its DICOM slice is "
                            f"{cols}x{rows}; cannot align them")
    return mask > 0


def mask_to_grid(mask: np.ndarray, ds: pydicom.Dataset, affine_ras: np.ndarray, shape: Sequence[int],
                 name: str) -> np.ndarray:
    """Voxel indices (N, 3) of the NIfTI grid hit by the non-zero pixels of a 2-D mask drawn on DICOM slice ``ds``.

    Pixel (row r, column c) is at LPS ``IPP + c * dcol * F_row + r * drow * F_col`` (PS 3.3 C.7.6.2.1.1), then
    RAS = diag(-1, -1, 1) LPS, then the inverse NIfTI affine. Every pixel must land on a voxel centre.
    """
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    drow, dcol = (float(v) for v in ds.PixelSpacing)
    rc = np.argwhere(mask).astype(float)  # (row, col)
    lps = ipp[None, :] + rc[:, 1:2] * dcol * iop[None, :3] + rc[:, 0:1] * drow * iop[None, 3:]
    ras = lps @ LPS_TO_RAS[:3, :3]  # diagonal: the same on either side
    inv = np.linalg.inv(affine_ras)
    ijk = ras @ inv[:3, :3].T + inv[:3, 3]
    idx = np.rint(ijk)
    if len(idx) and (np.abs(ijk - idx).max() > GRID_TOL_VOX or (idx < 0).any() or (idx >= np.array(shape[:3])).any()):
        raise GeometryError(f"{name}: mask pixels do not fall on the voxel centres of the converted volume")
    return idx.astype(int)


def dtu_slab(case: str, root: Path = REAL_CT_DIR) -> RealCase:
    """Contiguous labelled DTU slices -> volume via :func:`spleenseg.dicom.load_series_volume`, PNG masks placed
    through patient coordinates."""
    folder = root / "dtu_spleen_slab"
    names = DTU_SLABS[case]
    paths = [_need(folder / f"{n}.dcm") for n in names]
    image = to_ras_nifti(load_series_volume([str(p) for p in paths]))
    label = np.zeros(image.shape[:3], np.uint8)
    for name, path in zip(names, paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        mask = _read_png_mask(folder / f"{name}_spleen.png", int(ds.Rows), int(ds.Columns))
        idx = mask_to_grid(mask, ds, image.affine, image.shape, f"{folder / name}_spleen.png")
        label[idx[:, 0], idx[:, 1], idx[:, 2]] = 1
    lab = nib.Nifti1Image(label, image.affine)
    lab.set_qform(image.affine, code=1)
    lab.set_sform(image.affine, code=1)
    excluded = ", ".join(f"{k}.dcm ({v})" for k, v in DTU_EXCLUDED.items())
    return RealCase(case, image, lab, "DTUImageAnalysis exercise 6 (CC-BY 4.0), expert PNG masks", "native",
                    [f"slices {', '.join(names)}", f"excluded: {excluded}"])


def real_cases(root: Path = REAL_CT_DIR, organs: bool = False) -> list[RealCase]:
    """Every real labelled case, as shipped (spleen_8 still mirrored); ``organs``: multi-organ where labelled."""
    root = Path(root)
    return [msd_spleen_8(root), ts_abdomen_crop(root, organs)] + [dtu_slab(c, root) for c in DTU_SLABS]


def _resplit(root: Path, cases: list[RealCase], held_out: Sequence[str], validation: Sequence[str]) -> dict[str, Any]:
    """Rewrite build_dataset's random split into the documented one; held-out cases move to imagesTs/labelsTs."""
    import json

    meta = json.loads((root / "dataset.json").read_text())
    names = [c.case for c in cases]
    unknown = [n for n in (*held_out, *validation) if n not in names]
    if unknown:
        raise InputError(f"unknown real case(s) {unknown}; choose from {names}")
    for name in held_out:
        for kind in ("images", "labels"):
            (root / f"{kind}Ts").mkdir(exist_ok=True)
            os.replace(root / f"{kind}Tr" / f"{name}.nii.gz", root / f"{kind}Ts" / f"{name}.nii.gz")
    train = [n for n in names if n not in held_out and n not in validation]
    meta.update({
        "training": [case_entry(n, "Tr") for n in train],
        "validation": [case_entry(n, "Tr") for n in validation],
        "test": [f"./imagesTs/{n}.nii.gz" for n in held_out],
        "test_labels": [f"./labelsTs/{n}.nii.gz" for n in held_out],
        "split": {"rule": "fixed (spleenseg.dataset.real)", "held_out": list(held_out),
                  "validation": list(validation), "training": train},
        "cases": {c.case: {"source": c.source, "phase": c.phase, "notes": c.notes,
                           "shape": list(c.image.shape[:3]),
                           "spacing_mm": [round(float(s), 4) for s in c.image.header.get_zooms()[:3]]}
                  for c in cases},
        "excluded": {f"dtu_spleen_slab/{k}.dcm": v for k, v in DTU_EXCLUDED.items()},
    })
    return rewrite_dataset_json(root, meta)


def _check_all_left(root: Path, meta: dict[str, Any]) -> None:
    """After preparation every spleen must be on the patient's left (the orientation check must pass)."""
    for img_rel, lab_rel in [(e["image"], e["label"]) for e in meta["training"] + meta["validation"]] + list(
            zip(meta["test"], meta["test_labels"])):
        side = spleen_side(root / lab_rel, root / img_rel)
        if side.side != "left":
            raise GeometryError(f"{root / lab_rel}: after preparation the spleen is on the patient's {side.side}")


def build_real_dataset(out: str | os.PathLike, root: str | os.PathLike = REAL_CT_DIR, *,
                       held_out: Sequence[str] = HELD_OUT, validation: Sequence[str] = VALIDATION,
                       progress: bool = True, organs: bool = False) -> dict[str, Any]:
    """Write the real labelled cases as one MSD-style dataset at ``out`` (must not exist or be empty).

    Reuses :func:`spleenseg.dataset.build_dataset` (pair validation, ``--flip-lr`` for spleen_8, atomic write),
    then applies the fixed split and checks that every spleen lies on the patient's left.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: output folder exists and is not empty; choose a new one")
    cases = real_cases(Path(root), organs)
    with atomic_dir(out) as built, tempfile.TemporaryDirectory(prefix=f".{out.name}.pairs-", dir=out.parent) as tmp:
        pairs = Path(tmp)
        for c in tqdm(cases, desc="real cases", unit="case", disable=not progress):
            save_nifti(c.image, pairs / "images" / f"{c.case}.nii.gz")
            save_nifti(c.label, pairs / "labels" / f"{c.case}.nii.gz")
        build_dataset(pairs / "images", pairs / "labels", built, val_fraction=0.0, flip_lr=True, organs=organs,
                      name="SpleenRealCT", description="Real labelled abdominal CT (shared/data/real_ct)",
                      progress=progress)
        meta = _resplit(built, cases, held_out, validation)
        _check_all_left(built, meta)
    log.info("real dataset %s: %s", out, meta["split"])
    return meta


# ----------------------------------------------------------------------------------------------- phantoms
def realistic_phantom_specs(n: int, seed: int = 0, size: tuple[int, int] = (128, 176)) -> list[Any]:
    """``n`` domain-randomised :class:`PhantomSpec` that span the real cases' acquisitions.

    Varied through spec fields only: phase (half native like the TotalSegmentator/DTU CT, half portal like
    MSD), enhancement strength 0.6-1.8 (portal spleens of about 90-180 HU, as real scans reach), spleen HU
    shift +/-15, liver HU shift -45..+20 (fatty to dense livers), enlarged spleens in a fifth of the cases
    (specs drawn up to 1,500 mL; the abdominal cavity clips the painted spleen, to about 600 mL at most), noise
    5-30 HU, blur 0.5-1.6 mm (soft to sharp kernels), slice spacing 1.5-7.5 mm (spleen_8 has 7.5) with thickness
    up to 2x, a cropped in-plane field of view in a quarter of the cases and a partial z coverage (the spleen cut
    by the scan range, as in the crops) in another quarter.
    """
    from spleenseg.phantom import random_spec

    rng = np.random.default_rng([int(seed), 7007])
    specs = []
    for c in range(n):
        u = rng.uniform
        nxy = int(rng.integers(size[0], size[1] + 1))
        phase = "native" if c % 2 == 0 else "portal"
        base = random_spec(int(seed) * 100003 + 50000 + c, shape=(nxy, nxy, 64), phase=phase)
        sz = float(rng.choice([1.5, 2.0, 3.0, 3.0, 5.0, 7.5]))
        nz = int(np.clip(round(u(140.0, 260.0) / sz), 12, 120))
        sx = base.spacing[0]
        shape = (nxy, nxy, nz)
        centre = list(base.fov_centre_mm)
        r = rng.uniform()
        if r < 0.25:  # cropped field of view: the body is cut at the sides (like the shipped crops)
            shape = (int(nxy * u(0.6, 0.8)), int(nxy * u(0.65, 0.85)), nz)
            centre[0] += u(10.0, 40.0)  # keep the left side (spleen) in view
        elif r < 0.5:  # partial z coverage: the scan range cuts the spleen
            centre[2] += float(rng.choice([-1.0, 1.0])) * u(0.25, 0.45) * nz * sz
        spleen = _enlarged_spleen(base, rng) if rng.uniform() < SPLENOMEGALY_SHARE else {}
        specs.append(base.replace(
            shape=shape, spacing=(sx, sx, sz), slice_thickness=sz * float(rng.choice([1.0, 1.0, 1.5, 2.0])),
            fov_centre_mm=tuple(centre), noise_sd=u(5.0, 30.0), blur_mm=u(0.5, 1.6),
            contrast_scale=u(0.6, 1.8), spleen_hu_shift=u(-15.0, 15.0), liver_hu_shift=u(-45.0, 20.0), **spleen))
    return specs


def cross_generator_specs(n: int, seed: int = 0) -> list[Any]:
    """``n`` test phantoms whose parameters lie OUTSIDE the ranges :func:`realistic_phantom_specs` trains on.

    Each case extrapolates several acquisition and patient parameters at once: very strong enhancement
    (contrast 1.9-2.3, portal spleens of about 190-220 HU) or very dense / very fatty livers, noise 32-45 HU,
    blur 1.7-2.2 mm, a wider body (half-width 190-205 mm) and an oblique slice plane (10-15 degrees; training
    is axial). They measure how the model degrades beyond what it has seen, not how well it fits.
    """
    rng = np.random.default_rng([int(seed), 9091])
    out = []
    for spec in realistic_phantom_specs(n, seed + 7919):
        u = rng.uniform
        sign = float(rng.choice([-1.0, 1.0]))
        out.append(spec.replace(
            contrast_scale=u(1.9, 2.3), liver_hu_shift=u(-70.0, -50.0) if sign < 0 else u(25.0, 40.0),
            noise_sd=u(32.0, 45.0), blur_mm=u(1.7, 2.2), body_half_width=u(190.0, 205.0),
            tilt_deg=sign * u(10.0, 15.0), spleen_hu_shift=sign * u(16.0, 22.0)))
    return out


#: Share of training phantoms with an enlarged spleen, and the volume range they are drawn from (mL).
SPLENOMEGALY_SHARE = 0.2
SPLENOMEGALY_ML = (450.0, 1500.0)


def _enlarged_spleen(spec: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Spec fields of a spleen scaled up to 450-1,500 mL, grown downwards and forwards as splenomegaly does."""
    from spleenseg.phantom.anatomy import spleen_volume_ml

    base_ml = spleen_volume_ml(spec.spleen_radii, spec.spleen_lobes, spec.spleen_notch, spec.spleen_bend)
    target = float(np.exp(rng.uniform(*np.log(SPLENOMEGALY_ML))))
    f = max(1.0, (target / base_ml) ** (1.0 / 3.0))
    x, y, z = spec.spleen_centre
    grow = (f - 1.0) * spec.spleen_radii[0]
    return {"spleen_radii": tuple(r * f for r in spec.spleen_radii),
            "spleen_centre": (x * 0.95, y * 0.9, z - 0.5 * grow)}


def _write_phantom(args: tuple[Any, str, str, bool]) -> dict[str, Any] | None:
    from spleenseg.phantom import make_phantom, write_nifti

    spec, root, case, organs = args
    ph = make_phantom(spec)
    if int(ph.label.sum()) < 50:  # the random scan range missed the spleen: not a useful labelled case
        return None
    write_nifti(ph, Path(root) / "imagesTr" / f"{case}.nii.gz", Path(root) / "labelsTr" / f"{case}.nii.gz",
                organs=organs)
    return {"case": case, "phase": spec.phase, "spacing": [round(s, 3) for s in spec.spacing],
            "shape": list(spec.shape), "spleen_ml": round(ph.spleen_ml, 1), "spec": spec.to_dict()}


def build_phantom_dataset(out: str | os.PathLike, n: int = 32, seed: int = 0, n_val: int = 2, n_test: int = 4,
                          workers: int = 1, progress: bool = True, specs: list[Any] | None = None,
                          organs: bool = False) -> dict[str, Any]:
    """Realistic phantoms as an MSD-style dataset: training, ``n_val`` validation and ``n_test`` held-out test.

    ``specs`` replaces the drawn specs (e.g. :func:`cross_generator_specs` with ``n=0, n_val=0``); ``organs``
    writes multi-organ labels (:data:`ORGAN_LABELS`) instead of the spleen alone.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: output folder exists and is not empty; choose a new one")
    specs = specs if specs is not None else realistic_phantom_specs(n + n_val + n_test, seed)
    with atomic_dir(out) as tmp:
        jobs = [(s, str(tmp), f"phantom_{i:03d}", organs) for i, s in enumerate(specs)]
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                entries = list(tqdm(pool.map(_write_phantom, jobs), total=len(jobs), desc="phantoms",
                                    disable=not progress))
        else:
            entries = [_write_phantom(j) for j in tqdm(jobs, desc="phantoms", disable=not progress)]
        kept = [e for e in entries if e is not None]
        test, val, train = kept[-n_test:] if n_test else [], kept[len(kept) - n_test - n_val:len(kept) - n_test], \
            kept[:len(kept) - n_test - n_val]
        for e in test:
            for kind in ("images", "labels"):
                (tmp / f"{kind}Ts").mkdir(exist_ok=True)
                os.replace(tmp / f"{kind}Tr" / f"{e['case']}.nii.gz", tmp / f"{kind}Ts" / f"{e['case']}.nii.gz")
        meta = write_dataset_json(
            tmp, name="SpleenRealisticPhantoms", description="domain-randomised phantoms (spleenseg.dataset.real)",
            labels=label_names(organs), seed=int(seed),
            training=[case_entry(e["case"], "Tr") for e in train],
            validation=[case_entry(e["case"], "Tr") for e in val],
            test=[f"./imagesTs/{e['case']}.nii.gz" for e in test],
            test_labels=[f"./labelsTs/{e['case']}.nii.gz" for e in test],
            cases={e["case"]: {k: v for k, v in e.items() if k != "case"} for e in kept})
    return meta
