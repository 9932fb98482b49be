"""Leave-one-real-case-out validation of the shipped recipe (``train.json`` + ``train_real.json``).

Each labelled real patient is held out in turn; the other real cases plus the realistic phantoms train, and the
checkpoint is chosen on the fold's validation set (never on the held-out case). The held-out case is then scored
in its original label grid with ``evaluate.json`` (the bundle's own post-processing, spleen selection included).
The two DTU slabs are one patient, so they are held out together. The TotalSegmentator crop and the J2K example
series are one patient too: the J2K series is never trained on.

Every step is the command a user would type (printed before it runs), so a fold can be rerun by hand::

    spleenseg-validate-model run --out runs/loo                 # all folds (about 1 h of CPU each)
    spleenseg-validate-model run --out runs/loo --folds msd_spleen_8
    spleenseg-validate-model summary --out runs/loo             # per-case table of finished folds

Self-training (pseudo-labels, ``spleenseg.dataset.pseudo``): ``--pseudo_model M`` adds the QA-checked
pseudo-labelled unlabelled real CT to one fold's training list, labelled by M, which must be that fold's own
first-stage model (it must not have trained on the held-out case). The shipped model is the TotalSegmentator
fold's first stage::

    spleenseg-validate-model run --out runs/pl --folds ts_abdomen_crop --pseudo_model bundle/models/model.pt
"""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
import time
from pathlib import Path

from spleenseg.cli import run_fire
from spleenseg.errors import InputError
from spleenseg.paths import BUNDLE_DIR, REPO_ROOT

#: fold name -> (held-out real cases, real validation cases; "none" = phantoms only)
FOLDS: dict[str, tuple[str, str]] = {
    "ts_abdomen_crop": ("ts_abdomen_crop", "dtu_slab_b"),
    "msd_spleen_8": ("msd_spleen_8", "dtu_slab_b"),
    "dtu_slab": ("dtu_slab_a,dtu_slab_b", "none"),
}
#: without a real validation case the checkpoint is chosen on the phantoms' validation list alone (an empty real
#: list would otherwise be split off the real training cases)
PHANTOM_VALIDATION = "$scripts.datalist.load_datalist(@phantom_dir, 'validation')"
TRAIN = [str(BUNDLE_DIR / "configs" / f) for f in ("train.json", "train_real.json")]
EVALUATE = str(BUNDLE_DIR / "configs" / "evaluate.json")
ORGANS = str(BUNDLE_DIR / "configs" / "train_organs.json")
COLUMNS = ("val_mean_dice", "val_hd95_mm", "val_pred_volume_ml", "val_ref_volume_ml")


def _configs(files: list[str]) -> str:
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def _show(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def _run(cmd: list[str]) -> None:
    print("$ " + _show(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
        raise InputError(f"command failed: {' '.join(cmd[:6])} ...")


def _run_parallel(commands: list[tuple[list[str], Path]], jobs: int) -> None:
    """Run ``(command, log file)`` pairs, ``jobs`` at a time, each logging to its own file.

    Why: on a GPU machine one fold's training leaves most of the card and the CPU cores idle, so the folds
    train side by side; their interleaved progress bars would be unreadable, hence one log per command.
    """
    pending, running, failed = list(commands), [], []
    while pending or running:
        while pending and len(running) < jobs:
            cmd, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"$ {_show(cmd)} > {log}", flush=True)
            with log.open("w") as f:
                running.append((subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT), log))
        time.sleep(1)
        for proc, log in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, log))
            if proc.returncode != 0:
                failed.append(str(log))
    if failed:
        raise InputError(f"command failed, see {', '.join(failed)}")


