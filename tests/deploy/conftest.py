"""Fixtures for the deploy app tests: a bundle with a tiny model that really segments phantoms, and studies.

The model is trained here, once per session, with the repository bundle's own network and pre-processing
(``bundle/configs/inference.json``), on a few phantoms whose field of view is cropped around the spleen (so one
96^3 sliding window covers a whole volume and CPU time stays small). The training set includes the two
patients of the end-to-end study on purpose: these tests check the app's geometry (DICOM -> model -> SEG in
patient coordinates), not how well a 1-minute model generalises. The model is trained from the phantoms'
own arrays and RAS affines, never through the app, so a mirrored or shifted pipeline still fails Dice.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from testkit.constant_model import constant_output_bundle
from testkit.deploy import PATIENT_A_SEED, PATIENT_B_SEED, cropped_phantom
from spleenseg.paths import BUNDLE_DIR
from spleenseg.phantom import Phantom, write_dicom_series, write_non_ct_series, write_scout

TRAIN_SEEDS = (7, 11, 101, 102)
TRAIN_ITERATIONS = 60


def _training_pairs(parser, phantoms: list[Phantom]) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantoms through the bundle's pre-processing; labels resampled onto the same grid (nearest)."""
    from monai.data import MetaTensor
    from monai.transforms import DivisiblePad, SpatialResample

    pre = parser.get_parsed_content("preprocessing")
    pre.transforms = tuple(t for t in pre.transforms if "LoadImage" not in type(t).__name__)
    pad = DivisiblePad(16)
    images, labels = [], []
    for ph in phantoms:
        meta = {"original_channel_dim": "no_channel", "space": "RAS"}
        image = pre({"image": MetaTensor(torch.as_tensor(ph.image, dtype=torch.float32),
                                         affine=torch.as_tensor(ph.affine), meta=meta)})["image"]
        label = MetaTensor(torch.as_tensor(ph.label[None], dtype=torch.float32), affine=torch.as_tensor(ph.affine))
        label = SpatialResample(mode="nearest")(label, dst_affine=image.affine, spatial_size=image.shape[1:])
        images.append(pad(image.as_tensor()))
        labels.append(pad(label.as_tensor()))
    return torch.stack(images), torch.stack(labels)


def train_tiny_model(configs: Path, out: Path, cache_dir: Path | None = None) -> None:
    """A few dozen full-volume Adam steps of the bundle's UNet on the phantoms.

    With ``cache_dir`` (pytest's cache) the weights are reused when the training inputs (pre-processed arrays,
    network config, recipe) are byte-identical, so only the first run on a machine pays for training.
    """
    import hashlib

    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    x, y = _training_pairs(parser, [cropped_phantom(s) for s in TRAIN_SEEDS])
    key = hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes() + repr(
        (parser.get("network_def"), TRAIN_ITERATIONS, torch.__version__)).encode()).hexdigest()[:16]
    cached = cache_dir / f"{key}.pt" if cache_dir else None
    if cached is not None and cached.is_file():
        shutil.copy(cached, out)
        return
    net = parser.get_parsed_content("network_def")
    optimiser = torch.optim.Adam(net.parameters(), 2e-3)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    for _ in range(TRAIN_ITERATIONS):
        optimiser.zero_grad()
        loss(net(x), y).backward()
        optimiser.step()
    torch.save(net.state_dict(), out)
    if cached is not None:
        shutil.copy(out, cached)


