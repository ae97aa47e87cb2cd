"""Classification losses: the official one (docs/reference.md §2) and standard cross-entropy, a registry."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("official")
def official_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.01) -> Tensor:
    """The official code's loss: cross-entropy against ``(1 - ls) * onehot + ls / classes`` of ``log(softmax + 1e-4)``.

    logits: ``[B, K]``; labels: ``[B]`` int64 -> scalar. The ``+ 1e-4`` inside the log bounds the loss of a confident
    mistake (about 9.2), unlike ``log_softmax``. Computed in float32 whatever the autocast dtype.
    """
    probs = torch.softmax(logits.float(), dim=1)
    classes = logits.shape[1]
    target = torch.full_like(probs, label_smoothing / classes)
    target.scatter_(1, labels.unsqueeze(1), 1.0 - label_smoothing + label_smoothing / classes)
    return -(target * torch.log(probs + 1e-4)).sum(1).mean()


@LOSSES.register("cross_entropy")
def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
