"""From a checkpoint to pictures: run a bundle's own inference on a few cases, then draw panels and GIFs.

Why through the bundle: the pictures must show what ``inference.json`` produces (same preprocessing, sliding
window, inversion to the input grid), not a re-implementation that could differ. Every function takes the bundle
folder (``bundle``) whose configs, scripts and version it uses: the repository's ``bundle/``, a copy, or an older
release unpacked elsewhere (the command line ``spleenseg-visualize`` defaults to the repository's).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from spleenseg.errors import InputError
from spleenseg.paths import bundle_module
from spleenseg.report.curves import plot_learning_curves, read_metrics
from spleenseg.report.overlay import case_title, choose_slices, load_ras, slice_panel, slices_gif

logger = logging.getLogger(__name__)


def _config(bundle: Path, name: str) -> dict[str, Any]:
    """``<bundle>/configs/<name>.json``; a folder without it is not a bundle this command can use."""
    path = bundle / "configs" / f"{name}.json"
    if not path.is_file():
        raise InputError(f"{path}: not found (is {bundle} a bundle folder?)")
    return json.loads(path.read_text())


def _bundle_datalist(bundle: str | Path) -> Any:
    """The bundle's own ``scripts/datalist.py``."""
    return bundle_module(bundle, "datalist")


def _cases(bundle: str | Path, dataset_dir: Path, split: str, n_cases: int, val_fraction: float | None = None,
           seed: int | None = None) -> list[dict[str, Path | None]]:
    """Image/label pairs of a split, chosen as training and evaluation choose them (the bundle's
    ``load_datalist``: a dataset without a ``validation`` list, like MSD Task09, gets train.json's
    ``val_fraction``/``seed`` split; ``test`` labels from ``test_labels``)."""
    defaults = _config(Path(bundle), "train")
    bundle_input_error = bundle_module(bundle, "errors").InputError
    try:
        datalist = _bundle_datalist(bundle).load_datalist(
            dataset_dir, split, defaults["val_fraction"] if val_fraction is None else val_fraction,
            defaults["seed"] if seed is None else seed)
    except bundle_input_error as exc:  # the bundle's own class, not ours: still one line and exit 2 here
        raise InputError(str(exc)) from exc
    return [{"image": Path(d["image"]), "label": Path(d["label"]) if d.get("label") else None}
            for d in datalist[:n_cases]]


def run_bundle_inference(bundle: str | Path, images: list[Path], out_dir: Path, ckpt: Path, **overrides: Any
                         ) -> dict[Path, Path]:
    """Run ``<bundle>/configs/inference.json`` in this process on ``images``; returns image → predicted mask."""
    from monai.bundle import ConfigWorkflow

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        links = {}
        for i, img in enumerate(images):
            link = inputs / f"case{i:03d}_{img.name}"
            link.symlink_to(img)
            links[img] = link
        wf = ConfigWorkflow(config_file=str(Path(bundle) / "configs" / "inference.json"), workflow_type="infer",
                            logging_file=False, bundle_root=str(bundle), input_dir=str(inputs),
                            output_dir=str(out_dir), ckpt_path=str(ckpt), **overrides)
        wf.initialize()
        wf.run()
        wf.finalize()
    stem = {img: link.name.split(".nii")[0] for img, link in links.items()}
    return {img: out_dir / f"{stem[img]}_seg.nii.gz" for img in images}


def model_label(ckpt: Path, bundle: str | Path) -> str:
    """The checkpoint (relative to the working folder when inside it) and the version of the bundle whose
    ``inference.json`` ran it, e.g. ``runs/train/models/model.pt (bundle 0.2.0)``: a figure must say which
    weights made its mask, and every checkpoint is called ``model.pt``."""
    version = _config(Path(bundle), "metadata")["version"]
    path = ckpt.resolve()
    shown = path.relative_to(Path.cwd().resolve()) if path.is_relative_to(Path.cwd().resolve()) else path
    return f"{shown} (bundle {version})"


def _switch(value: Any, name: str) -> bool:
    from monai.utils import str2bool

    try:
        return str2bool(str(value))
    except ValueError as exc:
        raise InputError(f"--{name} {value!r}: expected true or false") from exc


def check_overrides(bundle: Path, overrides: dict[str, Any], command: str = "visualize") -> None:
    """Refuse options that are neither ``command``'s nor keys of the bundle's ``inference.json`` (typos such
    as ``--n_slice`` or ``--overlapp`` would otherwise be passed on and silently ignored)."""
    keys = set(_config(bundle, "inference"))
    unknown = [k for k in overrides if k.split("#")[0] not in keys]
    if unknown:
        raise InputError(f"unknown option(s) {', '.join('--' + k for k in unknown)}: not an option of {command} "
                         f"and not a key of {bundle / 'configs' / 'inference.json'}")


def visualize(
    dataset_dir: str | Path, out_dir: str | Path, bundle: str | Path, ckpt: str | Path | None = None,
    split: str = "validation", n_cases: int = 2, n_slices: int = 3, metrics: str | Path | None = None,
    gif: bool = True, val_fraction: float | None = None, seed: int | None = None, **overrides: Any,
) -> list[Path]:
    """Panels (PNG) for ``n_slices`` slices of ``n_cases`` cases, one GIF per case, and the learning curves.

    ``bundle`` is the bundle folder whose ``inference.json`` makes the masks, whose ``load_datalist`` picks the
    cases and whose version the titles name; ``ckpt`` defaults to its ``models/model.pt``.

    ``val_fraction``/``seed`` (default: the bundle's train.json) pick the validation cases of a dataset without
    a ``validation`` list, as training did.

    ``overrides`` go to ``inference.json`` (e.g. ``pixdim``, ``roi_size``) and must match how the model was
    trained.
    """
    bundle = Path(bundle)
    ckpt = bundle / "models" / "model.pt" if ckpt is None else Path(ckpt)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    gif = _switch(gif, "gif")  # "--gif false" from the command line arrives as the string "false"
    check_overrides(bundle, overrides)
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: checkpoint does not exist")
    cases = _cases(bundle, dataset_dir, split, n_cases, val_fraction, seed)
    preds = run_bundle_inference(bundle, [c["image"] for c in cases], out_dir / "predictions", ckpt, **overrides)
    model = model_label(ckpt, bundle)
    written: list[Path] = []
    for case in cases:
        image = load_ras(case["image"])
        pred = load_ras(preds[case["image"]])
        ref = load_ras(case["label"]) if case["label"] else None
        name = case["image"].name.split(".nii")[0]
        title = case_title(name, model, pred, ref)
        for z in choose_slices((ref or pred).data > 0, n_slices):
            written.append(slice_panel(image, ref, pred, z, out_dir / f"{name}_slice{z:03d}.png", title=title))
        if gif:
            written.append(slices_gif(image, ref, pred, out_dir / f"{name}.gif", title=title))
    if metrics:
        written.append(plot_learning_curves(read_metrics(metrics), out_dir / "learning_curves.png"))
    for path in written:
        logger.info("wrote %s", path)
    return written
