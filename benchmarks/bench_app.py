"""Benchmark: this deploy app vs a chain of the stock MONAI Deploy SDK operators, same weights, same study.

The stock chain is the SDK's spleen example without STL (DICOMDataLoader -> DICOMSeriesSelector ->
DICOMSeriesToVolume -> MonaiBundleInference on a TorchScript bundle with the model-zoo settings ->
DICOMSegmentationWriter). Our app runs twice: as shipped (``bundle/configs/inference.json``) and with the
model-zoo sliding-window settings the stock chain uses, so that the segmentations can be compared like for
like. Each run is a fresh process, timed from the outside as ``/usr/bin/time`` would (interpreter start-up,
imports and teardown counted; peak RSS from ``wait4``); ours runs as users run it, ``python -m deploy_app``.
The runs are repeated and interleaved (``--repeat``, default 3) because the machines are noisy. The script
prints the median wall time, the largest peak RSS, their ratios (ours / stock; goal <= 0.45x time, <= 1x
memory) and Dice values, slice by slice through the source SOP Instance UIDs each SEG frame references: ours
vs the stock SEG, vs the stock SEG after the largest-component filter our app adds, and each vs the phantom's
true spleen.

    python benchmarks/bench_app.py --slices 120 [--repeat 3] [--model bundle] [--work /tmp/bench_app] \\
        [--python /path/to/map-venv/bin/python]

Without a trained ``bundle/models/model.pt`` the weights are random (timings are still comparable).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spleenseg.atomic import atomic_dir
from spleenseg.cli import run_fire
from spleenseg.errors import InputError
from spleenseg.measure import dice, run_measured
from spleenseg.paths import BUNDLE_DIR, REPO_ROOT

#: The reference chain, a module of its own run in a fresh process.
STOCK_APP = Path(__file__).with_name("stock_app.py")


STUDY_SEED = 3


def make_study(folder: Path, slices: int, seed: int = STUDY_SEED) -> Path:
    """A 512x512xN phantom CT series (the size clinical abdominal CT has)."""
    from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

    if not folder.is_dir():  # written whole or not at all, so an interrupted run is not reused
        with atomic_dir(folder) as tmp:
            write_dicom_series(make_phantom(random_spec(seed, shape=(512, 512, slices), phase="portal")), tmp)
    return folder


#: Model-zoo ``spleen_ct_segmentation`` inference settings (as used by the SDK's spleen example).
MODEL_ZOO_INFERER = {"roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5, "sw_mode": "constant"}
MODEL_ZOO_POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
     "nearest_interp": False, "to_tensor": True},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]


def prepare_models(model: Path, work: Path) -> tuple[Path, Path, Path]:
    """Our app takes the bundle folder (as shipped, and a copy with the model-zoo sliding-window settings); the
    stock chain needs a TorchScript bundle (``ckpt_export``) whose config has no SaveImaged (the stock operator
    evaluates its arguments, which in our bundle need ``scripts``)."""
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    for part in ("configs", "scripts"):  # the post-processing uses the bundle's own transforms
        shutil.copytree(model / part, bundle / part, ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "models").mkdir()
    weights = model / "models" / "model.pt"
    if weights.is_file():
        shutil.copy(weights, bundle / "models" / "model.pt")
    else:
        import torch
        from monai.bundle import ConfigParser

        print(f"note: {weights} not found, benchmarking with random weights")
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    bundle_zoo = work / "bundle_zoo_inferer"
    shutil.rmtree(bundle_zoo, ignore_errors=True)
    shutil.copytree(bundle, bundle_zoo)
    zoo_config = json.loads((bundle / "configs" / "inference.json").read_text())
    zoo_config.update(MODEL_ZOO_INFERER)
    (bundle_zoo / "configs" / "inference.json").write_text(json.dumps(zoo_config, indent=1))
    stock_configs = work / "stock_configs"
    stock_configs.mkdir(exist_ok=True)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    outputs = metadata["network_data_format"]["outputs"]  # the stock post-processing makes the mask only
    metadata["network_data_format"]["outputs"] = {"pred": outputs["pred"]}
    (stock_configs / "metadata.json").write_text(json.dumps(metadata))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    # The SDK spleen example runs the model-zoo bundle: its inferer settings and its post-processing
    # (softmax -> Invertd of both channels -> argmax; SaveImaged dropped as the stock operator needs).
    config.update(MODEL_ZOO_INFERER)
    config["postprocessing_transforms"] = MODEL_ZOO_POSTPROCESSING
    (stock_configs / "inference.json").write_text(json.dumps(config))
    model_ts = work / "model.ts"
    subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath",
                    str(model_ts), "--ckpt_file", str(bundle / "models" / "model.pt"),
                    "--meta_file", str(stock_configs / "metadata.json"),
                    "--config_file", str(stock_configs / "inference.json")], check=True, cwd=work)
    return bundle, bundle_zoo, model_ts


def app_command(name: str, python: str, study: Path, out: Path, model: Path) -> list[str]:
    """The command a user types: ``python -m deploy_app`` for ours, the stock chain as a script."""
    if name == "stock":
        return [python, str(STOCK_APP), str(study), str(out), str(model)]
    return [python, "-m", "deploy_app", "-i", str(study), "-o", str(out), "-m", str(model)]


def measure_app(command: list[str], cwd: Path) -> dict:
    """Wall time and peak RSS of one whole run (see :func:`spleenseg.measure.run_measured`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # deploy_app and spleenseg from this checkout
    stats = run_measured(command, cwd=cwd, env=env)
    return {"wall_s": stats.wall_s, "peak_rss_mb": stats.peak_rss_mb}


def seg_by_source(path: Path) -> dict[str, np.ndarray]:
    """{source SOP Instance UID: frame mask} of a one-segment SEG (frames may be omitted when empty)."""
    import highdicom as hd
    import pydicom

    ds = pydicom.dcmread(path)
    frames = np.asarray(hd.seg.Segmentation.from_dataset(ds).pixel_array, bool).reshape(
        int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    return {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID): frames[i]
            for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence)}


