"""``spleenseg-prepare group|to_nifti --shard I/N`` and ``merge_manifests``: N shards into one OUT give what one
unsharded run gives, file for file; every series lands in exactly one shard; bad shards are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spleenseg.dicom.convert import convert_folder, group_folder
from spleenseg.errors import InputError
from spleenseg.phantom import make_phantom, random_spec, write_dicom_series, write_dicom_study
from spleenseg.shard import Shard, merge_manifests, shard_of

PREPARE = [sys.executable, "-m", "spleenseg.commands.prepare_data"]
N = 3


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two patients (CT + scout + secondary capture + SEG each) and two more CT series of patient 1: 10 series,
    with CT volumes in each of the 3 shards (series numbers 3 and 7 hash to shards 1 and 0)."""
    root = tmp_path_factory.mktemp("sharding") / "archive"
    phantoms = [make_phantom(random_spec(seed, shape=(24, 20, 10))) for seed in (1, 2)]
    for ph in phantoms:
        write_dicom_study(ph, root / f"p{ph.spec.seed}", shuffle_names=True)
    for number in (3, 7):
        write_dicom_series(phantoms[0], root / "p1" / f"s{number}", series_number=number, file_prefix=f"S{number}_")
    return root


def _files(root: Path, skip: str = "manifest") -> dict[str, Path]:
    """Every file below ``root`` by relative path (hidden ones included), less the manifests."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.startswith(skip)}


def test_shard_of_is_sha256_of_the_uid_mod_n() -> None:
    """Pinned: the first 8 bytes of sha256("1.2.3") are 654 mod 1000. A change would split old and new shards."""
    assert shard_of("1.2.3", 1000) == 654 and shard_of("1.2.3", 4) == 2 and shard_of("2.25.1", 4) == 3
    assert {shard_of(f"1.2.{i}", N) for i in range(30)} == set(range(N)) and shard_of("1.2.3", 1) == 0


@pytest.mark.parametrize("slices_per_group", [None, 4])
def test_group_shards_together_equal_one_unsharded_run(archive: Path, tmp_path: Path,
                                                       slices_per_group: int | None) -> None:
    whole = group_folder(archive, tmp_path / "whole", slices_per_group=slices_per_group, progress=False)
    out = tmp_path / "sharded"
    parts = [group_folder(archive, out, slices_per_group=slices_per_group, progress=False, shard=Shard(i, N))
             for i in range(N)]
    names = [[g.name for g in part] for part in parts]
    assert all(names) and sorted(sum(names, [])) == sorted(g.name for g in whole)  # each series in one shard
    for part in parts:  # chunks and parts of one series UID stay together
        assert all(shard_of(g.series_uid, N) == shard_of(part[0].series_uid, N) for g in part)
    again = group_folder(archive, tmp_path / "again", slices_per_group=slices_per_group, progress=False,
                         shard=Shard(1, N))
    assert [g.name for g in again] == names[1]  # the same assignment on every run

    expected, got = _files(tmp_path / "whole"), _files(out)
    assert list(got) == list(expected)  # same relative paths, no temporary left behind
    assert all(got[rel].read_bytes() == expected[rel].read_bytes() for rel in expected)
    assert sorted(p.name for p in out.glob("manifest*")) == [f"manifest.shard-{i}-of-{N}.json" for i in range(N)]

    merged = merge_manifests(out)
    assert (out / "manifest.json").read_bytes() == (tmp_path / "whole" / "manifest.json").read_bytes()
    assert len(merged["series"]) == len(whole) and not list(out.glob("manifest.shard-*"))


def test_to_nifti_shards_in_parallel_equal_one_unsharded_run(archive: Path, tmp_path: Path) -> None:
    """Three ``to_nifti --shard I/3`` processes at once into one OUT (a shell loop), then ``merge_manifests``."""
    written = convert_folder(archive, tmp_path / "whole", progress=False)
    out = tmp_path / "sharded"
    procs = [subprocess.Popen(PREPARE + ["to_nifti", str(archive), str(out), "--shard", f"{i}/{N}", "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(N)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    shards = [json.loads((out / Shard(i, N).manifest_name).read_text())["series"] for i in range(N)]
    assert all(shard_of(e["series_uid"], N) == i for i, s in enumerate(shards) for e in s)  # same in every process
    assert all(shards) and sorted(e["name"] for s in shards for e in s) == sorted(
        Path(p).name[:-len(".nii.gz")] for p in written)

    expected, got = _files(tmp_path / "whole"), _files(out)
    assert list(got) == list(expected)
    for rel, path in expected.items():
        if rel.endswith(".nii.gz"):
            a, b = nib.load(got[rel]), nib.load(path)
            assert np.array_equal(a.affine, b.affine) and np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        else:
            assert got[rel].read_bytes() == path.read_bytes()

    merge = subprocess.run(PREPARE + ["merge_manifests", str(out)], capture_output=True, text=True, timeout=60)
    assert merge.returncode == 0, merge.stderr
    merged = json.loads((out / "manifest.json").read_text())
    assert sorted(f for e in merged["series"] for f in e["files"]) == sorted(expected)
    assert not list(out.glob("manifest.shard-*"))


@pytest.mark.parametrize("command", ["group", "to_nifti"])
@pytest.mark.parametrize("value, message", [
    ("3/2", "the shard index I must be 0 to 1 for N=2"),
    ("0/0", "the shard count N must be at least 1"),
    ("x", "expected I/N"),
])
def test_bad_shard_is_one_line_and_exit_2(archive: Path, tmp_path: Path, command: str, value: str,
                                          message: str) -> None:
    proc = subprocess.run(PREPARE + [command, str(archive), str(tmp_path / "out"), "--shard", value],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --shard {value!r}: "), lines
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def _merge_error(folder: Path) -> str:
    """The one stderr line of a refused ``merge_manifests``."""
    proc = subprocess.run(PREPARE + ["merge_manifests", str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (folder / "manifest.json").exists()
    return proc.stderr


def test_merge_refuses_missing_mixed_or_overlapping_shards(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    for i in range(N):
        group_folder(archive, out, progress=False, shard=Shard(i, N))
    manifests = {i: json.loads((out / Shard(i, N).manifest_name).read_text()) for i in range(N)}

    with pytest.raises(InputError, match="already exists"):  # a shard run twice never overwrites
        group_folder(archive, out, progress=False, shard=Shard(0, N))
    with pytest.raises(InputError, match="holds shards of N=3, not 4"):
        group_folder(archive, out, progress=False, shard=Shard(0, 4))

    (out / Shard(1, N).manifest_name).unlink()
    assert "shard(s) 1 of 3 missing" in _merge_error(out)

    (out / Shard(1, N).manifest_name).write_text(json.dumps(manifests[1]))
    shutil.copy(out / Shard(2, N).manifest_name, out / Shard(3, 4).manifest_name)
    assert "the shards disagree on N (3, 4)" in _merge_error(out)
    (out / Shard(3, 4).manifest_name).unlink()

    stolen = dict(manifests[1], series=manifests[1]["series"] + manifests[0]["series"][:1])
    stolen["shard"] = dict(stolen["shard"], positions=stolen["shard"]["positions"] + [0])
    (out / Shard(1, N).manifest_name).write_text(json.dumps(stolen))
    assert "claimed by two shards (manifest.shard-0-of-3.json and manifest.shard-1-of-3.json)" in _merge_error(out)

    (out / Shard(1, N).manifest_name).write_text(json.dumps(dict(manifests[1], linked=True)))
    assert "linked is True, but False in manifest.shard-0-of-3.json" in _merge_error(out)

    (out / Shard(1, N).manifest_name).write_text(json.dumps(manifests[1]))
    assert len(merge_manifests(out)["series"]) == 10
    with pytest.raises(InputError, match="already merged"):
        group_folder(archive, out, progress=False, shard=Shard(0, N))
