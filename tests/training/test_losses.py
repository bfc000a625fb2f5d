"""MultiScaleLoss against torch's own cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

from ramstrans import MultiScaleLoss
from ramstrans.models import MultiScaleOutput

X = torch.zeros(1, 3, 8, 8)  # the criterion sees the inputs; this one does not use them


def _out(logits):
    return MultiScaleOutput(logits=logits, boxes=[], rollout=[], cls_attention=[])


def test_hard_targets_weighted_per_scale():
    logits = [torch.randn(4, 6), torch.randn(4, 6)]
    y = torch.tensor([0, 5, 2, 2])
    terms = MultiScaleLoss(weights=(1.0, 0.5))(X, _out(logits), y)
    assert list(terms) == ["ce_scale1", "ce_scale2"]
    torch.testing.assert_close(terms["ce_scale1"], F.cross_entropy(logits[0], y))
    torch.testing.assert_close(terms["ce_scale2"], 0.5 * F.cross_entropy(logits[1], y))


def test_label_smoothing_on_hard_targets_only():
    logits, y = [torch.randn(3, 4)], torch.tensor([1, 0, 3])
    loss = MultiScaleLoss(weights=(1.0,), label_smoothing=0.1)
    want = F.cross_entropy(logits[0], y, label_smoothing=0.1)
    torch.testing.assert_close(loss(X, _out(logits), y)["ce_scale1"], want)
    soft = F.one_hot(y, 4).float() * 0.7 + 0.075  # already smoothed rows
    want = -(soft * logits[0].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss(X, _out(logits), soft)["ce_scale1"], want)


def test_one_target_per_scale():
    logits = [torch.randn(2, 3), torch.randn(2, 3)]
    t1, t2 = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.tensor([[0.5, 0.5, 0], [0, 0, 1.0]])
    terms = MultiScaleLoss()(X, _out(logits), [t1, t2])
    torch.testing.assert_close(terms["ce_scale1"], F.cross_entropy(logits[0], torch.tensor([0, 1])))
    torch.testing.assert_close(terms["ce_scale2"], F.cross_entropy(logits[1], t2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 loss weights"):
        MultiScaleLoss()(X, _out([torch.randn(2, 3)] * 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        MultiScaleLoss(weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="label_smoothing"):
        MultiScaleLoss(label_smoothing=1.0)
