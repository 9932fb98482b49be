"""The one ``dataset.json`` writer: MSD keys and counts that MONAI's decathlon reader and the bundle agree on."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist

from spleenseg.dataset.msd import case_entry, rewrite_dataset_json, write_dataset_json


def _case(root: Path, name: str, folder: str = "Tr") -> dict[str, str]:
    entry = case_entry(name, folder)
    for path in entry.values():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), root / path)
    return entry


def test_counts_keys_and_monai_reads_it(tmp_path):
    train = [_case(tmp_path, f"c{i}") for i in range(3)]
    val = [_case(tmp_path, "v0")]
    test = _case(tmp_path, "t0", "Ts")
    meta = write_dataset_json(tmp_path, name="X", description="d", labels={"0": "background", "1": "spleen"},
                              training=train, validation=val, test=[test["image"]], test_labels=[test["label"]],
                              split={"seed": 0})
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk == meta
    assert (meta["numTraining"], meta["numTest"]) == (4, 1)  # validation cases are labelled training cases too
    assert meta["modality"] == {"0": "CT"} and meta["tensorImageSize"] == "3D" and meta["split"] == {"seed": 0}
    assert list(on_disk) == sorted(on_disk)  # sorted keys: the same input gives the same bytes
    listed = load_decathlon_datalist(str(tmp_path / "dataset.json"), data_list_key="validation")
    assert listed == [{k: str((tmp_path / v).resolve()) for k, v in val[0].items()}]


def test_rewrite_makes_the_counts_match_the_lists_again(tmp_path):
    meta = write_dataset_json(tmp_path, name="X", description="d", labels={"0": "background", "1": "spleen"},
                              training=[case_entry("a")])
    meta["training"].append(case_entry("pseudo_b"))
    meta["pseudo_labels"] = {"cases": {"b": {"accepted": True}}}
    again = rewrite_dataset_json(tmp_path, meta)
    assert again["numTraining"] == 2 and again["pseudo_labels"] == meta["pseudo_labels"]
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 2
