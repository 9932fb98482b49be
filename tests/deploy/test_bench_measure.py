"""``scripts/bench_app.py`` measures whole processes: start to exit (teardown included) and their peak RSS.

No timing targets here (the machines are noisy); these check that the benchmark measures what it says.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from spleenseg.paths import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_app", REPO_ROOT / "scripts" / "bench_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wall_time_includes_the_interpreter_teardown(bench, tmp_path):
    code = "import atexit, time; atexit.register(time.sleep, 0.6)"  # runs after the script, before the exit
    assert bench.run_measured([sys.executable, "-c", code], tmp_path)["wall_s"] >= 0.6


def test_peak_memory_is_the_child_process_own(bench, tmp_path):
    code = "import numpy as np; a = np.ones(300 * 2**20 // 8)"  # 300 MB touched
    result = bench.run_measured([sys.executable, "-c", code], tmp_path)
    assert 300 <= result["peak_rss_mb"] < 1000


def test_a_failed_run_raises_with_its_output(bench, tmp_path):
    code = "import sys; print('the model is missing', file=sys.stderr); sys.exit(3)"
    with pytest.raises(RuntimeError, match=r"exit 3(.|\n)*the model is missing"):
        bench.run_measured([sys.executable, "-c", code], tmp_path)


def test_our_app_runs_as_users_run_it(bench, tmp_path):
    command = bench.app_command("ours", "python", tmp_path / "in", tmp_path / "out", tmp_path / "bundle")
    assert command[:3] == ["python", "-m", "deploy_app"]
    assert command[3:] == ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "bundle")]
