"""``make demo``: the project's main job on an embedded default, end to end, printing where everything went.

Default (shipped weights, no training):

1. the shipped real CT study (``examples/ts_abdomen_ct_dicom_j2k``, JPEG 2000) → deploy app → DICOM SEG,
   spleen report, NIfTI mask; prints the spleen volume;
2. a synthetic phantom study (two series, a scout and a secondary capture beside the CT) → deploy app → SEG.

With ``--train`` (``make demo TRAIN=1``) the researcher's loop runs as well, on phantoms, with its own weights
(the shipped ``bundle/models/model.pt`` is never overwritten): phantom cohort → train → evaluate in the original
label space → inference → pictures.

Every stage runs the same command a user would type (printed before it runs) and writes into its own
sub-folder of ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from deploy_app.qa import qa_summary
from deploy_app.runner import EXIT_NO_RESULT
from spleenseg.atomic import atomic_dir
from spleenseg.errors import InputError
from spleenseg.paths import BUNDLE_DIR, REPO_ROOT
from spleenseg.phantom import make_cohort, make_phantom, random_spec, write_dicom_study

EXAMPLE_STUDY = REPO_ROOT / "examples" / "ts_abdomen_ct_dicom_j2k"
#: Phantom-training recipe that fits a CPU (measured: mean Dice 0.907-0.918 on 4 held-out phantoms after 60 epochs,
#: about 7.5 s per epoch on 2 idle cores). pixdim/roi_size are part of the model: every later step repeats them.
DEMO_MODEL_OVERRIDES = ["--pixdim", "[4.0,4.0,4.0]", "--roi_size", "[48,48,48]"]
DEMO_TRAIN_OVERRIDES = ["--epochs", "60", "--val_interval", "10", "--num_workers", "0", "--num_samples", "4",
                        "--batch_size", "2", "--learning_rate", "0.002", "--lr_min_factor", "0.05",
                        "--loss#_target_", "DiceCELoss", *DEMO_MODEL_OVERRIDES]


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _run(cmd: list[str], ok: tuple[int, ...] = (0,)) -> None:
    """Run one user-level command from the repository root, echoing it first; fail loudly on an exit status
    not in ``ok``."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO_ROOT)
    if done.returncode not in ok:
        raise InputError(f"demo stage failed (exit {done.returncode}): {' '.join(cmd)}")


def _bundle(*configs: str) -> list[str]:
    files = [str(BUNDLE_DIR / "configs" / c) for c in configs]
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(BUNDLE_DIR)]


def _summarise_report(out_dir: Path) -> None:
    """Per series: volume, length, slices, the QA verdict and raised flags (and when no SEG was written), then
    every file written; what a user checks first after a run."""
    report = json.loads((out_dir / "spleen_report.json").read_text())
    for series in report.get("series", []):
        qa = qa_summary(series.get("qa"))
        print(f"  series {series.get('series_instance_uid', '?')}: spleen "
              f"{series.get('spleen_volume_ml', float('nan')):.1f} mL, "
              f"craniocaudal {series.get('craniocaudal_length_mm', float('nan')):.0f} mm, "
              f"on {series.get('slices_with_spleen', '?')} slices"
              + ("" if series.get("seg_file") else "; no SEG written"))
        print(f"    QA: {qa['verdict'] or 'none'}; flags raised: {', '.join(qa['flags']) or 'none'}")
    for path in sorted(out_dir.iterdir()):
        print(f"  {path}")


def segment_dicom(dicom_dir: Path, out_dir: Path, model: Path, *extra: str) -> None:
    """DICOM in → SEG out with the deploy app (the clinical path)."""
    if out_dir.exists():  # the demo's own output from an earlier run
        shutil.rmtree(out_dir)
    _run([sys.executable, "-m", "deploy_app", "-i", str(dicom_dir), "-o", str(out_dir), "-m", str(model),
          "--nifti", *extra], ok=(0, EXIT_NO_RESULT))  # no spleen found: the summary says so
    _summarise_report(out_dir)


