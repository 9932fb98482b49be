"""``Invertd`` for a probability that is thresholded next, resampled only where it can reach the threshold.

Why: the bundle's post-processing is "spleen probability → ``Invertd`` → ``AsDiscreted(threshold=0.5)``".
``Invertd`` resamples the probability onto every voxel of the source CT (an affine grid plus ``grid_sample``
over ~17 M voxels for a 512x512x120 CT: 0.8 s of the app's ~7 s on two cores), yet only the few per cent of
voxels near the spleen can end up at or above the threshold: a (tri)linear value reaches it only where one of
the neighbouring model-grid voxels does. :class:`BoxInvertd` therefore resamples, with MONAI's own
``SpatialResample`` and the mode/padding/dtype recorded by the bundle's ``Spacingd``, only inside the source-grid
box around the model voxels at or above the threshold (plus one voxel); everywhere else it writes 0. After the
threshold the mask equals ``Invertd``'s (the tests compare them voxel by voxel; only a value within float
rounding, ~1e-6, of the threshold could land on the other side); the probability values
themselves are *not* kept outside the box, so the swap is made only where a threshold follows (see
:func:`swap_thresholded_invertd`).

It falls back to the wrapped ``Invertd`` whenever the shortcut is not exact: pre-processing other than
crop/reorient/one resample, nearest-neighbour inversion, or a foreground within a few voxels of the model grid's
edge (where ``Invertd``'s padding would differ from a single resample).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Hashable, Mapping

import numpy as np
import torch

from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, Invertd, MapTransform, SpatialResample
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import TraceKeys

log = logging.getLogger(__name__)

#: Applied operations whose inverse moves voxels without interpolating (crop, pad, axis flips/permutations).
EXACT_OPS = {"CropForeground", "Orientation", "SpatialCrop", "SpatialPad", "BorderPad", "Pad", "Crop", "Flip"}
RESAMPLE_OP = "SpatialResample"
#: A foreground this close (model voxels) to the model grid's edge takes the exact ``Invertd`` path.
EDGE_MARGIN = 3


def _resample_op(image: MetaTensor) -> dict | None:
    """The single resampling op in ``image``'s trace when all others are exact moves, else ``None``."""
    ops = image.applied_operations
    classes = [str(op[TraceKeys.CLASS_NAME]) for op in ops]
    resamples = [op for op, name in zip(ops, classes) if name == RESAMPLE_OP]
    if len(resamples) != 1 or any(name not in EXACT_OPS | {RESAMPLE_OP} for name in classes):
        return None
    for op in ops:  # a crop that also padded (allow_smaller) is fine; a pad with a non-zero value is not
        pad = op.get(TraceKeys.EXTRA_INFO, {}).get("pad_info")
        if pad and pad.get(TraceKeys.EXTRA_INFO, {}).get("mode", "constant") != "constant":
            return None
    return resamples[0]


