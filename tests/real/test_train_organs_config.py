"""train_organs.json (experimental multi-organ recipe) layers on the shipped recipe without changing it."""

from __future__ import annotations

import json

from monai.bundle import ConfigParser

from spleenseg.paths import BUNDLE_DIR

CONFIGS = BUNDLE_DIR / "configs"


def _parser(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f"{n}.json") for n in names])
    return parser


def test_organs_recipe_overrides_network_loss_crop_and_window_only() -> None:
    base, organs = _parser("train", "train_real"), _parser("train", "train_real", "train_organs")
    assert base["network_def"]["out_channels"] == 2 and organs["network_def"]["out_channels"] == "@out_channels"
    assert organs["out_channels"] == 5 and len(organs["crop_class_ratios"]) == 6
    assert organs["loss"]["_target_"].endswith("PartialLabelDiceCELoss")
    assert "mark_spleen_only" in organs["train#preprocessing#transforms"]
    assert (organs["a_min"], organs["a_max"]) == (-150, 250) and (base["a_min"], base["a_max"]) == (-57, 164)
    assert "Flip" not in json.dumps(organs["train#augmentations"])  # the spleen stays on the patient's left
    assert organs["output_dir"] != base["output_dir"]  # never mixed with the shipped recipe's outputs
