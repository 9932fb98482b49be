"""Node settings: one dataclass, loaded from a small JSON/YAML file and overridden from the command line.

Why a dataclass and not a dict: every option is named, typed and checked in one place, so a typo in the
config file is one clear error at start-up instead of a study that silently never gets sent.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spleenseg.errors import InputError

#: Pipeline used when the config names none: the deploy app's Python entry point, imported lazily in the job
#: process so that the node itself starts fast and without torch/Holoscan.
DEFAULT_PIPELINE = "deploy_app:run"


@dataclass
class Destination:
    """Where results are sent by C-STORE (usually the PACS that sent the study)."""

    host: str
    port: int
    ae_title: str


@dataclass
class NodeConfig:
    """Everything the node needs. Field names are the keys of the config file."""

    work_dir: str
    #: Calling AE titles allowed to associate; ``["*"]`` accepts any (not recommended next to a real PACS).
    allowed_calling_aets: list[str]
    ae_title: str = "SPLEENSEG"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    #: A study is complete when no instance of it arrived for this many seconds.
    quiet_seconds: float = 10.0
    #: Studies processed at the same time (each in its own process).
    workers: int = 1
    #: A pipeline run longer than this is killed and the study goes to ``failed/`` (0 = no limit).
    job_timeout_seconds: float = 3600.0
    model_path: str | None = None
    #: ``"module:function"`` called as ``function(input_dir, output_dir, model_path, **pipeline_options)``.
    pipeline: str = DEFAULT_PIPELINE
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    destination: Destination | None = None
    #: First wait after a failed send; doubles on each failure up to ``send_backoff_max_seconds``.
    send_backoff_seconds: float = 5.0
    send_backoff_max_seconds: float = 300.0
    #: After this many failed attempts the results go to ``failed/`` with the send log (0 = retry forever).
    send_max_attempts: int = 100
    #: First wait after the spool could not be written (disk full, read-only); doubles on each failure up to
    #: ``disk_retry_max_seconds``. The study or job stays where it is and is tried again: nothing is dropped.
    disk_retry_seconds: float = 1.0
    disk_retry_max_seconds: float = 300.0
    #: A study whose association was aborted is held (not processed) until the sender completes it on an
    #: association that ends normally, an administrator releases it, or this many seconds pass: then it goes to
    #: ``failed/`` as a job that can be moved to ``queued/`` to process it as it is (0 = hold until released).
    aborted_hold_seconds: float = 86400.0
    #: Keep the received instances of studies that were processed and sent (else they are removed then).
    keep_done_inputs: bool = False
    #: Port of the read-only HTTP status endpoint (``GET /status``); None = status file only.
    status_port: int | None = None
    status_bind_address: str = "127.0.0.1"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if isinstance(self.destination, dict):
            self.destination = _build(Destination, self.destination, "destination")
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` naming the option that is wrong."""
        _check_aet(self.ae_title, "ae_title")
        if not self.allowed_calling_aets:
            raise InputError(
                "allowed_calling_aets is empty: list the AE titles that may send studies (e.g. your PACS's), "
                'or ["*"] to accept any caller'
            )
        for aet in self.allowed_calling_aets:
            if aet != "*":
                _check_aet(aet, "allowed_calling_aets")
        _check_port(self.port, "port")
        if self.quiet_seconds < 0:
            raise InputError(f"quiet_seconds must be >= 0, got {self.quiet_seconds}")
        if self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        module, _, function = self.pipeline.partition(":")
        if not module or not function:
            raise InputError(f"pipeline must look like 'module:function', got {self.pipeline!r}")
        if self.destination is not None:
            _check_aet(self.destination.ae_title, "destination.ae_title")
            _check_port(self.destination.port, "destination.port")
        if self.send_backoff_seconds <= 0 or self.send_backoff_max_seconds < self.send_backoff_seconds:
            raise InputError("need 0 < send_backoff_seconds <= send_backoff_max_seconds")
        if self.disk_retry_seconds <= 0 or self.disk_retry_max_seconds < self.disk_retry_seconds:
            raise InputError("need 0 < disk_retry_seconds <= disk_retry_max_seconds")
        if self.aborted_hold_seconds < 0:
            raise InputError(f"aborted_hold_seconds must be >= 0, got {self.aborted_hold_seconds}")
        if self.status_port is not None:
            _check_port(self.status_port, "status_port", allow_zero=True)

    @property
    def accepts_any_caller(self) -> bool:
        return "*" in self.allowed_calling_aets

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read a JSON or YAML config file (by extension), apply non-None ``overrides``, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_file(Path(path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("destination."):
            dest = dict(values.get("destination") or {})
            dest[key.split(".", 1)[1]] = value
            values["destination"] = dest
        else:
            values[key] = value
    return _build(NodeConfig, values, str(path) if path else "command line")


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix.lower() in {".yaml", ".yml"} else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid {'YAML' if path.suffix.lower() in {'.yaml', '.yml'} else 'JSON'}: {exc}")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of option names to values")
    return data


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{where}: unknown option(s) {unknown}; known: {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{where}: missing required option(s) {missing}")
    return cls(**values)


def _check_aet(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 16 or "\\" in value:
        raise InputError(f"{name}: {value!r} is not a valid AE title (1-16 characters, no backslash)")


def _check_port(value: Any, name: str, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or not low <= value <= 65535:
        raise InputError(f"{name}: {value!r} is not a valid TCP port")
