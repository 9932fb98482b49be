#!/usr/bin/env python
"""Benchmark: NIfTI inference of this bundle vs the stock model-zoo inference settings, same weights.

On a 512x512x120 phantom (spleenseg.phantom), run ``bundle/configs/inference.json`` twice in fresh processes:

* ``bundle``: this bundle's defaults (ROI 96, overlap 0.25, Gaussian blending, largest component);
* ``stock``:  the model-zoo ``spleen_ct_segmentation`` settings (ROI 96, overlap 0.5, sw_batch_size 4,
  constant blending, no component filter).

Prints wall time, peak RSS (resident memory of the inference process) and the Dice between the two masks,
side by side with the ratio bundle/stock. Example::

    python benchmarks/bench_infer.py --ckpt bundle/models/model.pt --out_dir runs/bench_infer
    # a model trained at another grid: pass the same overrides to both runs
    python benchmarks/bench_infer.py --ckpt runs/demo/models/model.pt --pixdim "[5.0,5.0,5.0]" --roi_size "[48,48,48]"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from spleenseg.cli import run_fire
from spleenseg.errors import InputError
from spleenseg.measure import run_measured
from spleenseg.paths import BUNDLE_DIR, REPO_ROOT
from spleenseg.report.visualize import check_overrides

# the model-zoo settings that differ from this bundle's (its ROI, 96^3, is the same; a --roi_size override
# applies to both)
STOCK = {"overlap": 0.5, "sw_batch_size": 4, "sw_mode": "constant", "largest_cc": False}


def _override_args(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        plain = list(value) if isinstance(value, tuple) else value
        text = str(value).lower() if isinstance(value, bool) else str(plain)
        args += [f"--{key}", text.replace(" ", "")]
    return args


def _run(image: Path, out_dir: Path, ckpt: Path, overrides: dict[str, Any]) -> tuple[float, float, Path]:
    """One inference in a fresh process; returns (wall seconds, peak RSS MiB, mask path)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE_DIR / "configs" / "inference.json"),
           "--bundle_root", str(BUNDLE_DIR), "--input_file", str(image), "--output_dir", str(out_dir),
           "--ckpt_path", str(ckpt), *_override_args(overrides)]
    try:
        stats = run_measured(cmd, cwd=REPO_ROOT)
    except RuntimeError as exc:
        raise InputError(f"inference failed ({exc})") from exc
    mask = out_dir / (image.name.split(".nii")[0] + "_seg.nii.gz")
    return stats.wall_s, stats.peak_rss_mb, mask


def _phantom(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    from spleenseg.phantom import make_phantom, random_spec, write_nifti

    if not path.is_file():
        write_nifti(make_phantom(random_spec(seed, shape=shape, phase="portal")), path)
    return path


def bench(
    ckpt: str = str(BUNDLE_DIR / "models" / "model.pt"), out_dir: str = "runs/bench_infer",
    shape: tuple[int, int, int] = (512, 512, 120), seed: int = 0, **overrides: Any,
) -> dict[str, dict[str, float]]:
    """Run both settings on one phantom and print the comparison; ``overrides`` apply to both runs and must be
    keys of ``inference.json`` (checked before the minute-long runs start; ``--help`` prints this text)."""
    if "help" in overrides:
        print(__doc__)
        return {}
    check_overrides(BUNDLE_DIR, overrides, command="bench_infer.py")
    ckpt_p, out = Path(ckpt), Path(out_dir)
    if not ckpt_p.is_file():
        raise InputError(f"{ckpt_p}: checkpoint does not exist (train first, or pass --ckpt)")
    out.mkdir(parents=True, exist_ok=True)
    image = _phantom(out / f"phantom_{'x'.join(map(str, shape))}_seed{seed}.nii.gz", tuple(shape), seed)
    results: dict[str, dict[str, float]] = {}
    masks = {}
    for name, settings in (("bundle", dict(overrides)), ("stock", {**overrides, **STOCK})):
        wall, rss, mask = _run(image, out / name, ckpt_p, settings)
        results[name] = {"wall_s": wall, "peak_rss_mib": rss}
        masks[name] = np.asarray(nib.load(mask).dataobj) > 0
    a, b = masks["bundle"], masks["stock"]
    dice = float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))
    print(f"phantom {image.name}: {nib.load(image).shape}, zooms {nib.load(image).header.get_zooms()}")
    print(f"{'':14}{'bundle':>12}{'stock':>12}{'bundle/stock':>15}")
    for key in ("wall_s", "peak_rss_mib"):
        x, y = results["bundle"][key], results["stock"][key]
        print(f"{key:14}{x:12.1f}{y:12.1f}{x / y:15.2f}")
    print(f"Dice(bundle mask, stock mask) = {dice:.4f}; voxels bundle {int(a.sum())}, stock {int(b.sum())}")
    results["agreement"] = {"dice": dice}
    return results


if __name__ == "__main__":
    run_fire(bench)