def run(out: str = "runs/loo", folds: str | list[str] | None = None, phantoms: int = 34, seed: int = 0,
        epochs: int | None = None, organs: bool = False, pseudo_model: str | None = None,
        bundle_args: str = "", jobs: int = 1, overlay: str | list[str] = "") -> str:
    """Prepare, train and score each fold under OUT/<fold>/ (finished steps are skipped on a rerun).

    ``organs``: the experimental multi-organ recipe (``train_organs.json`` layered last, multi-organ labels).
    ``pseudo_model``: add pseudo-labels made by this checkpoint (one fold only: its own first-stage model).
    ``bundle_args``: more bundle overrides for training and scoring alike, e.g. ``"--a_min -150 --a_max 250"``
    (a window is part of the model, so scoring needs it too).
    ``jobs``: folds trained at the same time (a GPU machine); each training then logs to OUT/<fold>/train.log.
    ``overlay``: more config files layered after ``train_real.json`` for training and scoring alike, e.g.
    ``bundle/configs/train_realaug.json`` (comma-separated for several).
    """
    overlays = [o for item in ([overlay] if isinstance(overlay, str) else overlay) for o in str(item).split(",") if o]
    missing = [o for o in overlays if not Path(o).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such config file (--overlay)")
    train_cfg = TRAIN + [str(Path(o).resolve()) for o in overlays] + ([ORGANS] if organs else [])
    eval_cfg = train_cfg + [EVALUATE]
    label_args = ["--organs", "true"] if organs else []
    root = Path(out)
    names = list(FOLDS) if folds is None else ([folds] if isinstance(folds, str) else list(folds))
    names = [n for item in names for n in str(item).split(",") if n]
    unknown = [n for n in names if n not in FOLDS]
    if unknown:
        raise InputError(f"unknown fold(s) {unknown}; choose from {list(FOLDS)}")
    if pseudo_model and len(names) != 1:
        raise InputError("--pseudo_model labels for one fold: pass --folds with the fold it was trained for")
    extra = shlex.split(bundle_args)
    py = sys.executable
    prepare = [py, "-m", "spleenseg.commands.prepare_data"]
    if not (root / "phantoms" / "dataset.json").is_file():
        _run([*prepare, "real_cases", str(root / "_phantoms"), "--phantoms", str(phantoms),
              "--seed", str(seed), *label_args])
        (root / "_phantoms" / "phantoms").rename(root / "phantoms")
    trainings = []
    for name in names:
        held_out, validation = FOLDS[name]
        fold = root / name
        if not (fold / "real" / "dataset.json").is_file():
            _run([*prepare, "real_cases", str(fold), "--phantoms", "0",
                  "--held-out", held_out, "--validation", validation, *label_args])
            if pseudo_model:
                _run([*prepare, "pseudo_labels", str(fold / "real"), "--ckpt", pseudo_model,
                      *([f"--bundle_args={bundle_args}"] if bundle_args else [])])
        if not (fold / "train" / "models" / "model.pt").is_file():
            trainings.append(([py, "-m", "monai.bundle", "run", "--config_file", _configs(train_cfg), "--dataset_dir",
                               str(fold / "real"), "--phantom_dir", str(root / "phantoms"), "--output_dir",
                               str(fold / "train"),
                               *(["--val_datalist", PHANTOM_VALIDATION] if validation == "none" else []),
                               *(["--epochs", str(epochs)] if epochs else []), *extra], fold / "train.log"))
    if jobs > 1:
        _run_parallel(trainings, jobs)
    else:
        for cmd, _ in trainings:
            _run(cmd)
    for name in names:
        fold = root / name
        if not (fold / "eval" / "metrics_per_case.csv").is_file():
            _run([py, "-m", "monai.bundle", "run", "--config_file", _configs(eval_cfg), "--eval_split", "test",
                  "--dataset_dir", str(fold / "real"), "--phantom_dir", str(root / "phantoms"),
                  "--ckpt_path", str(fold / "train" / "models" / "model.pt"), "--output_dir", str(fold / "eval"),
                  "--largest_cc", "true", *extra])
    return summary(out)


def summary(out: str = "runs/loo") -> str:
    """Per-case held-out table (Dice, HD95 mm, volume error %) of every finished fold, and the mean."""
    rows = []
    for name in FOLDS:
        table = Path(out) / name / "eval" / "metrics_per_case.csv"
        if not table.is_file():
            continue
        with table.open() as f:
            for row in csv.DictReader(f):
                case = row["case"]  # CaseTableWriter's first column
                if case in ("mean", "std", "median"):
                    continue
                values = {c: float(row[c]) for c in COLUMNS}
                err = 100.0 * (values["val_pred_volume_ml"] - values["val_ref_volume_ml"]) / values["val_ref_volume_ml"]
                rows.append((name, Path(case).name, values["val_mean_dice"], values["val_hd95_mm"], err))
    if not rows:
        raise InputError(f"{out}: no finished fold (no */eval/metrics_per_case.csv)")
    lines = ["| fold | case | Dice | HD95 mm | volume error |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {f} | {c} | {d:.3f} | {h:.1f} | {e:+.0f} % |" for f, c, d, h, e in rows]
    mean = sum(r[2] for r in rows) / len(rows)
    lines.append(f"| mean of {len(rows)} | | {mean:.3f} | | |")
    return "\n".join(lines)


def main() -> None:
    """Console script ``spleenseg-validate-model``."""
    run_fire({"run": run, "summary": summary}, name="spleenseg-validate-model")


if __name__ == "__main__":
    main()
