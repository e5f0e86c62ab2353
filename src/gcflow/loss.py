"""The consistency loss on a batch of pairs (method spec §5)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from gcflow.distances import Distance
from gcflow.dropout import SharedDropout
from gcflow.pairs.types import PairBatch, PointFn


def consistency_loss(
    model: PointFn, pairs: PairBatch, distance: Distance, dropout: SharedDropout | None = None
) -> Tensor:
    """Per-sample λ_i d(sg f_θ(x_i, σ_i), f_θ(x_next, σ_next)), shape (B,).

    The target uses the *online* network under no_grad (iCT has no EMA teacher); both passes share
    one dropout mask when `dropout` is given.

    Args:
        model: the consistency function f_θ(x, σ) with x (B, *D) and σ (B,), e.g. a ConsistencyModel.
        pairs: the training pairs (x_i, σ_i, x_next, σ_next, λ) from `build_pairs`.
        distance: d(a, b) -> (B,), e.g. `get_distance("pseudo_huber")`.
        dropout: the network's SharedDropout, to use the same dropout mask in both passes (None: no
            mask sharing, for networks without dropout).

    Returns:
        the per-sample loss (B,); average it (`.mean()`) before `backward()`.
    """
    replay = dropout.replay if dropout is not None else nullcontext
    with replay(), torch.no_grad():
        target = model(pairs.x_i, pairs.sigma_i)
    with replay():
        pred = model(pairs.x_next, pairs.sigma_next)
    return pairs.weight * distance(pred, target.detach())
