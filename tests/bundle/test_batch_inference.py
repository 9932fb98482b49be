"""Sharded, resumable batch inference (``batch_inference.json``): real ``monai.bundle run`` and real ``torchrun``
with two gloo processes on CPU, on the session's trained tiny model and phantoms."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest

from testkit.bundle import TINY, TrainRun, bundle_scripts, config_arg, run_bundle

from spleenseg.paths import REPO_ROOT

BATCH = config_arg("inference", "batch_inference")


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]


def _cases(run: TrainRun) -> list[Path]:
    return sorted((run.dataset_dir / "imagesTr").glob("*.nii.gz")) + sorted(
        (run.dataset_dir / "imagesTs").glob("*.nii.gz"))


def _lines(out: Path) -> list[dict]:
    """Every manifest record of every rank (a half-written line, which a kill can leave, is not one)."""
    records = []
    for path in sorted(out.glob("manifest.rank-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def _merged(out: Path) -> dict[str, dict]:
    with (out / "manifest.csv").open() as fh:
        return {row["input"]: row for row in csv.DictReader(fh)}


def _assert_csv_matches_outputs(out: Path, merged: dict[str, dict]) -> None:
    """Every done row names a mask that is there, with the recorded hash and a volume that matches it."""
    batch = bundle_scripts("batch")
    for row in merged.values():
        if row["status"] != "done":
            continue
        mask = out / row["output"]
        assert batch.sha256_of(mask) == row["sha256"], row
        img = nib.load(mask)
        voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
        assert float(row["spleen_volume_ml"]) > 0
        # the QA volume is counted on the model grid, the mask is in the input grid: same organ, same size
        assert float(np.count_nonzero(np.asarray(img.dataobj))) * voxel_ml == pytest.approx(
            float(row["spleen_volume_ml"]), rel=0.2)


def test_two_ranks_do_every_case_once_and_match_single_file_inference(trained_run: TrainRun, tmp_path: Path
                                                                      ) -> None:
    """A CSV of inputs (two share a file name in different folders, one is not an image) split over two gloo
    ranks: each case is run once by one rank, the bad one is recorded and skipped, the merged CSV matches the
    files, and the masks are the ones ``inference.json`` writes for the same file."""
    cases = _cases(trained_run)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    twin_a, twin_b = tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nii.gz"
    twin_a.write_bytes(cases[0].read_bytes())
    twin_b.write_bytes(cases[1].read_bytes())
    bad = tmp_path / "a" / "broken.nii.gz"
    bad.write_bytes(os.urandom(300))
    inputs = [str(c) for c in cases[2:]] + ["a/ct.nii.gz", "b/ct.nii.gz", "a/broken.nii.gz"]
    listing = tmp_path / "cases.csv"
    listing.write_text("image,patient\n" + "".join(f"{p},x\n" for p in inputs))
    out = tmp_path / "out"

    run_bundle(["run", "--config_file", BATCH, "--ckpt_path", str(trained_run.model), "--input_csv",
                str(listing), "--output_dir", str(out), *TINY], launcher=_torchrun(29521), timeout=400)

    lines = _lines(out)
    expected = sorted({str(c) for c in cases[2:]} | {str(twin_a), str(twin_b), str(bad)})
    assert sorted(line["input"] for line in lines) == expected, "every case exactly once"
    assert {line["rank"] for line in lines} == {0, 1}
    for rank in (0, 1):
        ranks_lines = [line for line in lines if line["rank"] == rank]
        assert [line["input"] for line in ranks_lines] == expected[rank::2], "interleaved split of sorted inputs"
    merged = _merged(out)
    assert sorted(merged) == expected
    assert merged[str(bad)]["status"] == "failed" and "not a gzip file" in merged[str(bad)]["error"]
    assert {r["status"] for k, r in merged.items() if k != str(bad)} == {"done"}
    assert merged[str(twin_a)]["output"] != merged[str(twin_b)]["output"], "same file name, two outputs"
    _assert_csv_matches_outputs(out, merged)
    assert not list(out.glob(".partial_rank*")), "staging folders are removed"
    for row in merged.values():
        if row["status"] == "done":
            qa = out / Path(row["output"]).parent / Path(row["output"]).name.replace("_seg.nii.gz", "_qa.json")
            assert json.loads(qa.read_text())["verdict"] == row["verdict"]

    single = tmp_path / "single"
    run_bundle(["run", "--config_file", config_arg("inference"), "--ckpt_path", str(trained_run.model),
                "--input_file", str(twin_b), "--output_dir", str(single), *TINY])
    reference = nib.load(single / "ct_seg.nii.gz")
    batch_mask = nib.load(out / merged[str(twin_b)]["output"])
    np.testing.assert_array_equal(np.asarray(batch_mask.dataobj), np.asarray(reference.dataobj))
    np.testing.assert_allclose(batch_mask.affine, reference.affine, atol=1e-5)


def _wait_for_lines(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if len(_lines(out) if out.exists() else []) >= n:
            return
        time.sleep(0.05)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, as an out-of-memory kill or a lost node would."""
    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_a_killed_run_resumes_as_scheduler_shards(trained_run: TrainRun, tmp_path: Path) -> None:
    """Kill a two-rank torchrun job after its first cases; three scheduler shards then skip what was done (even
    with a truncated last manifest line), redo a case whose mask was changed, and finish the rest; ``run merge``
    joins them: every input ends with exactly one successful line and the merged CSV matches the outputs."""
    cases = _cases(trained_run)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):  # 4 copies of each case under new names: enough work that the kill lands mid-run
        for case in cases:
            (inputs / f"r{i}_{case.name}").symlink_to(case)
    total = len(list(inputs.iterdir()))
    out = tmp_path / "out"
    cmd = _torchrun(29523) + ["-m", "monai.bundle", "run", "--config_file", BATCH, "--ckpt_path",
                              str(trained_run.model), "--input_dir", str(inputs), "--output_dir", str(out), *TINY]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_lines(out, 3, proc)
    finally:
        _kill_tree(proc.pid)  # torchrun starts its workers in sessions of their own: kill each one
        proc.wait()
    first = _lines(out)
    assert 3 <= len(first) < total, f"the kill must land mid-run ({len(first)} of {total} done)"
    assert not (out / "manifest.csv").exists()
    changed = out / first[0]["output"]
    changed.write_bytes(changed.read_bytes() + b"\0")  # a mask that no longer matches its line is redone
    with open(out / "manifest.rank-0.jsonl", "a") as fh:  # the file the one-process re-run appends to
        fh.write('{"input": "/half/a/line')  # what a kill during the append leaves

    skipped = 0
    for rank in range(3):  # resumed as 3 scheduler shards, one after the other: no torchrun, no waiting
        proc = run_bundle(["run", "--config_file", BATCH, "--ckpt_path", str(trained_run.model), "--input_dir",
                           str(inputs), "--output_dir", str(out), "--rank", str(rank), "--world_size", "3", *TINY],
                          timeout=400)
        log = proc.stdout + proc.stderr
        found = re.search(rf"rank {rank}/3: (\d+) cases, (\d+) already done", log)
        assert found and int(found[1]) == len(range(rank, total, 3)), log[-3000:]
        skipped += int(found[2])
        assert "shard done; after the last shard" in log
        assert not (out / "manifest.csv").exists(), "a scheduler shard does not merge"
    assert skipped == len(first) - 1, "every case done before is skipped except the changed one"
    run_bundle(["run", "merge", "--config_file", BATCH, "--output_dir", str(out)])

    done = [line for line in _lines(out) if line["status"] == "done"]
    by_input: dict[str, int] = {}
    for line in done:
        by_input[line["input"]] = by_input.get(line["input"], 0) + 1
    assert len(by_input) == total
    assert by_input.pop(first[0]["input"]) == 2, "the changed mask was made again"
    assert set(by_input.values()) == {1}, "no other case was run twice"
    merged = _merged(out)
    assert len(merged) == total and {r["status"] for r in merged.values()} == {"done"}
    _assert_csv_matches_outputs(out, merged)