def phantom_study(out: Path, seed: int) -> tuple[Path, float]:
    """A small DICOM study (the CT, a scout and a secondary capture); returns it and the true spleen volume (mL)."""
    target = out / f"phantom_dicom_seed{seed}"  # reused by a later run only when it is the same phantom
    ph = make_phantom(random_spec(seed, shape=(160, 160, 80)))
    true_ml = float(ph.label.sum() * abs(np.linalg.det(ph.affine[:3, :3])) / 1000.0)
    if not target.is_dir():
        with atomic_dir(target) as tmp:
            write_dicom_study(ph, tmp, seg=False, junk=True)
    return target, true_ml


def phantom_cohort(out: Path, n_cases: int, seed: int) -> Path:
    """An MSD-style phantom cohort (imagesTr/labelsTr/imagesTs/dataset.json)."""
    target = out / f"phantoms_seed{seed}_n{n_cases}"  # reused by a later run only when it is the same cohort
    if not (target / "dataset.json").is_file():
        make_cohort(target, n_cases=n_cases, seed=seed, fmt="nifti", size=(64, 96), n_test=4)
    return target


def train_loop(out: Path, n_cases: int, seed: int) -> None:
    """The researcher's loop on phantoms: train → evaluate → infer → pictures, with the demo's own weights."""
    _banner(f"train: phantom cohort ({n_cases} cases, seed {seed})")
    cohort = phantom_cohort(out, n_cases, seed)
    train_dir, models = out / "train", out / "train" / "models"
    _banner("train: 3D U-Net on CPU (MONAI bundle, train.json)")
    _run(_bundle("train.json") + ["--dataset_dir", str(cohort), "--output_dir", str(train_dir),
                                  "--ckpt_dir", str(models), "--seed", str(seed), *DEMO_TRAIN_OVERRIDES])
    ckpt = models / "model.pt"
    _banner("evaluate in the original label space (evaluate.json)")
    _run(_bundle("train.json", "evaluate.json") + ["--dataset_dir", str(cohort), "--output_dir", str(out / "eval"),
                                                   "--ckpt_dir", str(models), "--eval_split", "test",
                                                   "--largest_cc", "true", *DEMO_MODEL_OVERRIDES])
    _banner("inference on the held-out test images (inference.json)")
    _run(_bundle("inference.json") + ["--input_dir", str(cohort / "imagesTs"), "--output_dir", str(out / "infer"),
                                      "--ckpt_path", str(ckpt), *DEMO_MODEL_OVERRIDES])
    _banner("pictures: slice panels, GIF, learning curves")
    _run([sys.executable, "-m", "spleenseg.commands.visualize", "--dataset_dir", str(cohort),
          "--out_dir", str(out / "figures"), "--ckpt", str(ckpt), "--split", "test", "--n_cases", "2",
          "--metrics", str(train_dir / "metrics.json"), *DEMO_MODEL_OVERRIDES])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--train", action="store_true", help="also train/evaluate/visualise a model on phantoms")
    parser.add_argument("--cases", type=int, default=24, help="phantom cases for --train")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", type=Path, default=BUNDLE_DIR, help="bundle folder or TorchScript model")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        if not (args.model / "models" / "model.pt").is_file() and not args.model.is_file():
            raise InputError(f"{args.model}: no shipped weights (models/model.pt); run `make demo TRAIN=1`")
        _banner(f"1. real CT study {EXAMPLE_STUDY.relative_to(REPO_ROOT)} -> DICOM SEG (shipped model)")
        # The example export has blank Study/Series UIDs: the app refuses them unless told to derive them.
        segment_dicom(EXAMPLE_STUDY, out / "real_ct_seg", args.model, "--generate-missing-uids")
        _banner("2. phantom study (CT + scout + secondary capture) -> DICOM SEG")
        study, true_ml = phantom_study(out, args.seed)
        segment_dicom(study, out / "phantom_seg", args.model)
        print(f"  phantom's true spleen volume (by construction): {true_ml:.1f} mL")
        if args.train:
            train_loop(out, args.cases, args.seed)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _banner(f"done in {time.time() - start:.0f} s; everything is under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
