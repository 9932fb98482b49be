"""Training augmentations that make the few real labelled cases look like the real scans they lack.

Why: leave-one-real-case-out showed the network learns each real case's look rather than the spleen. Trained
without MSD spleen_8 it misses that enhanced (median 158 HU) 756 mL spleen almost entirely, because every other
real spleen it saw is native (35-50 HU); trained without the DTU patient it finds nothing on that patient's
3-slice slabs, because every other real case is a thick volume. The phantoms vary both, but the network tells
phantoms from real CT. These transforms vary the same things on the real cases themselves:

- :class:`RandContrastPhased`: portal-venous enhancement. Soft tissue (organs, muscle; not fat, air or bone)
  brightens by one random amount and the labelled spleen by a second one on top, through a smoothed mask so no
  artificial edge marks the spleen.
- :class:`RandThinSlabd`: a scan that covers only a few slices. Outside a random slab everything becomes the
  padding value (0, the window's floor) and the label background, as inference pads a short scan.
- :class:`RandThickSlicesd`: thick reconstructions (MSD spleen_8 has 7.5 mm slices): a box filter along the
  patient's z axis, the partial-volume blur of a thick slice.

All three run on a training patch after ``ScaleIntensityRanged`` (image in window units 0..1, label 0/1 on the
same grid, RAS after ``Orientationd``) and take HU and mm, so they stay right when the window or ``pixdim``
changes. Never a left-right flip: the side of the spleen is anatomy.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

SPLEEN = 1


def _z_spacing_mm(image: Any) -> float:
    """Voxel size along the array's last axis (patient z after ``Orientationd``), from the MetaTensor affine."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return 1.0
    return float(np.linalg.norm(np.asarray(affine, dtype=float)[:3, 2]))


def _uniform(rng: np.random.RandomState, bounds: Sequence[float]) -> float:
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


class RandContrastPhased(RandomizableTransform, MapTransform):
    """Brighten soft tissue by ``tissue_hu`` and the spleen by ``spleen_hu`` more, then clip to the window.

    ``tissue_band_hu``: HU range that counts as enhancing soft tissue, with ``ramp_hu`` of soft edges (fat at
    -100 HU and bone above it stay put). ``sigma_vox``: smoothing of the spleen mask, in voxels.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", prob: float = 0.5,
                 a_min: float = -57.0, a_max: float = 164.0, tissue_hu: Sequence[float] = (0.0, 80.0),
                 spleen_hu: Sequence[float] = (-30.0, 80.0), tissue_band_hu: Sequence[float] = (-10.0, 90.0),
                 ramp_hu: float = 20.0, sigma_vox: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.a_min, self.width = label_key, float(a_min), float(a_max) - float(a_min)
        self.tissue_hu, self.spleen_hu, self.band, self.ramp = tissue_hu, spleen_hu, tissue_band_hu, ramp_hu
        self.sigma = sigma_vox
        self._tissue = self._spleen = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._tissue = _uniform(self.R, self.tissue_hu)
        self._spleen = _uniform(self.R, self.spleen_hu)

    def shift_hu(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The HU added at each voxel: soft-tissue weight times the tissue shift, smoothed spleen times its own."""
        hu = image * self.width + self.a_min
        lo, hi = float(self.band[0]), float(self.band[1])
        rising = torch.clamp((hu - (lo - self.ramp)) / self.ramp, 0, 1)
        tissue = rising * torch.clamp(((hi + self.ramp) - hu) / self.ramp, 0, 1)
        spleen = (label == SPLEEN).float().cpu().numpy()
        if self.sigma > 0:
            spleen = ndimage.gaussian_filter(spleen, sigma=[0] + [self.sigma] * (spleen.ndim - 1))
        return tissue * self._tissue + torch.as_tensor(spleen, dtype=image.dtype, device=image.device) * self._spleen

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            d[key] = torch.clamp(image + self.shift_hu(image, d[self.label_key]) / self.width, 0.0, 1.0)
        return d


class RandThinSlabd(RandomizableTransform, MapTransform):
    """Keep a slab of ``thickness_mm`` along z (through the spleen when the patch has one); blank the rest."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", prob: float = 0.15,
                 thickness_mm: Sequence[float] = (6.0, 30.0), fill: float = 0.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.thickness_mm, self.fill = label_key, thickness_mm, fill

    def slab(self, label: torch.Tensor, z_mm: float) -> tuple[int, int]:
        """First and one-past-last z index of the kept slab."""
        depth = label.shape[-1]
        n = max(1, min(depth, int(round(_uniform(self.R, self.thickness_mm) / max(z_mm, 1e-3)))))
        spleen_z = torch.nonzero((label == SPLEEN).flatten(0, -2).any(dim=0)).flatten().tolist()
        centre = int(self.R.choice(spleen_z)) if spleen_z else int(self.R.randint(depth))
        start = min(max(centre - n // 2, 0), depth - n)
        return start, start + n

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = d[self.label_key]
        start, stop = self.slab(label, _z_spacing_mm(label))
        for key in self.key_iterator(d):
            out = d[key].clone()
            out[..., :start] = 0 if key == self.label_key else self.fill
            out[..., stop:] = 0 if key == self.label_key else self.fill
            d[key] = out
        return d


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """Average the image over ``thickness_mm`` along z, as a thick-slice reconstruction does (label unchanged)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.25, thickness_mm: Sequence[float] = (4.0, 8.0)) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.thickness_mm = thickness_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        thickness = _uniform(self.R, self.thickness_mm)
        for key in self.key_iterator(d):
            image = d[key]
            size = int(round(thickness / max(_z_spacing_mm(image), 1e-3)))
            if size < 2:
                continue
            blurred = ndimage.uniform_filter1d(image.detach().cpu().numpy(), size=size, axis=-1, mode="nearest")
            out = image.clone()
            out[:] = torch.as_tensor(blurred, dtype=image.dtype)
            d[key] = out
        return d
