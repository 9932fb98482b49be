"""Benchmark (not a test): studies per hour on this machine, and what 10^5 series a day would take.

Three ways through the same K phantom CT studies (512x512xN, the size of clinical abdominal CT):

* the deploy app, one study per fresh ``python -m deploy_app`` process, one after the other (what a DICOM node
  or a workflow engine does: start-up and imports are paid for every study);
* ``batch_inference.json`` under ``torchrun`` with 1 and with 2 processes over the studies' NIfTI files (start-up
  paid once per process; each process gets ``cores / processes`` torch threads);
* DICOM -> NIfTI conversion (``spleenseg-prepare to_nifti``) with 1 and 2 worker processes.

Each run is timed from the outside, start-up included. The table gives studies (series) per hour and the ratio
to the named reference, the app. From the measured rates it prints a capacity plan: how many such CPU machines
would process ``--target`` series in ``--hours``, and how many GPUs at the model-zoo ``spleen_ct_segmentation``
end-to-end time (``--gpu_case_s``, 3.9 s per case on an A100 in its README, torch fp32), all assuming the work
is spread evenly and I/O keeps up.

    python benchmarks/bench_throughput.py [--studies 6] [--slices 120] [--work /tmp/bench_throughput]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from spleenseg.atomic import atomic_dir
from spleenseg.cli import run_fire
from spleenseg.errors import InputError
from spleenseg.measure import run_measured
from spleenseg.paths import BUNDLE_DIR, REPO_ROOT

#: the model-zoo spleen_ct_segmentation README: end2end 3900.73 ms (torch fp32, A100 80G)
MODEL_ZOO_GPU_CASE_S = 3.9


@dataclass
class Rate:
    """One measured way through the cohort."""

    name: str
    items: int
    wall_s: float

    @property
    def per_hour(self) -> float:
        return 3600.0 * self.items / self.wall_s


def machines_needed(per_hour: float, target: int, hours: float) -> int:
    """Whole machines (or GPUs) that each do ``per_hour`` and together do ``target`` in ``hours``."""
    return math.ceil(target / (per_hour * hours))


def make_studies(folder: Path, n: int, slices: int, size: int) -> list[Path]:
    """``n`` distinct phantom CT series, cached in ``folder`` (reused when the parameters match)."""
    from spleenseg.phantom import make_phantom, random_spec, write_dicom_series

    params = {"n": n, "slices": slices, "size": size}
    stamp = folder / "params.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        shutil.rmtree(folder, ignore_errors=True)
        with atomic_dir(folder) as tmp:
            for i in range(n):
                spec = random_spec(2000 + i, shape=(size, size, slices), phase="portal")
                write_dicom_series(make_phantom(spec), tmp / f"study_{i:03d}", patient_id=f"TP{i:03d}")
            (tmp / "params.json").write_text(json.dumps(params))
    return sorted(p for p in folder.iterdir() if p.is_dir())


def env_with(threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def time_conversion(dicom: Path, out: Path, workers: int, n: int) -> Rate:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "spleenseg.commands.prepare_data", "to_nifti", str(dicom), str(out),
           "--workers", str(workers)]
    stats = run_measured(cmd, cwd=REPO_ROOT, env=env_with())
    return Rate(f"to_nifti, {workers} worker{'s' if workers > 1 else ''}", n, stats.wall_s)


def time_app(studies: list[Path], out: Path, model: Path) -> Rate:
    total = 0.0
    for study in studies:
        target = out / study.name
        shutil.rmtree(target, ignore_errors=True)
        cmd = [sys.executable, "-m", "deploy_app", "-i", str(study), "-o", str(target), "-m", str(model)]
        total += run_measured(cmd, cwd=REPO_ROOT, env=env_with()).wall_s
    return Rate("app, one study per process", len(studies), total)


def time_batch(nifti: Path, out: Path, model: Path, processes: int, n: int) -> Rate:
    shutil.rmtree(out, ignore_errors=True)
    configs = "['" + "','".join(str(BUNDLE_DIR / "configs" / f"{c}.json") for c in ("inference", "batch_inference"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "monai.bundle", "run", "--config_file", configs + "']", "--input_dir", str(nifti),
           "--output_dir", str(out), "--ckpt_path", str(model / "models" / "model.pt"), "--case_progress", "false"]
    stats = run_measured(cmd, cwd=REPO_ROOT, env=env_with(max(1, (os.cpu_count() or 1) // processes)))
    done = (out / "manifest.csv").read_text().count(",done,")
    if done != n:
        raise RuntimeError(f"batch with {processes} processes finished {done} of {n} cases")
    return Rate(f"torchrun batch, {processes} process{'es' if processes > 1 else ''}", n, stats.wall_s)


def print_report(inference: list[Rate], conversion: list[Rate], target: int, hours: float, gpu_case_s: float
                 ) -> None:
    reference = inference[0]
    print(f"\n| inference | studies | wall s | studies / hour | vs {reference.name} |")
    print("|---|---:|---:|---:|---:|")
    for r in inference:
        print(f"| {r.name} | {r.items} | {r.wall_s:.1f} | {r.per_hour:.0f} | {r.per_hour / reference.per_hour:.2f} |")
    print(f"\n| conversion | series | wall s | series / hour | vs {conversion[0].name} |")
    print("|---|---:|---:|---:|---:|")
    for r in conversion:
        ratio = r.per_hour / conversion[0].per_hour
        print(f"| {r.name} | {r.items} | {r.wall_s:.1f} | {r.per_hour:.0f} | {ratio:.2f} |")
    cores = os.cpu_count() or 1
    print(f"\nCapacity plan for {target:,} series in {hours:g} h ({target / hours:,.0f} per hour), "
          f"machines like this one ({cores} cores):")
    for r in inference + conversion:
        n = machines_needed(r.per_hour, target, hours)
        print(f"  {r.name}: {n:,} machine{'s' if n != 1 else ''}")
    gpu_rate = 3600.0 / gpu_case_s
    print(f"  GPUs at the model-zoo end-to-end speed ({gpu_case_s:g} s per case, {gpu_rate:.0f} per hour): "
          f"{machines_needed(gpu_rate, target, hours):,} GPUs (conversion stays on CPU)")


def main(studies: int = 6, slices: int = 120, size: int = 512, work: str = "/tmp/bench_throughput",
         model: str = str(BUNDLE_DIR), target: int = 100_000, hours: float = 24.0,
         gpu_case_s: float = MODEL_ZOO_GPU_CASE_S) -> None:
    """Build or reuse the studies, time the three ways through them, print the table and the capacity plan."""
    model_dir = Path(model)
    if not (model_dir / "models" / "model.pt").is_file():
        raise InputError(f"{model_dir / 'models' / 'model.pt'}: checkpoint not found (--model BUNDLE)")
    work_dir = Path(work)
    print(f"{studies} phantom studies of {size}x{size}x{slices} in {work_dir / 'dicom'}", flush=True)
    dicom_studies = make_studies(work_dir / "dicom", studies, slices, size)
    conversion = [time_conversion(work_dir / "dicom", work_dir / f"nifti_w{w}", w, studies) for w in (1, 2)]
    nifti = work_dir / "nifti_flat"  # the batch reads one folder of files
    shutil.rmtree(nifti, ignore_errors=True)
    nifti.mkdir(parents=True)
    for i, path in enumerate(sorted((work_dir / "nifti_w1").rglob("*.nii.gz"))):
        shutil.copy(path, nifti / f"case_{i:03d}.nii.gz")
    if len(list(nifti.iterdir())) != studies:
        raise RuntimeError(f"expected {studies} NIfTI files from to_nifti, found {len(list(nifti.iterdir()))}")
    print("timing the app ...", flush=True)
    inference = [time_app(dicom_studies, work_dir / "app", model_dir)]
    for processes in (1, 2):
        print(f"timing torchrun with {processes} process(es) ...", flush=True)
        inference.append(time_batch(nifti, work_dir / f"batch_{processes}", model_dir, processes, studies))
    print_report(inference, conversion, target, hours, gpu_case_s)


if __name__ == "__main__":
    run_fire(main, name="bench_throughput.py")
