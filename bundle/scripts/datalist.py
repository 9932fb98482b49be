"""Build MONAI datalists from an MSD-style dataset folder (``dataset.json`` + ``imagesTr``/``labelsTr``).

Why a helper and not a glob in the config: MSD ``dataset.json`` files are the contract between data
preparation and training, carry an optional ``validation`` list, and name files relative to the dataset
folder. A glob pairs images and labels by sort order and silently mis-pairs when one file is missing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .errors import InputError

SPLITS = ("training", "validation", "test")


def _resolve(dataset_dir: Path, entry: str, where: str) -> str:
    """Absolute path of one ``dataset.json`` entry; raises naming the file when it does not exist."""
    path = Path(entry)
    path = path if path.is_absolute() else (dataset_dir / path).resolve()
    if not path.is_file():
        raise InputError(f"{where}: listed file {entry!r} does not exist (looked for {path})")
    return str(path)


def _normalise(dataset_dir: Path, items: list[Any], where: str, need_label: bool) -> list[dict[str, str]]:
    """Turn MSD entries (dicts or bare image strings) into ``{"image": abs, "label": abs}`` dicts."""
    out = []
    for item in items:
        item = {"image": item} if isinstance(item, str) else dict(item)
        if "image" not in item:
            raise InputError(f"{where}: entry {item!r} has no 'image' key")
        if need_label and "label" not in item:
            raise InputError(f"{where}: entry for {item['image']!r} has no 'label' key")
        out.append({k: _resolve(dataset_dir, v, where) for k, v in item.items() if k in ("image", "label")})
    return out


def _from_folders(dataset_dir: Path) -> dict[str, list[Any]]:
    """Fallback when there is no ``dataset.json``: pair ``imagesTr``/``labelsTr`` by identical file name."""
    images = sorted((dataset_dir / "imagesTr").glob("*.nii*"))
    if not images:
        raise InputError(f"{dataset_dir}: no dataset.json and no NIfTI files in imagesTr/")
    training = []
    for img in images:
        lab = dataset_dir / "labelsTr" / img.name
        if not lab.is_file():
            raise InputError(f"{img}: no label with the same name in {dataset_dir / 'labelsTr'}")
        training.append({"image": str(img), "label": str(lab)})
    test = [str(p) for p in sorted((dataset_dir / "imagesTs").glob("*.nii*"))]
    return {"training": training, "test": test}


def read_dataset(dataset_dir: str | Path) -> dict[str, list[Any]]:
    """Raw ``training``/``validation``/``test`` lists of a dataset folder (``dataset.json`` when present)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(f"{dataset_dir}: dataset folder does not exist")
    meta_file = dataset_dir / "dataset.json"
    if not meta_file.is_file():
        return _from_folders(dataset_dir)
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{meta_file}: not a readable JSON file ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise InputError(f"{meta_file}: expected an MSD-style object with a 'training' list")
    raw = {k: meta.get(k) or [] for k in SPLITS}
    labels = meta.get("test_labels") or []
    if labels and len(labels) == len(raw["test"]):  # spleenseg phantoms keep held-out labels apart
        raw["test"] = [{"image": i if isinstance(i, str) else i["image"], "label": lab}
                       for i, lab in zip(raw["test"], labels)]
    return raw


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split: the same ``seed`` and ``n`` always give the same cases.

    ``round(n * val_fraction)`` cases validate, as the project's dataset writers split
    (``spleenseg.dataset.msd.split_cases``; the bundle imports no project code), but at least one (when
    ``n >= 2``) so the best-model checkpoint always has a score.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1) if n >= 2 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def load_datalist(
    dataset_dir: str | Path, split: str = "training", val_fraction: float = 0.2, seed: int = 0
) -> list[dict[str, str]]:
    """Datalist for one split with absolute paths.

    ``training``/``validation``: if ``dataset.json`` has a non-empty ``validation`` list it is used as is;
    otherwise the ``training`` list is split deterministically with ``val_fraction`` and ``seed``.
    ``test``: images, with labels when the entries have them or ``dataset.json`` has a matching
    ``test_labels`` list (as spleenseg phantom cohorts write), so held-out cases can be evaluated.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {SPLITS}")
    dataset_dir = Path(dataset_dir)
    raw = read_dataset(dataset_dir)
    where = str(dataset_dir / "dataset.json")
    if split == "test":
        return _normalise(dataset_dir, raw["test"], where, need_label=False)
    training = _normalise(dataset_dir, raw["training"], where, need_label=True)
    if raw.get("validation"):
        chosen = training if split == "training" else _normalise(dataset_dir, raw["validation"], where, True)
    else:
        train_idx, val_idx = split_indices(len(training), val_fraction, seed)
        chosen = [training[i] for i in (train_idx if split == "training" else val_idx)]
    if not chosen:
        raise InputError(f"{where}: the {split!r} split is empty (need at least 2 labelled training cases)")
    return chosen
