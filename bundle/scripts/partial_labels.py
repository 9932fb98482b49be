"""Training on a mix of multi-organ and spleen-only labels.

Why: the network has to learn the liver (and kidneys, stomach) to stop calling the liver "spleen", but most
real labels mark the spleen alone. A spleen-only case says nothing about which *other* organ a voxel belongs
to, so punishing a "liver" answer there would teach the network to never predict the liver on real CT. Such
voxels are marked :data:`NOT_SPLEEN` ("some class other than spleen") and the loss only asks that their
spleen probability be low: the non-spleen channels are merged into one for them.

Label scheme (``out_channels`` = 5): 0 background, 1 spleen, 2 liver, 3 kidney, 4 stomach; 5 = not spleen,
organ unknown (spleen-only cases, set by :class:`MarkSpleenOnlyd`).
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.transforms import MapTransform

SPLEEN = 1
NOT_SPLEEN = 5


class MarkSpleenOnlyd(MapTransform):
    """Mark the background of spleen-only labels (values 0/1 only) as :data:`NOT_SPLEEN`.

    A label map that holds any organ value above 1 is multi-organ and left as it is. The rule needs no
    per-case flag, so an MSD Task09 folder trains as spleen-only without any conversion.
    """

    def __init__(self, keys: Sequence[Hashable], spleen: int = SPLEEN, not_spleen: int = NOT_SPLEEN) -> None:
        super().__init__(keys)
        self.spleen, self.not_spleen = spleen, not_spleen

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if label.max() <= self.spleen:
                d[key] = torch.where(label == self.spleen, label, torch.full_like(label, self.not_spleen))
        return d


class SpleenOnlyd(MapTransform):
    """Reduce a prediction (channel-first class index) and a label to one-hot spleen / not-spleen.

    Validation and evaluation score the spleen alone, whatever else the labels and the network know.
    """

    def __init__(self, keys: Sequence[Hashable], spleen: int = SPLEEN) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.spleen = spleen

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            spleen = (torch.as_tensor(d[key]) == self.spleen).to(torch.float32)
            d[key] = torch.cat([1.0 - spleen, spleen], dim=0)
        return d


class PartialLabelDiceCELoss(torch.nn.Module):
    """Dice + cross-entropy over ``C`` classes where a target of :data:`NOT_SPLEEN` means "any class but spleen".

    - Cross-entropy: ``-log p[target]`` for labelled voxels, ``-log(1 - p_spleen)`` for NOT_SPLEEN voxels.
    - Dice: the spleen channel over every voxel (its truth is known everywhere); every other channel over the
      voxels whose class is known, so a spleen-only case never scores the liver channel against "background".
    Dice is per sample and class with MONAI's default smoothing (1e-5), averaged over classes, like
    ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``, to which it reduces when no voxel is NOT_SPLEEN.
    """

    def __init__(self, spleen: int = SPLEEN, not_spleen: int = NOT_SPLEEN, smooth: float = 1e-5,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.spleen, self.not_spleen, self.smooth = spleen, not_spleen, smooth
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_classes = logits.shape[1]
        t = target[:, 0].long() if target.ndim == logits.ndim else target.long()
        known = t != self.not_spleen
        logp = F.log_softmax(logits.float(), dim=1)
        others = [c for c in range(n_classes) if c != self.spleen]
        log_not_spleen = torch.logsumexp(logp[:, others], dim=1)
        log_true = logp.gather(1, t.clamp(max=n_classes - 1)[:, None])[:, 0]
        ce = -torch.where(known, log_true, log_not_spleen).mean()

        p = logp.exp()
        onehot = F.one_hot(t.clamp(max=n_classes - 1), n_classes).movedim(-1, 1).to(p.dtype)
        weight = known[:, None].to(p.dtype).expand_as(p).clone()
        weight[:, self.spleen] = 1.0  # spleen truth is known everywhere (NOT_SPLEEN voxels are not spleen)
        onehot = onehot * known[:, None]
        dims = tuple(range(2, p.ndim))
        inter = (p * onehot * weight).sum(dims)
        denom = (p * weight).sum(dims) + (onehot * weight).sum(dims)
        dice = 1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth)
        return self.lambda_dice * dice.mean() + self.lambda_ce * ce
