"""Datalists from MSD ``dataset.json``: the validation list when present, a deterministic split otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.bundle import bundle_scripts

# the bundle's own error class: the bundle never imports the spleenseg library
InputError = bundle_scripts("errors").InputError
load_datalist = bundle_scripts("datalist").load_datalist


def _dataset(tmp_path: Path, n: int, with_validation: bool) -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    items = []
    for i in range(n):
        for sub in ("imagesTr", "labelsTr"):
            (tmp_path / sub / f"c{i}.nii.gz").write_bytes(b"")
        items.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {"training": items[:-2], "validation": items[-2:]} if with_validation else {"training": items}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path


def test_validation_list_is_used_as_is(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, 6, with_validation=True)
    val = load_datalist(ds, "validation")
    assert [Path(d["image"]).name for d in val] == ["c4.nii.gz", "c5.nii.gz"]
    assert len(load_datalist(ds, "training")) == 4
    assert all(Path(d["label"]).is_absolute() for d in val)


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, 10, with_validation=False)
    train, val = load_datalist(ds, "training", 0.2, seed=3), load_datalist(ds, "validation", 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not {d["image"] for d in train} & {d["image"] for d in val}
    assert val == load_datalist(ds, "validation", 0.2, seed=3)
    assert val != load_datalist(ds, "validation", 0.2, seed=4) or val != load_datalist(ds, "validation", 0.2, 5)


def test_missing_file_is_named(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, 4, with_validation=False)
    (ds / "labelsTr" / "c1.nii.gz").unlink()
    with pytest.raises(InputError, match="c1.nii.gz"):
        load_datalist(ds, "training")


def test_phantom_cohort_dataset_json(tiny_cohort: Path) -> None:
    meta = json.loads((tiny_cohort / "dataset.json").read_text())
    val = load_datalist(tiny_cohort, "validation")
    assert len(val) == len(meta["validation"]) >= 1
    assert all(Path(d["image"]).is_file() and Path(d["label"]).is_file() for d in val)
