"""MSD-style dataset building: validation before writing, seeded split, and the full round trip from DICOM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spleenseg.dataset import build_dataset, split_cases
from spleenseg.errors import GeometryError, InputError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_study

PREPARE = [sys.executable, "-m", "spleenseg.commands.prepare_data"]


def _pairs(root: Path, n: int, shape=(24, 20, 10)) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for i in range(n):
        ph = make_phantom(random_spec(100 + i, shape=shape))
        nib.save(nib.Nifti1Image(ph.image, ph.affine), images / f"case_{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(ph.label, ph.affine), labels / f"case_{i:02d}.nii.gz")
    return images, labels


def test_split_is_seeded_disjoint_and_complete() -> None:
    cases = [f"c{i}" for i in range(41)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert (len(train), len(val)) == (33, 8)  # 80/20 (41 cases round to 33/8)
    assert set(train) | set(val) == set(cases) and not set(train) & set(val)
    assert split_cases(cases, 0.2, seed=3) == (train, val)
    assert split_cases(cases, 0.2, seed=4) != (train, val)


def test_dataset_json_and_layout(tmp_path: Path) -> None:
    images, labels = _pairs(tmp_path, 5)
    ph = make_phantom(random_spec(200, shape=(24, 20, 10)))
    nib.save(nib.Nifti1Image(ph.image, ph.affine), images / "unlabelled.nii.gz")  # -> imagesTs
    meta = build_dataset(images, labels, tmp_path / "ds", val_fraction=0.2, seed=0, progress=False)
    ds = tmp_path / "ds"
    on_disk = json.loads((ds / "dataset.json").read_text())
    assert on_disk == meta and meta["numTraining"] == 5 and meta["numTest"] == 1
    assert len(meta["training"]) == 4 and len(meta["validation"]) == 1
    for item in meta["training"] + meta["validation"]:
        assert (ds / item["image"]).is_file() and (ds / item["label"]).is_file()
    assert (ds / meta["test"][0]).is_file()
    assert not list(tmp_path.glob(".ds.partial-*"))


@pytest.mark.parametrize("defect, error, message", [
    ("shape", GeometryError, "shape"),
    ("affine", GeometryError, "affines differ"),
    ("values", InputError, "not a subset of"),
])
def test_bad_pair_is_refused_and_nothing_written(defect: str, error: type, message: str, tmp_path: Path) -> None:
    images, labels = _pairs(tmp_path, 3)
    bad = labels / "case_01.nii.gz"
    lab = nib.load(bad)
    data, affine = np.asarray(lab.dataobj), lab.affine.copy()
    if defect == "shape":
        data = data[:, :, :-1]
    elif defect == "affine":
        affine[2, 3] += 2.0  # shifted by a slice's worth
    else:
        data = data * 2
    nib.save(nib.Nifti1Image(data, affine), bad)
    with pytest.raises(error, match=message) as err:
        build_dataset(images, labels, tmp_path / "ds", progress=False)
    assert "case_01" in str(err.value)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.partial-*"))


def test_round_trip_dicom_to_bundle_datalist(tmp_path: Path) -> None:
    """Phantom DICOM studies → group → to_nifti → labels (SEG) → dataset → MONAI datalist, in RAS."""
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    incoming = tmp_path / "incoming"
    phantoms = {}
    for seed in (31, 32, 33):
        ph = make_phantom(random_spec(seed, shape=(28, 24, 10)))
        phantoms[seed] = ph
        write_dicom_study(ph, incoming / f"study{seed}", patient_id=f"PAT{seed}", reverse=seed == 32,
                          shuffle_names=True)
    run = lambda *args: subprocess.run(PREPARE + [str(a) for a in args], capture_output=True, text=True,  # noqa
                                       timeout=180)
    r = run("group", incoming, tmp_path / "grouped", "--workers", 2)
    assert r.returncode == 0, r.stderr
    r = run("to_nifti", tmp_path / "grouped", tmp_path / "nifti", "--modality", "CT", "--workers", 2)
    assert r.returncode == 0, r.stderr
    images = sorted((tmp_path / "nifti").glob("*.nii.gz"))
    assert len(images) == 3  # scouts skipped, secondary captures are OT
    (tmp_path / "labels").mkdir()
    for seed in phantoms:
        image = next(p for p in images if p.name.startswith(f"PAT{seed}__"))
        r = run("labels", incoming / f"study{seed}" / f"SEG_{seed:05d}.dcm", image, tmp_path / "labels" / image.name)
        assert r.returncode == 0, r.stderr
    r = run("dataset", tmp_path / "nifti", tmp_path / "labels", tmp_path / "Task09_Spleen", "--val-fraction", 0.34)
    assert r.returncode == 0, r.stderr

    datalist = tmp_path / "Task09_Spleen" / "dataset.json"
    train = load_decathlon_datalist(datalist, True, "training")
    val = load_decathlon_datalist(datalist, True, "validation")
    assert (len(train), len(val)) == (2, 1)
    load = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
                    Orientationd(["image", "label"], axcodes="RAS")])
    for item in train + val:
        seed = int(Path(item["image"]).name[3:5])
        ph = phantoms[seed]
        data = load(item)
        truth_img = nib.as_closest_canonical(nib.Nifti1Image(ph.image, ph.affine))
        truth_lab = nib.as_closest_canonical(nib.Nifti1Image(ph.label, ph.affine))
        assert np.array_equal(data["image"][0].numpy(), truth_img.get_fdata())
        assert np.array_equal(data["label"][0].numpy(), truth_lab.get_fdata())
        assert np.allclose(data["image"].affine.numpy(), truth_img.affine, atol=1e-3)
        # the spleen is on the patient's left: smaller RAS x than the body centre
        aff = data["label"].affine.numpy()
        spleen_x = (aff @ np.r_[np.argwhere(data["label"][0].numpy() > 0).mean(0), 1])[0]
        body_x = (aff @ np.r_[np.argwhere(data["image"][0].numpy() > -500).mean(0), 1])[0]
        assert spleen_x < body_x
