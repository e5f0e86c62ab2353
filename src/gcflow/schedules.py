"""Schedules of the GC probability μ over training: pure functions of (step, total_steps).

μ is always P(GC), the probability that a sample of the batch becomes a generator-augmented pair
(method spec §6). Three shapes:

* constant: μ(k) = μ₀ (gcflow's historical behaviour);
* a start step: μ(k) = 0 for k < start (plain iCT until then);
* linear over training: μ(k) = μ₀ + (μ₁ − μ₀)·k/K, with k the 0-based step and K the total steps,
  exactly the released code's `get_mix_value(i_train, n_train_steps, start, end)`.

The paper's released code (thibautissenhuth/consistency_GC) expresses the mix by a flag
`mix_gen_induced_traj` that is the probability of an *IC* pair: its mask is `rand > flag` and the
masked rows take the EMA's prediction, and with flag ≤ 0 every row does. So P(GC) = 1 − flag
(flag 0 = all GC, flag 0.5 = half, flag ≥ 1 = none); `mu_from_released_flag` converts, and
`MuSchedule.from_released` converts its whole schedule (`mix_gen_induced_traj` →
`mix_gen_induced_traj_end`, linear in the flag, hence linear in μ). Its `start_generator_induced_traj`
and `end_generator_induced_traj` are read into its config but never used by its training loop (every
released config sets the start to 0); gcflow's `start` gives the name its evident meaning.
"""

from __future__ import annotations

from dataclasses import dataclass


def mu_from_released_flag(flag: float) -> float:
    """P(GC) for the released code's `mix_gen_induced_traj` flag: 1 − flag, clipped to [0, 1]."""
    return min(max(1.0 - float(flag), 0.0), 1.0)


def linear_value(step: int, total_steps: int, start_value: float, end_value: float) -> float:
    """(end − start)·step/total + start: the released code's `get_mix_value` (step 0-based)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return (end_value - start_value) * (float(step) / float(total_steps)) + start_value


@dataclass(frozen=True)
class MuSchedule:
    """μ(k) = 0 before `start`; afterwards mu + (mu_end − mu)·k/K, clipped to [0, 1].

    Attributes:
        mu: P(GC) at step 0 (the constant value when mu_end is None).
        mu_end: P(GC) reached at k = K by a linear ramp over the whole run; None = constant.
        start: the first step with GC pairs (μ = 0 before it). The ramp still runs over [0, K], as in
            the released code, so a start only masks its beginning.
    """

    mu: float = 0.0
    mu_end: float | None = None
    start: int = 0

    def __post_init__(self) -> None:
        for name, value in (("mu", self.mu), ("mu_end", self.mu_end)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"the GC probability {name} must be in [0, 1], got {value}")
        if self.start < 0:
            raise ValueError(f"the GC start step must be >= 0, got {self.start}")

    def at(self, step: int, total_steps: int) -> float:
        """P(GC) at training step `step` (0-based) of `total_steps`."""
        if step < self.start:
            return 0.0
        if self.mu_end is None:
            return self.mu
        return min(max(linear_value(step, total_steps, self.mu, self.mu_end), 0.0), 1.0)

    @property
    def ever_gc(self) -> bool:
        """Whether any step can draw a GC pair (the run then needs a GC predictor)."""
        return self.mu > 0 or (self.mu_end is not None and self.mu_end > 0)

    @staticmethod
    def from_released(
        mix_gen_induced_traj: float,
        mix_gen_induced_traj_end: float | None = None,
        start_generator_induced_traj: int = 0,
    ) -> MuSchedule:
        """The released code's schedule in gcflow's terms (its flag is P(IC); see the module docstring)."""
        end = None if mix_gen_induced_traj_end is None else mu_from_released_flag(mix_gen_induced_traj_end)
        return MuSchedule(mu_from_released_flag(mix_gen_induced_traj), end, start_generator_induced_traj)