def copy_bundle_code(root: Path) -> None:
    """The repository bundle's ``configs/`` and ``scripts/`` (its post-processing uses the bundle's own
    transforms), without weights."""
    for part in ("configs", "scripts"):
        shutil.copytree(BUNDLE_DIR / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """A copy of the repository bundle's configs with a freshly trained ``models/model.pt``."""
    configs = BUNDLE_DIR / "configs"
    if not (configs / "inference.json").is_file() or not (configs / "metadata.json").is_file():
        pytest.fail(f"{configs}: the bundle's inference.json/metadata.json are missing")
    root = tmp_path_factory.mktemp("bundle") / "spleen_bundle"
    copy_bundle_code(root)
    (root / "models").mkdir()
    cache_plugin = getattr(pytestconfig, "cache", None)  # absent with -p no:cacheprovider
    cache = cache_plugin.mkdir("deploy_tiny_model") if cache_plugin is not None else None
    train_tiny_model(root / "configs", root / "models" / "model.pt", cache)
    return root


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One folder, two patients. A: thin axial CT (24 slices, the right choice), thick CT of the same study
    (12 slices), a coronal CT scout and a secondary capture. B: one axial CT series (names shuffled, reversed)."""
    root = tmp_path_factory.mktemp("study") / "dicom"
    a, b = cropped_phantom(PATIENT_A_SEED), cropped_phantom(PATIENT_B_SEED)
    a_thin = write_dicom_series(a, root / "a", series_number=2)
    a_thick_ph = cropped_phantom(PATIENT_A_SEED, shape=(48, 48, 12), spacing=(3.0, 3.0, 8.0))
    a_thick = write_dicom_series(a_thick_ph, root / "a_thick", series_number=3, study_uid=_study_uid(a_thin),
                                 series_description="Abdomen thick 8mm")
    write_scout(a, root / "a")
    write_non_ct_series(a, root / "a")
    b_ct = write_dicom_series(b, root / "b", series_number=4, reverse=True, shuffle_names=True, nested=True)
    return {"folder": root, "a": a, "b": b, "a_thin": a_thin, "a_thick": a_thick, "b_ct": b_ct}


def _study_uid(paths: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


class _Records(logging.Handler):
    """Keeps every log record of a session-scoped run (pytest's caplog is per test)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory: pytest.TempPathFactory, phantom_study: dict, trained_bundle: Path):
    """One real Holoscan run of the app on the phantom study, with the STL and NIfTI options on, and the log
    records of the app's own loggers during that run."""
    import deploy_app

    logging.getLogger("highdicom").setLevel(logging.WARNING)
    out = tmp_path_factory.mktemp("e2e") / "out"
    handler, app_log = _Records(), logging.getLogger("deploy_app")
    level = app_log.level
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    try:
        result = deploy_app.run(phantom_study["folder"], out, trained_bundle, stl=True, nifti=True)
    finally:
        app_log.removeHandler(handler)
        app_log.setLevel(level)
    return result, handler.records


@pytest.fixture(scope="session")
def e2e_result(e2e_run):
    return e2e_run[0]


@pytest.fixture(scope="session")
def e2e_log(e2e_run) -> list[logging.LogRecord]:
    return e2e_run[1]


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository bundle's configs with randomly initialised weights: for runs whose mask does not matter."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("untrained") / "bundle"
    copy_bundle_code(root)
    (root / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="session")
def nothing_found_bundle(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle with weights that predict background everywhere (zero convolutions, background bias): a model
    that finds no spleen in any input, deterministically."""
    return constant_output_bundle(untrained_bundle, tmp_path_factory.mktemp("nothing") / "bundle",
                                  background=5.0, spleen=-5.0)


@pytest.fixture
def small_series(tmp_path: Path) -> list[Path]:
    """A 24-slice axial CT series of a cropped phantom in ``tmp_path/in`` (IM0001.dcm... in order)."""
    return write_dicom_series(cropped_phantom(PATIENT_B_SEED), tmp_path / "in")


@pytest.fixture(scope="session")
def fast_bundle(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained bundle whose sliding window uses big, non-overlapping tiles: for 512x512 inputs whose mask
    content does not matter (DICOM decoding and SEG geometry tests), to keep CPU time small."""
    import json

    root = tmp_path_factory.mktemp("fast") / "bundle"
    shutil.copytree(untrained_bundle, root)
    config_path = root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config.update({"roi_size": [256, 256, 32], "overlap": 0.0, "sw_batch_size": 1})
    config_path.write_text(json.dumps(config, indent=1))
    return root
