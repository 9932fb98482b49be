"""Training through ``python -m monai.bundle run``: outputs, resume at the exact epoch, multi-process (gloo)."""

from __future__ import annotations

import json
import shutil
import os
import re
import stat
import sys
from pathlib import Path

import torch
from PIL import Image

from spleenseg.paths import BUNDLE_DIR
from testkit.bundle import TRAIN_TINY, TrainRun, bundle_scripts, config_arg, run_bundle

_training = bundle_scripts("training")


def _epoch_checkpoint(run: TrainRun, epoch: int) -> dict:
    return torch.load(run.output_dir / "checkpoints" / f"checkpoint_epoch={epoch}.pt", weights_only=True)


def test_train_writes_model_metrics_and_curves(short_run: TrainRun) -> None:
    assert short_run.model.is_file()
    state = torch.load(short_run.model, weights_only=True)
    assert "model.0.conv.unit0.conv.weight" in state  # a plain UNet state_dict, what ckpt_export expects
    rows = short_run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 < row["train_loss"] < 2.0
        assert 0.0 <= row["val_mean_dice"] <= 1.0
        assert row["lr"] > 0
    csv_lines = (short_run.output_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:2] == ["epoch", "train_loss"] and "val_mean_dice" in csv_lines[0]
    assert len(csv_lines) == 3
    png = short_run.output_dir / "learning_curves.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 600
    assert list((short_run.output_dir / "tensorboard").glob("events.out.tfevents.*"))
    # the handlers' write-then-rename keeps the umask's mode (mkstemp alone would leave 0600)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("metrics.csv", "metrics.json", "learning_curves.png"):
        assert stat.S_IMODE((short_run.output_dir / name).stat().st_mode) == 0o666 & ~mask, name


def test_resume_continues_at_epoch_3_with_optimizer_state(short_run: TrainRun, tmp_path: Path) -> None:
    run = TrainRun(output_dir=tmp_path / "train", ckpt_dir=tmp_path / "models", dataset_dir=short_run.dataset_dir)
    shutil.copytree(short_run.output_dir, run.output_dir)
    shutil.copytree(short_run.ckpt_dir, run.ckpt_dir)
    before = _epoch_checkpoint(run, 2)
    steps_per_epoch = before["trainer"]["epoch_length"]
    assert before["trainer"]["iteration"] == 2 * steps_per_epoch

    resume = ["run", "--config_file", config_arg("train"), "--dataset_dir", str(run.dataset_dir),
              "--output_dir", str(run.output_dir), "--ckpt_dir", str(run.ckpt_dir), "--epochs", "3",
              "--val_interval", "1", "--resume", "true", *TRAIN_TINY]
    proc = run_bundle(resume)

    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:2] == short_run.metrics()  # history kept, not restarted
    after = _epoch_checkpoint(run, 3)
    assert after["trainer"]["iteration"] == 3 * steps_per_epoch
    # Adam's step counter continues from the restored state: a fresh optimizer would be at 1 epoch of steps
    step_before = before["optimizer"]["state"][0]["step"].item()
    step_after = after["optimizer"]["state"][0]["step"].item()
    assert step_before == 2 * steps_per_epoch and step_after == 3 * steps_per_epoch
    assert after["lr_scheduler"]["last_epoch"] == 3
    # the best-model tracker survived: its saved entry is still there (not forgotten and re-started)
    assert after["best_model_saver"]["_saved"]
    # the log's best is the best of all three epochs, not of the resumed one alone
    dices = [r["val_mean_dice"] for r in rows]
    best_epoch = 1 + dices.index(max(dices))
    logged = re.findall(r"best value: ([0-9.]+) at epoch: (\d+)", proc.stdout + proc.stderr)
    assert logged and abs(float(logged[-1][0]) - max(dices)) < 1e-4 and int(logged[-1][1]) == best_epoch, logged
    # the resumed run's saver pruned the checkpoint it resumed from: one full-state file is kept
    assert sorted(p.name for p in (run.output_dir / "checkpoints").glob("*.pt")) == ["checkpoint_epoch=3.pt"]

    again = run_bundle(resume)  # already at --epochs 3: nothing to train, and it says how to go on
    assert "nothing to train; pass --epochs N with N > 3" in again.stdout + again.stderr
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]


def test_saver_state_without_saver_is_a_no_op() -> None:
    """Ranks other than 0 have no best-model saver (disabled in train.json): resuming there must not fail."""
    state = _training.SaverState(None)
    assert state.state_dict() == {}
    state.load_state_dict({"_saved": [(0.9, "model.pt")]})  # what rank 0 saved; nothing to restore it into


def test_saver_state_restores_the_best_score_so_a_worse_model_never_overwrites_model_pt(tmp_path: Path) -> None:
    """The state comes from the evaluator's public best metric and goes back through the saver's public
    ``load_state_dict``: after a resume a worse validation leaves ``model.pt`` alone, a better one replaces it."""
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver

    net = torch.nn.Linear(2, 1)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.9, 2
    state = _training.SaverState(object(), evaluator).state_dict()
    assert state == {"evaluator_best": [0.9, 2], "_saved": [(0.9, "model.pt")]}

    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                            key_metric_filename="model.pt")
    fresh = Engine(lambda engine, batch: None)
    _training.SaverState(saver, fresh).load_state_dict(state)
    assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == (0.9, 2)
    model = tmp_path / "model.pt"
    model.write_bytes(b"best so far")

    def validate(score: float, epoch: int) -> None:
        fresh.state.metrics, fresh.state.key_metric_name = {"val_mean_dice": score}, "val_mean_dice"
        fresh.state.epoch = fresh.state.iteration = epoch
        saver.metrics_completed(fresh)

    validate(0.5, 3)
    assert model.read_bytes() == b"best so far"
    validate(0.95, 4)
    assert set(torch.load(model, weights_only=True)) == {"weight", "bias"}


def test_resume_without_checkpoint_is_an_error(tiny_cohort: Path, tmp_path: Path) -> None:
    proc = run_bundle(["run", "--config_file", config_arg("train"), "--dataset_dir", str(tiny_cohort),
                       "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(tmp_path / "models"),
                       "--epochs", "1", "--resume", "true", *TRAIN_TINY], check=False)
    assert proc.returncode != 0
    assert "no checkpoint_epoch=N.pt to resume from" in proc.stdout + proc.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


def test_torchrun_two_processes_one_epoch_on_cpu(tiny_cohort: Path, tmp_path: Path) -> None:
    """Also the documented command's default: the best model lands in OUTPUT_DIR/models, never over the
    shipped ``bundle/models/model.pt``."""
    out = tmp_path / "train"
    models = out / "models"
    shipped = BUNDLE_DIR / "models" / "model.pt"
    before = shipped.read_bytes() if shipped.is_file() else None
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    run_bundle(["run", "--config_file", config_arg("train", "multi_gpu_train"), "--dataset_dir", str(tiny_cohort),
                "--output_dir", str(out), "--epochs", "1", "--val_interval", "1",
                *TRAIN_TINY], launcher=torchrun, timeout=300)
    assert (shipped.read_bytes() if shipped.is_file() else None) == before
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1] and 0.0 <= rows[0]["val_mean_dice"] <= 1.0
    state = torch.load(models / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped, loadable without DDP
    assert len(list((out / "tensorboard").glob("events.*"))) == 2  # rank 0 only (trainer + validator)
