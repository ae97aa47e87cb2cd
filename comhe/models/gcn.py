"""The two-layer graph convolutional network of Kipf & Welling (ICLR 2017), as ``tkipf/gcn`` builds it
(docs/reference.md §2b).

    logits = gcn(features, adjacency)     # features [N, F] (sparse COO or dense), adjacency A_hat [N, N] -> [N, K]

``Z = A_hat · dropout(relu(A_hat · dropout(X) · W1^T)) · W2^T`` with ``A_hat = D^-1/2 (A + I) D^-1/2``: dropout on
the input features and on the hidden layer (p = 0.5), ReLU between, no bias, Glorot-uniform weights. The weights
are ``nn.Linear`` weights, ``[out, in]``: a row is one output unit, the neuron whose direction the hyperspherical
energy sees (``conv1``: 16 neurons of dimension F; ``conv2``, the classifier: K neurons of dimension 16).

Sparse features are dropped out through their stored values only (a dropped entry becomes an explicit zero, the
pattern is kept), never densified: dense dropout on Cora's 2,708 x 1,433 features costs ~130 ms a call on one CPU
core, the sparse one ~0.1 ms. The official L2 penalty covers the first layer only: ``decayed_parameters()``.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factory import MODELS


def sparse_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout of the stored entries of a coalesced sparse COO ``x`` (kept entries scaled by 1/(1-p)),
    as ``tkipf/gcn``'s ``sparse_dropout``; a dense ``x`` gets ``F.dropout``."""
    if not x.is_sparse:
        return F.dropout(x, p, training)
    if not training or p == 0:
        return x
    return torch.sparse_coo_tensor(x.indices(), F.dropout(x.values(), p, True), x.shape, is_coalesced=True,
                                   check_invariants=False)


def propagate(adjacency: Tensor, h: Tensor) -> Tensor:
    """``A_hat @ h``: adjacency ``[N, N]`` sparse (or dense), h ``[N, C]`` dense."""
    return torch.sparse.mm(adjacency, h) if adjacency.is_sparse else adjacency @ h


def project(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight^T``: x ``[N, F]`` sparse or dense, weight ``[C, F]``."""
    return torch.sparse.mm(x, weight.t()) if x.is_sparse else x @ weight.t()


class GCN(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        if min(in_features, hidden) < 1 or not 0 <= dropout < 1:
            raise ValueError(f"gcn needs in_features, hidden >= 1 and 0 <= dropout < 1, got {in_features}, {hidden}, "
                             f"{dropout}")
        self.dropout = dropout
        self.conv1 = nn.Linear(in_features, hidden, bias=False)   # registered first: the input layer
        self.conv2 = nn.Linear(hidden, num_classes, bias=False)   # and last: the classifier
        for layer in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(layer.weight)  # Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))

    def forward(self, features: Tensor, adjacency: Tensor) -> Tensor:
        h = propagate(adjacency, project(sparse_dropout(features, self.dropout, self.training), self.conv1.weight))
        h = F.dropout(F.relu(h), self.dropout, self.training)
        return propagate(adjacency, project(h, self.conv2.weight))

    def decayed_parameters(self) -> List[torch.Tensor]:
        """The parameters the official L2 (weight decay 5e-4) applies to: the first layer's weight only."""
        return [self.conv1.weight]


@MODELS.register("gcn")
def gcn(num_classes: int, *, in_features: int = 1433, hidden: int = 16, dropout: float = 0.5) -> GCN:
    """in_features: set from the graph by the trainer (1,433 is Cora's); hidden 16 and dropout 0.5 as Kipf."""
    return GCN(in_features, hidden, num_classes, dropout)
