"""download_msd against a local archive the test builds, served over http on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from spleenseg.dataset import download_msd
from spleenseg.errors import InputError


@pytest.fixture
def msd_archive(tmp_path: Path) -> tuple[Path, str]:
    """A miniature Task09_Spleen.tar (dataset.json + one image/label pair) and its MD5."""
    task = tmp_path / "src" / "Task09_Spleen"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "imagesTr" / "spleen_2.nii.gz").write_bytes(b"image bytes")
    (task / "labelsTr" / "spleen_2.nii.gz").write_bytes(b"label bytes")
    (task / "dataset.json").write_text(json.dumps({"name": "Spleen", "training": [
        {"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}]}))
    archive = tmp_path / "serve" / "Task09_Spleen.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname="Task09_Spleen")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture
def http_url(msd_archive: tuple[Path, str]) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(msd_archive[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{msd_archive[0].name}"
    server.shutdown()
    server.server_close()


def test_download_over_http_with_md5(msd_archive: tuple[Path, str], http_url: str, tmp_path: Path) -> None:
    target = download_msd(tmp_path / "data", url=http_url, md5=msd_archive[1], progress=False)
    assert target == tmp_path / "data" / "Task09_Spleen"
    assert (target / "imagesTr" / "spleen_2.nii.gz").read_bytes() == b"image bytes"
    assert json.loads((target / "dataset.json").read_text())["training"][0]["label"].endswith("spleen_2.nii.gz")
    assert download_msd(tmp_path / "data", url="http://127.0.0.1:9/unreachable", md5="0" * 32) == target  # reuse


def test_wrong_md5_leaves_nothing(msd_archive: tuple[Path, str], http_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="verification failed"):
        download_msd(tmp_path / "bad", url=http_url, md5="0" * 32, progress=False)
    assert not (tmp_path / "bad" / "Task09_Spleen").exists()
    assert not (tmp_path / "bad" / "Task09_Spleen.tar").exists()  # a corrupt archive is not kept for reuse
    assert not list((tmp_path / "bad").glob(".Task09_Spleen.partial-*"))


def test_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="127.0.0.1"):
        download_msd(tmp_path, url="http://127.0.0.1:9/Task09_Spleen.tar", progress=False)