def study_slices(study: Path) -> list:
    """Header-only datasets of the study's CT slices, ordered along the slice normal."""
    import pydicom

    from spleenseg.dicom.scan import is_localizer

    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(study.rglob("*.dcm"))]
    datasets = [d for d in datasets if not is_localizer(d)]
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(datasets, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))


def seg_volume(seg: Path, slices: list) -> np.ndarray:
    """The SEG's mask as a (slice, row, column) volume in the source slices' order (absent frames empty)."""
    frames = seg_by_source(seg)
    empty = np.zeros((int(slices[0].Rows), int(slices[0].Columns)), bool)
    return np.stack([frames.get(str(d.SOPInstanceUID), empty) for d in slices])


def largest_component(mask: np.ndarray) -> np.ndarray:
    from monai.transforms.utils import get_largest_connected_component_mask

    return np.asarray(get_largest_connected_component_mask(mask)) if mask.any() else mask


def compare_segs(ours: dict[str, Path], stock: Path, study: Path, seed: int = STUDY_SEED) -> dict[str, dict]:
    """Dice of each of our SEGs with the stock SEG, with the stock SEG after our largest-component filter (the
    one post-processing step the SDK example lacks), and with the phantom's true spleen."""
    from spleenseg.phantom import label_on_frame, make_phantom, random_spec

    slices = study_slices(study)
    theirs = seg_volume(stock, slices)
    theirs_lcc = largest_component(theirs)
    phantom = make_phantom(random_spec(seed, shape=(512, 512, len(slices)), phase="portal"))
    truth = np.stack([label_on_frame(phantom, d) > 0 for d in slices])
    stock_vs_truth = dice(theirs, truth)
    comparisons = {}
    for name, seg in ours.items():
        mine = seg_volume(seg, slices)
        comparisons[name] = {
            "dice_ours_vs_stock": dice(mine, theirs),
            "dice_ours_vs_stock_largest_component": dice(mine, theirs_lcc),
            "dice_ours_vs_truth": dice(mine, truth),
            "dice_stock_vs_truth": stock_vs_truth,
        }
    return comparisons


