"""The paper's theory as quantities to measure (method spec §8).

* `exact_map`: the exact consistency map f⋆ of a Gaussian mixture / empirical distribution (adaptive PF-ODE solve).
* `exact_error`: E‖f_θ(x_σ, σ) − f⋆(x_σ, σ)‖² per σ.
* `theorem1`: N^α (L_CT − L_CD) against C T^{α−1} R(θ), and the scaled gradients.
* `discrepancy`: the proxy discrepancy R̃_σ = E‖z − v_σ(x̃_σ)‖² per coupling (exact, kernel and denoiser estimates).
* `transport`: transport cost of IC, minibatch OT and GC.
"""

from gcflow.theory.discrepancy import (
    DenoiserSettings,
    exact_ic_discrepancy,
    fit_denoiser_discrepancy,
    gaussian_gc_discrepancy,
    gaussian_ic_discrepancy,
    generator_pairs,
    independent_pairs,
    kernel_discrepancy,
    minibatch_ot_pairs,
)
from gcflow.theory.exact_error import ExactMapTargets, error_to_exact, exact_map_targets
from gcflow.theory.exact_map import (
    ODETolerance,
    consistency_map,
    consistency_map_fixed,
    exact_consistency_map,
    gaussian_consistency_map,
    gaussian_map_scale,
)
from gcflow.theory.theorem1 import CommonSamples, Grid, check_gradients, check_theorem1, theorem_distance
from gcflow.theory.transport import gaussian_costs, generator_cost_curve, independent_cost, minibatch_ot_cost

__all__ = [
    "ExactMapTargets",
    "error_to_exact",
    "exact_map_targets",
    "ODETolerance",
    "consistency_map",
    "consistency_map_fixed",
    "exact_consistency_map",
    "gaussian_consistency_map",
    "gaussian_map_scale",
    "DenoiserSettings",
    "exact_ic_discrepancy",
    "fit_denoiser_discrepancy",
    "gaussian_gc_discrepancy",
    "gaussian_ic_discrepancy",
    "generator_pairs",
    "independent_pairs",
    "kernel_discrepancy",
    "minibatch_ot_pairs",
    "CommonSamples",
    "Grid",
    "check_gradients",
    "check_theorem1",
    "theorem_distance",
    "gaussian_costs",
    "generator_cost_curve",
    "independent_cost",
    "minibatch_ot_cost",
]
