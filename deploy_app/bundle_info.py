"""Check a model path before starting the pipeline, and read the bundle's metadata for the SEG and report.

The app accepts two kinds of model (see the README, "Deployment"): a MONAI bundle *folder* with
``configs/metadata.json``, ``configs/inference.json`` and ``models/model.pt`` (plain weights, no TorchScript),
or a TorchScript bundle *file* made by ``python -m monai.bundle ckpt_export`` (metadata under ``extra/``).
Anything else gets one clear error before any output is written.

The app runs the bundle's ``inference`` graph unchanged through the SDK's stock ``MonaiBundleInferenceOperator``;
it only layers ``configs/deploy.json`` (no progress bar) when the bundle has it, puts the bundle's ``scripts``
package on the import path, and gives a bundle folder's model its network (:func:`prepare_model`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from deploy_app.qa import QA_OUTPUT
from spleenseg.errors import InputError

log = logging.getLogger(__name__)
#: The bundle's inference config, and the optional config the app layers on it.
INFERENCE_CONFIG, DEPLOY_CONFIG = "inference", "deploy"


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


def config_names(model_path: str | Path) -> list[str]:
    """``["inference", "deploy"]`` when the bundle (folder or TorchScript file) holds ``deploy.json``, else
    ``["inference"]`` (a TorchScript file exported with ``inference.json`` alone still runs, with the bar)."""
    path = Path(model_path)
    if path.is_dir():
        has_deploy = (path / "configs" / f"{DEPLOY_CONFIG}.json").is_file()
    else:
        with zipfile.ZipFile(path) as archive:
            has_deploy = any(n.endswith(f"extra/{DEPLOY_CONFIG}.json") for n in archive.namelist())
    return [INFERENCE_CONFIG, DEPLOY_CONFIG] if has_deploy else [INFERENCE_CONFIG]


def use_bundle_scripts(bundle: Path) -> None:
    """Make ``import scripts`` find ``bundle/scripts`` (the bundle's own transforms in its post-processing).

    Why: the bundle's ``initialize`` section puts its root on ``sys.path``, but the SDK never runs it; and one
    process may load several bundles (a copy, an older release, another model), so a ``scripts`` package that
    another bundle imported earlier would hide this bundle's and its transforms would fail with "Cannot locate
    class or function path" (or silently run the other bundle's code).
    """
    root = str(bundle.resolve())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    loaded = sys.modules.get("scripts")
    origin = [*getattr(loaded, "__path__", []), str(getattr(loaded, "__file__", None) or "")]
    if loaded is not None and not any(str(p).startswith(root + os.sep) for p in origin):
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]


def load_folder_network(bundle: Path) -> Any:
    """The network of a bundle folder with its trained weights, on the config's ``device``, in eval mode.

    Why: the SDK's ``AppContext`` wraps a bundle *folder* in a generic ``Model`` without a predictor (the
    stock operator then fails with "A predictor of the model is not set"), so the app builds the predictor the
    way ``inference.json``'s ``CheckpointLoader`` does: ``network`` from the configs, ``models/model.pt``.
    """
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.read_config([str(bundle / "configs" / f"{name}.json") for name in config_names(bundle)])
    device = parser.get_parsed_content("device")
    weights, scripted = bundle / "models" / "model.pt", bundle / "models" / "model.ts"
    if not weights.is_file() and scripted.is_file():
        return torch.jit.load(str(scripted), map_location=device).eval()
    network = parser.get_parsed_content("network")
    state = torch.load(str(weights), map_location=device, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # {"model": ...}, as CheckpointSaver writes
        state = state["model"]
    network.load_state_dict(state)
    return network.eval()


def prepare_model(models: Any, model_path: Path) -> None:
    """Check that the app context's model loads, and give a bundle folder's model its network.

    A model that cannot be used raises :class:`InputError` naming the path, before the pipeline starts.
    """
    model = models.get() if models is not None else None
    if model is None:
        raise InputError(f"{model_path}: the MONAI Deploy SDK found no model here")
    if Path(model.path).is_dir():
        use_bundle_scripts(Path(model.path))
        try:
            model.predictor = load_folder_network(Path(model.path))
        except Exception as exc:  # noqa: BLE001 - any failure here means "this is not a usable model"
            raise InputError(f"{model.path}: not a usable MONAI bundle ({type(exc).__name__}: {exc})") from exc
        log.info("loaded bundle folder %s (network from configs, weights from models/)", model.path)
        return
    code = bundle_code_root(Path(model.path))
    if code is not None:
        use_bundle_scripts(code)
    try:
        predictor = model.predictor  # TorchScript: loaded on first access; a broken file fails here
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{model.path}: cannot load the TorchScript model ({exc})") from exc
    if predictor is None:  # the SDK did not take the file for a TorchScript model
        raise InputError(f"{model.path}: not a TorchScript model (a TorchScript file is a zip holding "
                         f"code/, data.pkl and constants); pass the bundle folder, or a file made by "
                         f"`python -m monai.bundle ckpt_export`")
