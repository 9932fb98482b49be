"""train_real.json: the shipped model's recipe must stay compatible with inference.json and never mirror anatomy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from spleenseg.dataset.real import build_phantom_dataset, build_real_dataset
from spleenseg.orientation import OrientationWarning
from spleenseg.paths import BUNDLE_DIR

CONFIGS = BUNDLE_DIR / "configs"


def _parser(**overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_real.json")])
    parser.update({"bundle_root": str(BUNDLE_DIR), **overrides})
    return parser


def _by_target(transforms: list[dict]) -> dict[str, dict]:
    return {t["_target_"]: {k: v for k, v in t.items() if k != "_target_"} for t in transforms}


def test_network_and_preprocessing_match_inference() -> None:
    train = _parser()
    infer = ConfigParser()
    infer.read_config(str(CONFIGS / "inference.json"))
    assert train["network_def"] == infer["network_def"]
    assert train["pixdim"] == infer["pixdim"]
    pre_train = _by_target(train["preprocess_transforms"])
    pre_infer = _by_target(infer["preprocessing"]["transforms"])
    assert pre_train["ScaleIntensityRanged"] | {"keys": None} == pre_infer["ScaleIntensityRanged"] | {"keys": None}
    assert pre_train["Orientationd"]["axcodes"] == pre_infer["Orientationd"]["axcodes"] == "RAS"
    assert train["ckpt_dir"] != "$@bundle_root + '/models'"  # training never writes the shipped weights


def test_augmentations_never_flip_left_right() -> None:
    aug = json.dumps(_parser()["train#augmentations"])
    assert "Flip" not in aug and "Rotate90" not in aug
    rotate = [t for t in _parser()["train#augmentations"] if t["_target_"] == "RandAffined"][0]["rotate_range"]
    assert max(rotate) <= 0.3  # radians: small tilts only


def test_datalists_oversample_real_and_keep_held_out_apart(shared_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(OrientationWarning):  # spleen_8's mirrored header, fixed by the build
        build_real_dataset(tmp_path / "real", shared_data / "real_ct", progress=False)
    build_phantom_dataset(tmp_path / "phantoms", n=2, n_val=1, n_test=0, progress=False)
    parser = _parser(data_root=str(tmp_path), real_repeat=3)
    # a bare ConfigParser evaluates every ``$import`` item before the others, so initialize's own sys.path line
    # comes too late here: put the bundle root on sys.path first (undone after the test)
    monkeypatch.syspath_prepend(str(BUNDLE_DIR))
    parser.get_parsed_content("initialize")
    train = parser.get_parsed_content("train_datalist")
    val = parser.get_parsed_content("val_datalist")
    names = [Path(d["image"]).name for d in train]
    assert names.count("msd_spleen_8.nii.gz") == 3 and names.count("dtu_slab_a.nii.gz") == 3
    assert sum(n.startswith("phantom_") for n in names) == 2
    assert sorted(Path(d["image"]).name for d in val) == ["dtu_slab_b.nii.gz", "phantom_002.nii.gz"]
    assert not any("ts_abdomen_crop" in d["image"] for d in train + val)
    assert all(Path(d["label"]).is_file() for d in train + val)