def test_datalist_sources_and_errors(tmp_path: Path) -> None:
    """Folder, CSV (with or without a header, relative to the CSV) and dataset.json give the same sorted,
    de-duplicated list; a missing file or two sources at once is one input error naming the problem."""
    batch = bundle_scripts("batch")
    errors = bundle_scripts("errors")
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nii.gz", "c.nii"):
        (folder / name).write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    want = [{"image": str(folder / n)} for n in ("a.nii.gz", "b.nii.gz", "c.nii")]
    assert batch.batch_datalist(input_dir=str(folder)) == want
    (tmp_path / "with_header.csv").write_text("id,image\n1,imagesTs/b.nii.gz\n2,imagesTs/a.nii.gz\n"
                                              "3,imagesTs/c.nii\n4,imagesTs/a.nii.gz\n")
    assert batch.batch_datalist(input_csv=str(tmp_path / "with_header.csv")) == want
    (tmp_path / "bare.csv").write_text("".join(f"{d['image']}\n" for d in reversed(want)))
    assert batch.batch_datalist(input_csv=str(tmp_path / "bare.csv")) == want
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"test": ["imagesTs/c.nii", "imagesTs/a.nii.gz", "imagesTs/b.nii.gz"], "training": []}))
    assert batch.batch_datalist(dataset_json=str(tmp_path / "dataset.json"), dataset_split="test") == want

    (tmp_path / "gone.csv").write_text("image\nimagesTs/a.nii.gz\nimagesTs/missing.nii.gz\n")
    with pytest.raises(errors.InputError, match=r"missing\.nii\.gz: input file does not exist"):
        batch.batch_datalist(input_csv=str(tmp_path / "gone.csv"))
    with pytest.raises(errors.InputError, match="no 'image' column"):
        (tmp_path / "cols.csv").write_text("path\nimagesTs/a.nii.gz\n")
        batch.batch_datalist(input_csv=str(tmp_path / "cols.csv"))
    with pytest.raises(errors.InputError, match="give one input"):
        batch.batch_datalist(input_dir=str(folder), input_csv=str(tmp_path / "bare.csv"))
    with pytest.raises(errors.InputError, match="cannot read split 'validation'"):
        batch.batch_datalist(dataset_json=str(tmp_path / "dataset.json"), dataset_split="validation")


