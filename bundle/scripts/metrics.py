"""Metrics in physical units for ``evaluate.json`` and a per-case table that holds every metric.

Why: MONAI's metric handlers call ``metric_fn(y_pred, y)`` without ``spacing``, so the stock Hausdorff and
surface-Dice handlers measure in voxels. Evaluation here runs in the *original* label grid, which is often
anisotropic (0.8 x 0.8 x 5 mm), so voxel units would be meaningless. These subclasses read the voxel size
from the label's affine (``MetaTensor.pixdim``) of each case.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.metrics import CumulativeIterationMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.metrics.utils import do_metric_reduction

from .files import write_text_atomic

#: summary rows under the per-case table; the median of an even count is the mean of the two middle values
#: (torch.median would return the lower one)
SUMMARY_ROWS = {"mean": torch.mean, "std": torch.std, "median": lambda v: torch.quantile(v, 0.5)}

logger = logging.getLogger(__name__)


def voxel_spacing(y: torch.Tensor) -> list[float]:
    """Voxel size in mm of a (batched) MetaTensor, from its affine; error if the tensor has no geometry."""
    pixdim = getattr(y, "pixdim", None)
    if pixdim is None:
        raise ValueError("metric input carries no affine (not a MetaTensor); cannot measure in mm")
    if isinstance(pixdim, list):  # batched MetaTensor: one entry per item
        pixdim = pixdim[0]
    return [float(v) for v in torch.as_tensor(pixdim).flatten()[: y.ndim - 2]]


class HausdorffDistanceMM(HausdorffDistanceMetric):
    """Hausdorff distance (e.g. ``percentile=95``) in millimetres of the label grid."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("spacing", voxel_spacing(y))
        return super()._compute_tensor(y_pred, y, **kwargs)


class SurfaceDiceMM(SurfaceDiceMetric):
    """Normalised surface Dice with tolerances (``class_thresholds``) in millimetres."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("spacing", voxel_spacing(y))
        return super()._compute_tensor(y_pred, y, **kwargs)


class VolumeML(CumulativeIterationMetric):
    """Foreground volume in mL of the prediction (``of="pred"``) or of the reference (``of="label"``).

    Inputs are one-hot (B, C, ...); background (channel 0) is dropped unless ``include_background``.
    """

    def __init__(self, of: str = "pred", include_background: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        if of not in ("pred", "label"):
            raise ValueError(f"VolumeML: 'of' must be 'pred' or 'label', got {of!r}")
        self.of = of
        self.include_background = include_background
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        voxel_ml = math.prod(voxel_spacing(y)) / 1000.0
        mask = y_pred if self.of == "pred" else y
        mask = mask if self.include_background else mask[:, 1:]
        return mask.flatten(2).float().sum(-1) * voxel_ml

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("VolumeML: nothing to aggregate")
        value, _ = do_metric_reduction(data, reduction or self.reduction)
        return value


def _filename(item: Any) -> str:
    """Source image file name of one decollated evaluator output item."""
    image = item.get("image") if isinstance(item, dict) else None
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class CaseTableWriter:
    """One CSV, one row per case and one column per metric, plus ``mean``/``std``/``median`` rows.

    MONAI's ``MetricsSaver`` writes one file per metric; this table is what people open in a spreadsheet.
    It fails loudly if a metric computed by the evaluator has no per-case values, instead of silently
    dropping a column (the model zoo's ``val_acc`` vs ``val_accuracy`` mistake).
    """

    def __init__(self, output_dir: str, filename: str = "metrics_per_case.csv") -> None:
        self.path = Path(output_dir) / filename
        self.cases: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        self.cases += [_filename(o) for o in (output if isinstance(output, list) else [output])]

    def _write(self, engine: Engine) -> None:
        from monai.utils import string_list_all_gather

        cases = string_list_all_gather(self.cases)
        details = getattr(engine.state, "metric_details", {}) or {}
        names = list(engine.state.metrics)
        missing = [n for n in names if n not in details]
        if missing:
            raise RuntimeError(f"metrics {missing} have no per-case values; set save_details=True for them")
        columns = {n: torch.as_tensor(details[n]).float().reshape(len(cases), -1).mean(1) for n in names}
        # a DistributedSampler pads with repeated cases when there are fewer cases than processes
        keep = [i for i, case in enumerate(cases) if case not in cases[:i]]
        cases = [cases[i] for i in keep]
        columns = {n: v[keep] for n, v in columns.items()}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_rank() > 0:
                return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["case", *names])
        for i, case in enumerate(cases):
            writer.writerow([case, *(f"{columns[n][i].item():.6g}" for n in names)])
        for op, reduce in SUMMARY_ROWS.items():
            row = []
            for n in names:
                v = columns[n][~torch.isnan(columns[n]) & ~torch.isinf(columns[n])]
                row.append(f"{reduce(v).item():.6g}" if v.numel() else "nan")
            writer.writerow([op, *row])
        write_text_atomic(self.path, buf.getvalue())
        logger.info("per-case metrics written to %s", self.path)
