"""TorchScript export (``ckpt_export``) and ``verify_net_in_out``, plus config consistency checks."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser

from spleenseg.paths import BUNDLE_DIR
from testkit.bundle import CONFIGS, TrainRun, run_bundle


def test_ckpt_export_and_verify_net_in_out(trained_run: TrainRun, tmp_path: Path) -> None:
    ts_path = tmp_path / "model.ts"
    common = ["--net_id", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
              "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(BUNDLE_DIR)]
    run_bundle(["ckpt_export", *common, "--filepath", str(ts_path), "--ckpt_file", str(trained_run.model)])
    run_bundle(["verify_net_in_out", *common, "--device", "cpu"])

    extra = {"inference.json": "", "metadata.json": ""}
    scripted = torch.jit.load(str(ts_path), _extra_files=extra)
    assert b"network_data_format" in extra["metadata.json"] and b"preprocessing" in extra["inference.json"]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained_run.model, weights_only=True))
    net.eval()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-4)


def _transform_args(config: str, ids: list[str]) -> list[dict]:
    """Transform configs (target + arguments except keys) of the listed ids, references resolved to values."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    out = []
    for i in ids:
        for t in parser.get(i):
            if isinstance(t, dict) and t.get("_target_") != "LoadImaged":
                args = {k: v for k, v in t.items() if k not in ("keys", "mode", "_disabled_")}
                args = {k: (parser.get(v[1:]) if isinstance(v, str) and v.startswith("@") else v)
                        for k, v in args.items()}
                out.append(args)
    return out


def test_inference_preprocessing_matches_training() -> None:
    """inference.json must stand alone (it is embedded in model.ts), so guard it against drifting from train.json."""
    train = _transform_args("train.json", ["load_transforms", "preprocess_transforms"])
    infer = _transform_args("inference.json", ["preprocessing#transforms"])
    assert train == infer
    for key in ("network_def",):
        a, b = ConfigParser(), ConfigParser()
        a.read_config(str(CONFIGS / "train.json"))
        b.read_config(str(CONFIGS / "inference.json"))
        assert a.get(key) == b.get(key)
