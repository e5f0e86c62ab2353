"""Training-pair construction: couplings (IC, minibatch OT), generator augmentation (GC), CT and CD pairs.

Three orthogonal steps, each one call:
    coupling (which noise goes with which data point: `get_coupling(name)(x0, z)`)
 -> generator augmentation (replace the `select_gc` rows by the model's own prediction)
 -> pair kind (CT: both points on the straight path; CD: target point from one ODE step).
`build_pairs(recipe, x0, coupled_z, ..., gc_mask=mask)` does the last two.
"""

from gcflow.pairs.cd import cd_pairs
from gcflow.pairs.coupling import COUPLINGS, get_coupling, independent_coupling, minibatch_ot_coupling
from gcflow.pairs.ct import ct_pairs
from gcflow.pairs.gc import generator_augment, select_gc
from gcflow.pairs.recipe import PairRecipe, build_pairs
from gcflow.pairs.types import PairBatch

__all__ = [
    "PairBatch",
    "COUPLINGS",
    "independent_coupling",
    "minibatch_ot_coupling",
    "get_coupling",
    "ct_pairs",
    "cd_pairs",
    "generator_augment",
    "select_gc",
    "PairRecipe",
    "build_pairs",
]
