"""Fixtures for the DICOM node tests: a real Orthanc and the node as real processes, a tiny CT study.

Every process a test starts is stopped by its pid at the end (``processes``). Orthanc runs from the README's
example config with its own storage folder, free loopback ports and no plugins (Debian's default config loads
plugins and uses fixed ports), so it starts in well under a second and never reaches the network.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from testkit.node import (EXAMPLE_ORTHANC, MODALITY, NODE_AET, ORTHANC_AET, ORTHANC_BIN, TEST_PIPELINE,
                          NodeProcess, Orthanc, _http_ok, free_port, wait_for, write_ct_study)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Every process a test starts is appended here; at the end all get SIGTERM at once, then SIGKILL if needed."""
    started: list[subprocess.Popen] = []
    yield started
    running = [p for p in started if p.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def orthanc_factory(tmp_path: Path, processes: list[subprocess.Popen]) -> Callable[..., Orthanc]:
    """``make(node_port)`` starts an Orthanc that knows our node as modality ``spleennode``; stopped at the end.

    ``make(node_port, start=False)`` only reserves its ports and writes its config (a destination that is
    down); ``start_orthanc(o)`` starts it later.
    """
    def make(node_port: int, start: bool = True, name: str = "orthanc") -> Orthanc:
        folder = tmp_path / name
        folder.mkdir()
        o = Orthanc(free_port(), free_port(), folder)
        config = json.loads(EXAMPLE_ORTHANC.read_text())
        assert config["DicomModalities"][MODALITY][0] == NODE_AET and config["DicomAet"] == ORTHANC_AET
        config.update({
            "Name": name, "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": o.http_port, "DicomPort": o.dicom_port, "OrthancExplorerEnabled": False,
            "WebDavEnabled": False, "LuaScripts": [], "ConcurrentJobs": 1, "DicomScuTimeout": 10,
            "DicomModalities": {MODALITY: [NODE_AET, "127.0.0.1", node_port]},
        })
        (folder / "orthanc.json").write_text(json.dumps(config))
        if start:
            start_orthanc(o)
        return o

    def start_orthanc(o: Orthanc) -> None:
        log = open(o.folder / "orthanc.log", "ab")
        o.proc = subprocess.Popen([ORTHANC_BIN, "--no-jobs", str(o.folder / "orthanc.json")],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=o.folder)
        processes.append(o.proc)
        wait_for(lambda: _http_ok(o.url + "/system") or o.proc.poll() is not None, 20, "Orthanc to start")
        assert o.proc.poll() is None, (o.folder / "orthanc.log").read_text()

    make.start = start_orthanc  # type: ignore[attr-defined]
    return make


@pytest.fixture
def node_factory(tmp_path: Path, processes: list[subprocess.Popen]) -> Callable[..., NodeProcess]:
    """``make(destination=..., **options)`` writes a node config and starts the node; stopped by pid at the end."""
    nodes: list[NodeProcess] = []

    def make(start: bool = True, **options: Any) -> NodeProcess:
        work_dir = tmp_path / f"node{len(nodes)}" / "work"
        work_dir.mkdir(parents=True)
        port = options.pop("port", None) or free_port()
        config = {
            "work_dir": str(work_dir), "ae_title": NODE_AET, "bind_address": "127.0.0.1", "port": port,
            "allowed_calling_aets": [ORTHANC_AET], "quiet_seconds": 1.0, "pipeline": TEST_PIPELINE,
            "send_backoff_seconds": 0.5, "send_backoff_max_seconds": 1.0, "job_timeout_seconds": 120,
            **options,
        }
        config_path = work_dir.parent / "node.json"
        config_path.write_text(json.dumps(config, indent=2))
        node = NodeProcess(config_path, work_dir, port, processes)
        nodes.append(node)
        if start:
            node.start()
        return node

    return make


@pytest.fixture
def ct_study(tmp_path: Path) -> dict[str, Any]:
    return write_ct_study(tmp_path / "ct")
