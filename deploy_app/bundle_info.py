"""Check a model path before starting the pipeline, and read the bundle's metadata for the SEG and report.

The app accepts two kinds of model (see the README, "Deployment"): a MONAI bundle *folder* with
``configs/metadata.json``, ``configs/inference.json`` and ``models/model.pt`` (plain weights, no TorchScript),
or a TorchScript bundle *file* made by ``python -m monai.bundle ckpt_export`` (metadata under ``extra/``).
Anything else gets one clear error before any output is written.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from deploy_app.qa import QA_OUTPUT
from spleenseg.errors import InputError


def _folder_metadata(path: Path) -> dict[str, Any]:
    for needed in ("configs/metadata.json", "configs/inference.json"):
        if not (path / needed).is_file():
            raise InputError(f"{path}: not a usable MONAI bundle folder, {needed} is missing")
    if not any((path / "models" / name).is_file() for name in ("model.pt", "model.ts")):
        raise InputError(f"{path}: not a usable MONAI bundle folder, models/model.pt is missing (train the model "
                         f"or point -m to a bundle that has weights)")
    return json.loads((path / "configs/metadata.json").read_text())


def _torchscript_metadata(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            meta = [n for n in names if n.endswith("extra/metadata.json")]
            if not meta or not any(n.endswith("extra/inference.json") for n in names):
                raise InputError(f"{path}: not a TorchScript bundle (no extra/metadata.json and extra/inference.json "
                                 f"inside); pass the bundle folder that holds models/model.pt, or a file made by "
                                 f"`python -m monai.bundle ckpt_export`")
            config = archive.read(next(n for n in names if n.endswith("extra/inference.json"))).decode()
            if "$scripts." in config and bundle_code_root(path) is None:
                raise InputError(f"{path}: this TorchScript bundle's inference.json uses the bundle's own code "
                                 f"($scripts...), which a TorchScript file does not carry; keep it as "
                                 f"<bundle>/models/model.ts beside <bundle>/scripts/, or pass the bundle folder")
            return json.loads(archive.read(meta[0]))
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not a MONAI bundle folder nor a TorchScript bundle file ({exc})") from exc


def bundle_code_root(model_file: Path) -> Path | None:
    """The bundle folder of a TorchScript file kept as ``<bundle>/models/model.ts``, when it has ``scripts/``.

    Why: a TorchScript export carries the network and the configs but no Python code, and the bundle's
    post-processing names its own transforms (``$scripts.transforms...``); they come from the bundle folder.
    """
    root = Path(model_file).resolve().parent.parent
    if Path(model_file).resolve().parent.name == "models" and (root / "scripts" / "__init__.py").is_file():
        return root
    return None


def _is_bundle(path: Path) -> bool:
    return (path / "configs").is_dir() or (path.is_file() and zipfile.is_zipfile(path))


def resolve_model_path(model_path: str | Path) -> Path:
    """The bundle to use: ``model_path`` itself, or its only entry when it is a models folder.

    A MAP built with ``monai-deploy package -m <bundle>`` mounts the model under ``/opt/holoscan/models``,
    possibly one level down; both layouts work.
    """
    path = Path(model_path)
    if path.is_dir() and not (path / "configs").exists():
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and _is_bundle(p)]
        if len(entries) == 1:
            return entries[0]
    return path


def read_model_metadata(model_path: str | Path) -> dict[str, Any]:
    """Bundle ``metadata.json`` of a usable model path, else :class:`InputError` naming the problem."""
    path = Path(model_path)
    if not path.exists():
        raise InputError(f"{path}: model path does not exist")
    try:
        metadata = _folder_metadata(path) if path.is_dir() else _torchscript_metadata(path)
    except ValueError as exc:  # JSONDecodeError
        raise InputError(f"{path}: bundle metadata.json is not valid JSON ({exc})") from exc
    if not metadata.get("network_data_format"):
        raise InputError(f"{path}: bundle metadata.json has no network_data_format (inputs/outputs)")
    outputs = metadata["network_data_format"].get("outputs") or {}
    if list(outputs)[:1] != ["pred"] or QA_OUTPUT not in outputs:
        # The SDK operator sends a single post-processing result to the first output, and the app waits for
        # both: without these two the run would end with no SEG and no message.
        raise InputError(f"{path}: bundle metadata.json must declare the outputs 'pred' (first) and "
                         f"'{QA_OUTPUT}' (the QA dict of the spleen selection); it declares {list(outputs)}")
    return metadata


def model_identity(metadata: dict[str, Any]) -> dict[str, str]:
    """Name and version written into the SEG's algorithm identification and the report."""
    return {"name": str(metadata.get("name") or "spleen segmentation"), "version": str(metadata.get("version", ""))}
