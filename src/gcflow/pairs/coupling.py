"""Couplings between data points and noises within a batch (method spec §5, §7).

A coupling returns the noise matched to each data point: shape (B, *D), a permutation of z's rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from gcflow.shapes import flatten_samples

Coupling = Callable[[Tensor, Tensor], Tensor]


def independent_coupling(x0: Tensor, z: Tensor) -> Tensor:
    """IC: data and noise drawn independently, so the noise is used as drawn."""
    return z


def ot_assignment(x0: Tensor, z: Tensor) -> Tensor:
    """The permutation π (shape (B,), int64) minimising Σ_j ‖x0_j − z_π(j)‖², solved exactly.

    Costs are computed on the tensors' device; the assignment itself runs on the CPU with SciPy's
    Jonker–Volgenant solver (`linear_sum_assignment`), exact and O(B³) worst case but fast in practice.
    Squared norms of x0 and z are constant per row/column, so only −2 x0·z matters; we still pass the
    full cost for readability of the objective.
    """
    a, b = flatten_samples(x0).to(torch.float64), flatten_samples(z).to(torch.float64)
    cost = torch.cdist(a, b).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(perm).to(device=z.device, dtype=torch.int64)


def minibatch_ot_coupling(x0: Tensor, z: Tensor) -> Tensor:
    """Minibatch OT: permute the noises to minimise the total squared distance to the data."""
    return z[ot_assignment(x0, z)]


COUPLINGS: dict[str, Coupling] = {
    "independent": independent_coupling,
    "ot": minibatch_ot_coupling,
}


def get_coupling(name: str) -> Coupling:
    """Look up a coupling by name; unknown names fail with the list of choices."""
    try:
        return COUPLINGS[name]
    except KeyError:
        raise KeyError(f"unknown coupling {name!r}; choose one of {sorted(COUPLINGS)}") from None