def source_box(pred: torch.Tensor, threshold: float, model_affine: np.ndarray, source_affine: np.ndarray,
               source_shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Source-grid index box holding every voxel whose resampled value can reach ``threshold``.

    ``pred`` is the channel-first model-grid probability. A linear sample reaches the threshold only within one
    model voxel of a voxel that does; the corners of that box, widened by one voxel, are mapped to source
    indices. Returns ``None`` when the box comes within :data:`EDGE_MARGIN` voxels of the model grid's edge.
    """
    start, end = generate_spatial_bounding_box(pred, select_fn=lambda x: x >= threshold, margin=1)
    if any(a < EDGE_MARGIN or b > n - EDGE_MARGIN for a, b, n in zip(start, end, pred.shape[1:])):
        return None
    corners = np.array([[*c, 1.0] for c in itertools.product(*zip(start, np.subtract(end, 1)))]).T  # (4, 8)
    index = np.linalg.solve(source_affine, model_affine @ corners)[:3]  # source indices of the corners
    lo = np.clip(np.floor(index.min(axis=1) - 1e-6).astype(int), 0, np.asarray(source_shape) - 1)
    hi = np.clip(np.ceil(index.max(axis=1) + 1e-6).astype(int) + 1, 1, np.asarray(source_shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class BoxInvertd(MapTransform):
    """Drop-in for ``Invertd`` when ``AsDiscreted(threshold=...)`` follows on the same keys (see module doc)."""

    def __init__(self, invertd: Invertd, threshold: float) -> None:
        super().__init__(invertd.keys, invertd.allow_missing_keys)
        self.invertd = invertd
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, orig_key, nearest in zip(self.invertd.keys, self.invertd.orig_keys, self.invertd.nearest_interp):
            inverted = None if nearest else self._invert_in_box(d[key], d.get(orig_key))
            if inverted is None:
                log.info("Invertd of %s: shortcut not exact here, running the full Invertd", key)
                return self.invertd(data)
            d[key] = inverted
        return d

    def _invert_in_box(self, pred: Any, image: Any) -> MetaTensor | None:
        if not isinstance(image, MetaTensor) or not isinstance(pred, torch.Tensor) or pred.ndim != 4:
            return None
        op = _resample_op(image)
        source_affine = image.meta.get("original_affine")
        if op is None or source_affine is None or not image.applied_operations:
            return None
        source_shape = tuple(int(s) for s in image.applied_operations[0][TraceKeys.ORIG_SIZE])
        source_affine = np.asarray(source_affine, dtype=np.float64)
        model_affine = np.asarray(image.affine, dtype=np.float64)
        out = torch.zeros((pred.shape[0], *source_shape), dtype=torch.float32)
        if not bool((pred >= self.threshold).any()):
            return MetaTensor(out, affine=torch.as_tensor(source_affine), meta=self._source_meta(image))
        box = source_box(pred, self.threshold, model_affine, source_affine, source_shape)
        if box is None:
            return None
        info = op[TraceKeys.EXTRA_INFO]
        shift = np.eye(4)
        shift[:3, 3] = [b.start for b in box]
        resample = SpatialResample(mode=info["mode"], padding_mode=info["padding_mode"],
                                   align_corners=None if info["align_corners"] == TraceKeys.NONE
                                   else info["align_corners"], dtype=getattr(torch, info["dtype"]))
        src = MetaTensor(pred.as_tensor() if isinstance(pred, MetaTensor) else pred, affine=image.affine)
        with resample.trace_transform(False):
            part = resample(src, dst_affine=torch.as_tensor(source_affine @ shift),
                            spatial_size=[b.stop - b.start for b in box])
        out[(slice(None), *box)] = torch.as_tensor(part, dtype=torch.float32)
        return MetaTensor(out, affine=torch.as_tensor(source_affine), meta=self._source_meta(image))

    @staticmethod
    def _source_meta(image: MetaTensor) -> dict:
        meta = dict(image.meta)
        meta["affine"] = torch.as_tensor(np.asarray(meta["original_affine"], dtype=np.float64))
        return meta


def swap_thresholded_invertd(compose: Compose) -> Compose:
    """Replace each ``Invertd`` directly followed by ``AsDiscreted(threshold=t)`` on the same keys with
    :class:`BoxInvertd`; other transforms are kept as they are."""
    transforms = list(compose.transforms)
    for i, (current, following) in enumerate(zip(transforms, transforms[1:])):
        if not (isinstance(current, Invertd) and isinstance(following, AsDiscreted)):
            continue
        thresholds = {following.threshold[following.keys.index(k)] for k in current.keys if k in following.keys}
        if len(thresholds) == 1 and None not in thresholds and set(current.keys) <= set(following.keys) \
                and not any(following.argmax) and not any(following.to_onehot):
            transforms[i] = BoxInvertd(current, thresholds.pop())
            log.info("post-processing: Invertd of %s runs only around the foreground (threshold follows)",
                     ", ".join(map(str, current.keys)))
    compose.transforms = transforms
    return compose
