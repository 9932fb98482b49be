"""The benchmarks (``benchmarks/bench_app.py``, ``benchmarks/bench_infer.py``) measure whole processes: start to exit
(teardown included) and their own peak RSS (``spleenseg.measure``).

No timing targets here (the machines are noisy); these check that the benchmarks measure what they say.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from spleenseg.measure import dice, run_measured
from spleenseg.paths import REPO_ROOT


def test_wall_time_includes_the_interpreter_teardown(tmp_path):
    code = "import atexit, time; atexit.register(time.sleep, 0.6)"  # runs after the script, before the exit
    assert run_measured([sys.executable, "-c", code], tmp_path).wall_s >= 0.6


def test_peak_memory_is_the_child_process_own(tmp_path):
    code = "import numpy as np; a = np.ones(300 * 2**20 // 8)"  # 300 MB touched
    assert 300 <= run_measured([sys.executable, "-c", code], tmp_path).peak_rss_mb < 1000


def test_a_failed_run_raises_with_its_output(tmp_path):
    code = "import sys; print('the model is missing', file=sys.stderr); sys.exit(3)"
    with pytest.raises(RuntimeError, match=r"exit 3(.|\n)*the model is missing"):
        run_measured([sys.executable, "-c", code], tmp_path)


def test_dice_of_masks():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, b) == 0.5 and dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0  # two empty masks agree


def test_our_app_runs_as_users_run_it(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_app", REPO_ROOT / "benchmarks" / "bench_app.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    command = bench.app_command("ours", "python", tmp_path / "in", tmp_path / "out", tmp_path / "bundle")
    assert command[:3] == ["python", "-m", "deploy_app"]
    assert command[3:] == ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "bundle")]
