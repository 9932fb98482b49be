"""Benchmark: this deploy app vs a chain of the stock MONAI Deploy SDK operators, same weights, same study.

The stock chain is the SDK's spleen example without STL (DICOMDataLoader -> DICOMSeriesSelector ->
DICOMSeriesToVolume -> MonaiBundleInference on a TorchScript bundle -> DICOMSegmentationWriter). Each app runs
in a fresh process (so memory is not shared and imports are counted); the script prints wall time, peak RSS,
their ratios (ours / stock; goal <= 0.5x time, <= 1x memory) and the Dice between the two SEGs, compared slice
by slice through the source SOP Instance UIDs each frame references.

    python scripts/bench_app.py --slices 120 [--model bundle] [--work /tmp/bench_app]

Without a trained ``bundle/models/model.pt`` the weights are random (timings are still comparable).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from spleenseg.cli import run_fire
from spleenseg.errors import InputError
from spleenseg.paths import BUNDLE_DIR

STOCK_APP = textwrap.dedent('''
    import json, resource, sys, time
    from pathlib import Path
    t0 = time.perf_counter()
    from pydicom.sr.codedict import codes
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import AppContext, Application, Image
    from monai.deploy.core.io_type import IOType
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
    from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
    from monai.deploy.operators.monai_bundle_inference_operator import (
        BundleConfigNames, IOMapping, MonaiBundleInferenceOperator)
    inp, out, model = (Path(a) for a in sys.argv[1:4])
    RULES = '{"selections": [{"name": "CT Series", "conditions": {"StudyDescription": "(.*?)", "Modality": "(?i)CT", "SeriesDescription": "(.*?)"}}]}'
    class StockApp(Application):
        def compose(self):
            ctx = AppContext({"input": str(inp), "output": str(out), "model": str(model)})
            loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=inp, name="loader")
            selector = DICOMSeriesSelectorOperator(self, rules=RULES, name="selector")
            to_vol = DICOMSeriesToVolumeOperator(self, name="to_vol")
            infer = MonaiBundleInferenceOperator(
                self, input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
                output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)], app_context=ctx,
                bundle_config_names=BundleConfigNames(config_names=["inference"]), name="infer")
            desc = [SegmentDescription(segment_label="Spleen", segmented_property_category=codes.SCT.Organ,
                                       segmented_property_type=codes.SCT.Spleen, algorithm_name="spleen",
                                       algorithm_family=codes.DCM.ArtificialIntelligence, algorithm_version="0")]
            writer = DICOMSegmentationWriterOperator(self, segment_descriptions=desc, output_folder=out,
                                                     custom_tags={"SeriesDescription": "AI SEG"}, name="writer")
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, to_vol, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(to_vol, infer, {("image", "image")})
            self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(infer, writer, {("pred", "seg_image")})
    StockApp(["stock"]).run()
    print("BENCH " + json.dumps({"wall_s": time.perf_counter() - t0,
                                 "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
''')

OUR_APP = textwrap.dedent('''
    import json, resource, sys, time
    t0 = time.perf_counter()
    import deploy_app
    deploy_app.run(sys.argv[1], sys.argv[2], sys.argv[3])
    print("BENCH " + json.dumps({"wall_s": time.perf_counter() - t0,
                                 "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
''')


def make_study(folder: Path, slices: int, seed: int = 3) -> Path:
    """A 512x512xN phantom CT series (the size clinical abdominal CT has)."""
    from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

    if not folder.is_dir():
        write_dicom_series(make_phantom(random_spec(seed, shape=(512, 512, slices), phase="portal")), folder)
    return folder


#: Model-zoo ``spleen_ct_segmentation`` inference settings (as used by the SDK's spleen example).
MODEL_ZOO_INFERER = {"roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5, "sw_mode": "constant"}
MODEL_ZOO_POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
     "nearest_interp": False, "to_tensor": True},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]


def prepare_models(model: Path, work: Path) -> tuple[Path, Path]:
    """Our app takes the bundle folder; the stock chain needs a TorchScript bundle (``ckpt_export``) whose
    config has no SaveImaged (the stock operator evaluates its arguments, which in our bundle need ``scripts``)."""
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(model / "configs", bundle / "configs")
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
    stock_configs = work / "stock_configs"
    stock_configs.mkdir(exist_ok=True)
    shutil.copy(bundle / "configs" / "metadata.json", stock_configs)
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
    return bundle, model_ts


def run_measured(code: str, args: list[Path], cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def seg_by_source(path: Path) -> dict[str, np.ndarray]:
    """{source SOP Instance UID: frame mask} of a one-segment SEG (frames may be omitted when empty)."""
    import highdicom as hd
    import pydicom

    ds = pydicom.dcmread(path)
    frames = np.asarray(hd.seg.Segmentation.from_dataset(ds).pixel_array, bool).reshape(
        int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    return {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID): frames[i]
            for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence)}


def seg_dice(a: Path, b: Path) -> float:
    ma, mb = seg_by_source(a), seg_by_source(b)
    shape = next(iter({**ma, **mb}.values())).shape
    inter = total = 0
    for uid in set(ma) | set(mb):
        x, y = ma.get(uid, np.zeros(shape, bool)), mb.get(uid, np.zeros(shape, bool))
        inter += int((x & y).sum())
        total += int(x.sum() + y.sum())
    return 2.0 * inter / total if total else 1.0


def main(slices: int = 120, model: str = str(BUNDLE_DIR), work: str = "/tmp/bench_app") -> dict:
    """Run both apps on a 512x512x``slices`` phantom; print and return the comparison."""
    if slices < 10:
        raise InputError(f"--slices must be at least 10 (the app's minimum series length), got {slices}")
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    study = make_study(work_dir / f"study_{slices}", slices)
    bundle, model_ts = prepare_models(Path(model), work_dir)
    results = {}
    for name, code, model_path in (("ours", OUR_APP, bundle), ("stock", STOCK_APP, model_ts)):
        out = work_dir / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        results[name] = run_measured(code, [study, out, model_path], work_dir)
        results[name]["seg"] = str(next(out.glob("*.dcm")))
    ours, stock = results["ours"], results["stock"]
    summary = {
        "ours": ours, "stock": stock,
        "time_ratio": ours["wall_s"] / stock["wall_s"], "memory_ratio": ours["peak_rss_mb"] / stock["peak_rss_mb"],
        "dice_between_segs": seg_dice(Path(ours["seg"]), Path(stock["seg"])),
    }
    print(f"{'':8}{'wall s':>10}{'peak RSS MB':>14}")
    for name in ("ours", "stock"):
        print(f"{name:8}{results[name]['wall_s']:10.1f}{results[name]['peak_rss_mb']:14.0f}")
    print(f"ratio   {summary['time_ratio']:10.2f}{summary['memory_ratio']:14.2f}   (ours / stock)")
    print(f"Dice between the two SEGs: {summary['dice_between_segs']:.4f}")
    return summary


if __name__ == "__main__":
    run_fire(main)
