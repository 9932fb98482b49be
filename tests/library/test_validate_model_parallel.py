"""Folds trained side by side (``spleenseg-validate-model run --jobs N``): each command logs to its own file, all
of them run, and a failure names the log to read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spleenseg.commands.validate_model import _run_parallel
from spleenseg.errors import InputError


#: marks that it started, then waits up to 60 s for three marks in the folder; exit code 1 if they never come
WAIT_FOR_ALL = """
import pathlib, sys, time
folder, name = pathlib.Path(sys.argv[1]), sys.argv[2]
(folder / f"{name}.started").touch()
end = time.monotonic() + 60
while len(list(folder.glob("*.started"))) < 3 and time.monotonic() < end:
    time.sleep(0.05)
print(name)
sys.exit(0 if len(list(folder.glob("*.started"))) == 3 else 1)
"""


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_commands_run_at_the_same_time_each_with_its_own_log(tmp_path: Path) -> None:
    """Each command marks that it started, then waits for the others' marks: run one after another, the first
    would give up after 60 s and fail."""
    names = ("a", "b", "c")
    commands = [([*_py(WAIT_FOR_ALL), str(tmp_path), name], tmp_path / name / "train.log") for name in names]
    _run_parallel(commands, jobs=3)
    for name in names:
        assert (tmp_path / name / "train.log").read_text().strip() == name


def test_a_failing_command_is_named_by_its_log_and_the_others_still_run(tmp_path: Path) -> None:
    commands = [(_py("import sys; print('broken'); sys.exit(3)"), tmp_path / "bad.log"),
                (_py("print('fine')"), tmp_path / "good.log")]
    with pytest.raises(InputError, match="bad.log") as err:
        _run_parallel(commands, jobs=1)
    assert "good.log" not in str(err.value)
    assert (tmp_path / "bad.log").read_text().strip() == "broken"
    assert (tmp_path / "good.log").read_text().strip() == "fine"


def test_overlay_is_layered_after_train_real_for_training_and_scoring(tmp_path: Path, monkeypatch) -> None:
    """``--overlay`` reaches both commands of a fold, after ``train_real.json`` (later files override earlier
    ones), so a recipe is scored with the same preprocessing it was trained with; a missing file is refused."""
    from spleenseg.commands import validate_model

    out = tmp_path / "loo"
    (out / "phantoms").mkdir(parents=True)
    (out / "phantoms" / "dataset.json").write_text("{}")
    (out / "msd_spleen_8" / "real").mkdir(parents=True)
    (out / "msd_spleen_8" / "real" / "dataset.json").write_text("{}")
    overlay = tmp_path / "recipe.json"
    overlay.write_text("{}")
    commands: list[list[str]] = []
    monkeypatch.setattr(validate_model, "_run", commands.append)
    with pytest.raises(InputError, match="no finished fold"):
        validate_model.run(out=str(out), folds="msd_spleen_8", overlay=str(overlay))
    train, score = commands
    for cmd in (train, score):
        configs = cmd[cmd.index("--config_file") + 1]
        assert configs.index("train_real.json") < configs.index(str(overlay.resolve()))
    assert "evaluate.json" in score[score.index("--config_file") + 1]
    with pytest.raises(InputError, match="no such config file"):
        validate_model.run(out=str(out), folds="msd_spleen_8", overlay=str(tmp_path / "missing.json"))
