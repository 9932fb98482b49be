"""Boolean knobs as the command line passes them: ``--largest_cc false`` arrives as the string 'false' (fire
makes a bool only of ``False``/``True``), and it must switch the step off, not leave it on because it is truthy.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from testkit.bundle import CONFIGS, TINY, config_arg, run_bundle

#: (value on the command line after fire's parsing, what it means)
CLI_VALUES = [("false", False), ("FALSE", False), ("no", False), (0, False), (False, False),
              ("true", True), ("Yes", True), (1, True), (True, True)]
#: (configs merged, list of steps, knob that switches some of them)
#: A tqdm bar as it reaches a file or pipe, e.g. ``100%|##########| 1/1 [00:00<00:00,  2.51it/s]``.
TQDM_BAR = re.compile(r"\d+%\|[^|\n]*\| \d+/\d+ \[")
SWITCHES = [(("inference",), "postprocessing_transforms", "save_prob"),
            (("train", "evaluate"), "validate#postprocessing_transforms", "largest_cc"),
            (("train", "evaluate"), "validate#postprocessing_transforms", "save_pred")]


def _parser(*configs: str, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f"{c}.json") for c in configs])
    parser.update(overrides)
    return parser


def _switched_on(parser: ConfigParser, list_id: str, knob: str) -> list[bool]:
    """For each step of ``list_id`` whose ``_disabled_`` reads ``knob``: whether the step is on."""
    ids = [f"{list_id}#{i}#_disabled_" for i, step in enumerate(parser[list_id])
           if f"@{knob}" in str(step.get("_disabled_", ""))]
    assert ids, f"no step of {list_id} is switched by {knob}"
    return [not parser.get_parsed_content(i) for i in ids]


@pytest.mark.parametrize("configs, list_id, knob", SWITCHES)
@pytest.mark.parametrize("given, expected", CLI_VALUES)
def test_switch_follows_the_cli_value(configs, list_id, knob, given, expected) -> None:
    assert set(_switched_on(_parser(*configs, **{knob: given}), list_id, knob)) == {expected}


def _selection_arg(parser: ConfigParser, arg: str) -> object:
    """One argument of inference.json's spleen selection step, parsed (the step always runs: it makes the QA)."""
    steps = parser["postprocessing_transforms"]
    i = next(i for i, t in enumerate(steps) if "SelectSpleenComponentd" in str(t.get("_target_", "")))
    return parser.get_parsed_content(f"postprocessing_transforms#{i}#{arg}")


@pytest.mark.parametrize("knob, arg", [("largest_cc", "select"), ("keep_accessory", "keep_accessory")])
@pytest.mark.parametrize("given, expected", CLI_VALUES)
def test_selection_switch_follows_the_cli_value(knob, arg, given, expected) -> None:
    assert _selection_arg(_parser("inference", **{knob: given}), arg) is expected


@pytest.mark.parametrize("configs, ids", [(("train",), ["train#trainer#amp", "validate#evaluator#amp"]),
                                          (("inference",), ["evaluator#amp"])])
def test_amp_follows_the_cli_value(configs, ids) -> None:
    for given, expected in (("false", False), ("true", True)):
        parser = _parser(*configs, amp=given)
        assert [parser.get_parsed_content(i) for i in ids] == [expected] * len(ids), given


def test_misspelt_switch_is_an_error_naming_the_value() -> None:
    with pytest.raises(RuntimeError, match="largest_cc") as err:
        _selection_arg(_parser("inference", largest_cc="flase"), "select")
    assert isinstance(err.value.__cause__, ValueError) and "flase" in str(err.value.__cause__)


def test_cli_false_keeps_the_selection_step_and_leaves_out_the_probability(tmp_path: Path) -> None:
    """Through ``python -m monai.bundle run`` itself, which prints the post-processing instead of running it."""
    show = "['$print(\"POSTPROCESSING\", [type(t).__name__ for t in @postprocessing.transforms])']"
    image = tmp_path / "ct.nii.gz"  # initialize checks that the input exists before --run replaces the run
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), image)
    proc = run_bundle(["run", "--config_file", config_arg("inference"), "--output_dir", str(tmp_path / "out"),
                       "--input_file", str(image),
                       "--largest_cc", "false", "--save_prob", "false", "--run", show])
    line = next(s for s in proc.stdout.splitlines() if s.startswith("POSTPROCESSING "))
    steps = ast.literal_eval(line.split(" ", 1)[1])
    # the spleen selection still runs (it computes the QA; with largest_cc false it keeps every component)
    assert steps.count("SelectSpleenComponentd") == 1 and "Lambdad" not in steps
    assert "CopyItemsd" not in steps and steps.count("SaveImaged") == 1  # the mask, no probability map


@pytest.mark.parametrize("configs, inferer", [(("inference",), "inferer"), (("train", "evaluate"), "validate#inferer")])
def test_sliding_window_progress_is_on_unless_switched_off(configs, inferer) -> None:
    assert _parser(*configs).get_parsed_content(inferer).progress is True
    for given, expected in CLI_VALUES:
        assert _parser(*configs, sw_progress=given).get_parsed_content(inferer).progress is expected, given


def test_validation_during_training_has_no_sliding_window_bar() -> None:
    """Training has its own epoch bar; one more per validation case would bury it."""
    assert _parser("train").get_parsed_content("validate#inferer").progress is False


def test_inference_prints_the_sliding_window_bar_and_false_removes_it(tmp_path: Path) -> None:
    """A real run of the shipped model on a tiny CT: by default the bar is on stderr, ``--sw_progress false``
    drops it."""
    image = tmp_path / "ct.nii.gz"
    ct = np.full((24, 24, 24), -1000, np.int16)
    ct[4:20, 4:20, 4:20] = 40  # a body for CropForegroundd
    nib.save(nib.Nifti1Image(ct, np.diag([6.0, 6.0, 6.0, 1.0])), image)
    runs = {}
    for name, switch in (("default", []), ("false", ["--sw_progress", "false"])):
        out = tmp_path / name
        runs[name] = run_bundle(["run", "--config_file", config_arg("inference"), "--input_file", str(image),
                                 "--output_dir", str(out), *switch, *TINY])
        assert (out / "ct_seg.nii.gz").is_file()
    assert TQDM_BAR.search(runs["default"].stderr), runs["default"].stderr[-2000:]
    assert not TQDM_BAR.search(runs["false"].stderr + runs["false"].stdout)
