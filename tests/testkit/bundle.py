"""Helpers for the bundle tests: run ``python -m monai.bundle`` for real, on the shared tiny phantom cohort.

Sizes are chosen for CI on 2 cores: 64^3 phantoms (~6 mm voxels) resampled to 6 mm, 32^3 patches, no workers.
Two trainings are shared by the whole session: a 2-epoch run (outputs, resume) and a ~20-epoch run whose model
is good enough to find the phantom spleen (evaluation, inference geometry, left/right, export).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from spleenseg.paths import BUNDLE_DIR, REPO_ROOT, bundle_module

CONFIGS = BUNDLE_DIR / "configs"
#: Overrides that make every bundle command tiny: coarse grid, small patches, no worker processes.
TINY = ["--pixdim", "[6.0,6.0,6.0]", "--roi_size", "[32,32,32]", "--num_workers", "0"]
TRAIN_TINY = TINY + ["--num_samples", "2", "--batch_size", "2", "--cache_rate", "1.0"]


def bundle_scripts(module: str) -> ModuleType:
    """A module of the repository bundle's ``scripts`` package, imported as a package of its own (its modules
    import each other relatively; see :func:`spleenseg.paths.bundle_module`)."""
    return bundle_module(BUNDLE_DIR, module)


def config_arg(*names: str) -> str:
    """The ``--config_file`` value for one or several bundle configs (later files override earlier ones)."""
    files = [str(CONFIGS / f"{n}.json") for n in names]
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"


def run_bundle(args: list[str], timeout: int = 300, check: bool = True, launcher: list[str] | None = None
               ) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` from the repository root; on failure show the output tail."""
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", *args]
    # one thread per process: on a shared 2-core machine OpenMP oversubscription makes torch 5-10x slower
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


@dataclass
class TrainRun:
    """A finished training: its output folder (metrics, curves, checkpoints) and its best-model folder."""

    output_dir: Path
    ckpt_dir: Path
    dataset_dir: Path

    @property
    def model(self) -> Path:
        return self.ckpt_dir / "model.pt"

    def metrics(self) -> list[dict]:
        return json.loads((self.output_dir / "metrics.json").read_text())


def train(dataset_dir: Path, out: Path, epochs: int, *extra: str) -> TrainRun:
    """Train with ``train.json`` on ``dataset_dir`` into ``out`` (best model in ``out/models``)."""
    run = TrainRun(output_dir=out / "train", ckpt_dir=out / "models", dataset_dir=dataset_dir)
    run_bundle(["run", "--config_file", config_arg("train"), "--dataset_dir", str(dataset_dir),
                "--output_dir", str(run.output_dir), "--ckpt_dir", str(run.ckpt_dir), "--epochs", str(epochs),
                *TRAIN_TINY, *extra])
    return run
