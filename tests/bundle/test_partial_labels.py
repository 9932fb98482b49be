"""Multi-organ training on partly labelled data (bundle/scripts/partial_labels.py).

The loss must equal MONAI's DiceCELoss on fully labelled cases, and on spleen-only cases it must punish a
spleen answer outside the spleen while leaving the choice between background and the other organs free.
"""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from testkit.bundle import bundle_scripts

pl = bundle_scripts("partial_labels")


def _logits(cls: int, shape=(1, 5, 6, 6, 6), strength: float = 8.0) -> torch.Tensor:
    x = torch.zeros(shape)
    x[:, cls] = strength
    return x


def test_equals_dice_ce_on_fully_labelled_cases() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 8, 8, 8), torch.randint(0, 5, (2, 1, 8, 8, 8))
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    assert torch.allclose(pl.PartialLabelDiceCELoss()(logits, target), expected, atol=1e-5)


def test_spleen_only_case_leaves_other_organs_free_but_punishes_spleen() -> None:
    target = torch.zeros(1, 1, 6, 6, 6)
    target[..., :3] = 1  # half spleen
    marked = pl.MarkSpleenOnlyd("label")({"label": target})["label"]
    assert set(marked.unique().tolist()) == {1, pl.NOT_SPLEEN}
    loss = pl.PartialLabelDiceCELoss()
    right_spleen = torch.zeros(1, 5, 6, 6, 6)
    right_spleen[:, 1, ..., :3] = 8.0
    as_background, as_liver, as_spleen = (right_spleen.clone() for _ in range(3))
    as_background[:, 0, ..., 3:] = 8.0
    as_liver[:, 2, ..., 3:] = 8.0
    as_spleen[:, 1, ..., 3:] = 8.0
    lb, ll, ls = loss(as_background, marked), loss(as_liver, marked), loss(as_spleen, marked)
    assert lb == pytest.approx(ll.item(), abs=1e-4)  # background or liver: both fine where only "not spleen" is known
    assert ls > lb + 0.5  # spleen where the label says "not spleen" is wrong
    # the same liver answer on a fully labelled case (background there) is punished
    assert loss(as_liver, target.long()) > ll + 0.3


def test_multi_organ_labels_are_not_marked() -> None:
    target = torch.tensor([0, 1, 2, 4], dtype=torch.float32).reshape(1, 1, 4, 1, 1)
    assert torch.equal(pl.MarkSpleenOnlyd("label")({"label": target})["label"], target)


def test_spleen_only_scoring_reduces_any_scheme_to_spleen() -> None:
    pred = torch.tensor([0, 1, 2, 1], dtype=torch.float32).reshape(1, 4, 1, 1)
    label = torch.tensor([0, 1, 5, 0], dtype=torch.float32).reshape(1, 4, 1, 1)
    out = pl.SpleenOnlyd(["pred", "label"])({"pred": pred, "label": label})
    assert out["pred"][1].flatten().tolist() == [0, 1, 0, 1] and out["label"][1].flatten().tolist() == [0, 1, 0, 0]
    assert torch.equal(out["pred"][0], 1 - out["pred"][1])