def test_missing_input_is_one_line_and_merge_runs_alone(tmp_path: Path) -> None:
    """A CSV that names a missing file stops the run before any work with one line and status 2; ``run merge``
    rewrites manifest.csv from rank manifests alone (no model, no inputs), the newest line per input winning."""
    listing = tmp_path / "cases.csv"
    listing.write_text("image\nnowhere.nii.gz\n")
    out = tmp_path / "out"
    proc = run_bundle(["run", "--config_file", BATCH, "--input_csv", str(listing), "--output_dir", str(out),
                       *TINY], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere.nii.gz'}: input file does not exist"
    assert not out.exists() or not list(out.iterdir())

    out.mkdir()
    (out / "m.nii.gz").write_bytes(b"mask")
    sha = bundle_scripts("batch").sha256_of(out / "m.nii.gz")
    old = {"input": "/in/x.nii.gz", "status": "failed", "error": "boom", "rank": 1,
           "finished": "2026-01-01T00:00:00.000000+00:00"}
    new = {"input": "/in/x.nii.gz", "status": "done", "output": "m.nii.gz", "sha256": sha, "rank": 0,
           "spleen_volume_ml": 12.5, "flags": ["fov_cut", "low_confidence"],
           "finished": "2026-01-02T00:00:00.000000+00:00"}
    gone = {"input": "/in/y.nii.gz", "status": "done", "output": "y.nii.gz", "sha256": "0" * 64,
            "finished": "2026-01-02T00:00:00.000000+00:00"}
    (out / "manifest.rank-1.jsonl").write_text(json.dumps(old) + "\n")
    (out / "manifest.rank-0.jsonl").write_text(json.dumps(new) + "\n" + json.dumps(gone) + "\n")
    run_bundle(["run", "merge", "--config_file", BATCH, "--output_dir", str(out)])
    merged = _merged(out)
    assert merged["/in/x.nii.gz"]["status"] == "done"
    assert merged["/in/x.nii.gz"]["flags"] == "fov_cut;low_confidence"
    assert merged["/in/y.nii.gz"]["status"] == "failed" and "output missing" in merged["/in/y.nii.gz"]["error"]