def print_table(results: dict[str, dict]) -> None:
    """Side by side: time, memory, their ratios to the stock chain, and the Dice values of each of our runs."""
    print(f"{'':18}{'wall s':>8}{'peak RSS MB':>13}{'time ratio':>12}{'memory ratio':>14}   runs (s)")
    for name, r in results.items():
        ratios = f"{r['time_ratio']:12.2f}{r['memory_ratio']:14.2f}" if "time_ratio" in r else f"{'1':>12}{'1':>14}"
        print(f"{name:18}{r['wall_s']:8.1f}{r['peak_rss_mb']:13.0f}{ratios}   {r['wall_s_all']}")
    print("(median wall time and largest peak RSS over the runs; ratios: ours / stock; goal <= 0.45 time, "
          "<= 1 memory)")
    print(f"{'Dice':18}{'vs stock':>10}{'vs stock+LCC':>14}{'vs truth':>10}")
    for name, r in results.items():
        if "time_ratio" in r:
            print(f"{name:18}{r['dice_ours_vs_stock']:10.4f}{r['dice_ours_vs_stock_largest_component']:14.4f}"
                  f"{r['dice_ours_vs_truth']:10.4f}")
    print(f"{'stock':18}{1:10.4f}{'':14}{results['ours']['dice_stock_vs_truth']:10.4f}")
    print("(stock+LCC: the stock mask after the largest-component filter our app applies; truth: the phantom's "
          "spleen)")


def main(slices: int = 120, model: str = str(BUNDLE_DIR), work: str = "/tmp/bench_app", repeat: int = 3,
         python: str = sys.executable) -> dict:
    """Run the apps ``repeat`` times each (interleaved) on a 512x512x``slices`` phantom; print and return the
    comparison of the median wall times and the largest peak RSS.

    ``python`` runs both apps (default: this interpreter). Pass the Python of a virtual environment that holds
    only ``deploy_app/requirements.txt`` to measure them as a MAP image runs them (no training packages to
    import: MONAI imports pytorch-ignite eagerly when it is installed, about 1 s of start-up for each app).
    """
    if not Path(python).is_file():
        raise InputError(f"--python {python}: no such interpreter")
    if slices < 10:
        raise InputError(f"--slices must be at least 10 (the app's minimum series length), got {slices}")
    if repeat < 1:
        raise InputError(f"--repeat must be at least 1, got {repeat}")
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    study = make_study(work_dir / f"study_{slices}", slices)
    bundle, bundle_zoo, model_ts = prepare_models(Path(model), work_dir)
    runs = {"ours": bundle, "ours_zoo_inferer": bundle_zoo, "stock": model_ts}
    samples: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in tqdm(range(repeat), desc="benchmark rounds", unit="round"):
        for name, model_path in runs.items():  # interleaved, so drifting machine load hits all alike
            out = work_dir / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            samples[name].append(measure_app(app_command(name, python, study, out, model_path), work_dir))
    results = {name: {"wall_s": float(np.median([r["wall_s"] for r in rs])),
                      "wall_s_all": [round(r["wall_s"], 2) for r in rs],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "seg": str(next((work_dir / f"out_{name}").glob("*.dcm")))}
               for name, rs in samples.items()}
    stock = results["stock"]
    ours = ("ours", "ours_zoo_inferer")
    agreement = compare_segs({name: Path(results[name]["seg"]) for name in ours}, Path(stock["seg"]), study)
    for name in ours:
        results[name].update(time_ratio=results[name]["wall_s"] / stock["wall_s"],
                             memory_ratio=results[name]["peak_rss_mb"] / stock["peak_rss_mb"], **agreement[name])
    summary = {"ours": results["ours"], "ours_zoo_inferer": results["ours_zoo_inferer"], "stock": stock,
               "time_ratio": results["ours"]["time_ratio"], "memory_ratio": results["ours"]["memory_ratio"]}
    print_table(results)
    return summary


if __name__ == "__main__":
    run_fire(main)
