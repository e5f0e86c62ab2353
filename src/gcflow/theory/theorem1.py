"""Theorem 1 of the paper, measured: N^α (L_CT − L_CD) and its continuous-time limit C T^{α−1} R(θ).

Setting (method spec §8). Equally spaced levels t_i = t_lo + i Δ, Δ = T/N with T = t_hi − t_lo
(the paper writes t_lo = 0; we start at σ_min, where every consistency model is the identity, so
the network is never asked for σ = 0), σ_t = t. For a distance d = φ(‖·‖) with φ(r) ~ C r^α:

    L_CT(N) = E_i E λ(t_i) d( f(x⋆ + t_{i+1} z, t_{i+1}), f(x⋆ + t_i z, t_i) )
    L_CD(N) = E_i E λ(t_i) d( f(x_{i+1}, t_{i+1}), f(x_{i+1} − Δ v_{t_{i+1}}(x_{i+1}), t_i) )

with i uniform on {0..N−1} (an average over the grid, as the theorem's Riemann sums), and

    lim N^α (L_CT − L_CD) = C T^{α−1} R(θ),
    R(θ) = ∫ λ(t) E[ ‖∂_CT f‖^α − ‖∂_CD f‖^α ] dt,
    ∂_CT f = ∂_σ f + J_x f · z,  ∂_CD f = ∂_σ f + J_x f · v_t(x_t).

Both directional derivatives are one forward-mode product each: torch.func.jvp of (x, σ) ↦ f(x, σ)
along the tangent (z, 1) or (v, 1). For α = 2 the cross term vanishes in expectation
(E[z − v | x_t] = 0) and R = ∫ λ E‖J_x f (z − v)‖² dt ("R, α = 2 form").

Common random numbers make the difference measurable: every N uses the same (x⋆, z, u), with the
grid index i = ⌊u N⌋, and the limit uses the same samples at t = t_lo + u T. So N^α (L_CT − L_CD)
converges, sample by sample, to the Monte-Carlo estimate of the limit computed on those samples, and
what remains is the O(1/N) discretisation error, not sampling noise. Everything runs in float64.

Scaled gradients. With the stop-gradient target, ∇_θ L ~ Δ^{α−1}, so G(N) = N^{α−1} ∇_θ L(N) has
a limit: G_∞ = C α T^{α−1} E_u[ λ ‖∂f‖^{α−2} (∂f)ᵀ ∇_θ f(x_t, t) ]. For α = 2 the CT and CD limits
agree in expectation (their difference is linear in z − v); for α ≠ 2 they do not. Agreement is
judged against Monte-Carlo noise, estimated from `chunks` independent sub-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gcflow.distances import DISTANCE_NAMES, Distance, distance_exponent, get_distance, pseudo_huber, pseudo_huber_c
from gcflow.loss import consistency_loss
from gcflow.pairs import cd_pairs, ct_pairs
from gcflow.pairs.types import PointFn

Weighting = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class TheoremDistance:
    """A distance d(a, b) = φ(‖a − b‖) with its small-argument law φ(r) ≈ C r^α.

    Attributes:
        name: "l2" (squared norm), "pseudo_huber" or "l2_norm" (the norm; its old name "l1" is kept as given).
        fn: d(a (B, d), b (B, d)) -> (B,).
        C: the constant C.
        alpha: the exponent α.
    """

    name: str
    fn: Distance
    C: float
    alpha: float


def theorem_distance(name: str, dim: int, huber_c: float | None = None) -> TheoremDistance:
    """The named distance (or alias) on dimension `dim`; pseudo-Huber uses c = 0.00054·sqrt(d)
    unless `huber_c` is given.
    """
    if name == "pseudo_huber":
        c = pseudo_huber_c(dim) if huber_c is None else float(huber_c)
        return TheoremDistance(name, lambda a, b: pseudo_huber(a, b, c), 1.0 / (2.0 * c), 2.0)
    if name not in DISTANCE_NAMES:
        raise KeyError(f"unknown distance {name!r}; choose one of {sorted(DISTANCE_NAMES)}")
    C, alpha = distance_exponent(name, dim)
    return TheoremDistance(name, get_distance(name), C, alpha)


def unit_weighting(t: Tensor) -> Tensor:
    """λ(t) = 1 (with equal spacing the iCT weight 1/Δσ is a constant N/T, so this loses nothing)."""
    return torch.ones_like(t)


@dataclass(frozen=True)
class CommonSamples:
    """The random numbers shared by CT, CD and the limit.

    Attributes:
        x0: (M, d) data points x⋆.
        z: (M, d) standard normal noises.
        u: (M,) uniforms in [0, 1) selecting the level: i = ⌊u N⌋ on a grid of N intervals, t = t_lo + u T in the limit.
    """

    x0: Tensor
    z: Tensor
    u: Tensor

    @staticmethod
    def draw(
        sample_data: Callable[[int, torch.Generator], Tensor], m: int, dim: int, generator: torch.Generator
    ) -> CommonSamples:
        """Draw M triples in float64 from `sample_data(n, generator) -> (n, d)`."""
        x0 = sample_data(m, generator).to(torch.float64)
        z = torch.randn(m, dim, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        return CommonSamples(x0, z, u)

    def chunk(self, k: int, chunks: int) -> CommonSamples:
        """The k-th of `chunks` equal contiguous sub-batches."""
        size = self.x0.shape[0] // chunks
        sl = slice(k * size, (k + 1) * size)
        return CommonSamples(self.x0[sl], self.z[sl], self.u[sl])


@dataclass(frozen=True)
class Grid:
    """Equally spaced levels t_i = t_lo + i (t_hi − t_lo)/N on [t_lo, t_hi]."""

    t_lo: float
    t_hi: float

    @property
    def length(self) -> float:
        return self.t_hi - self.t_lo

    def interval(self, u: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """(t_i, t_{i+1}) for i = ⌊u N⌋, each (M,)."""
        i = torch.clamp(torch.floor(u * n), max=n - 1)
        step = self.length / n
        return self.t_lo + i * step, self.t_lo + (i + 1) * step

    def continuous(self, u: Tensor) -> Tensor:
        """t = t_lo + u T, (M,)."""
        return self.t_lo + u * self.length


def _per_sample_losses(
    f: PointFn, velocity: PointFn, s: CommonSamples, grid: Grid, n: int, dist: TheoremDistance, weighting: Weighting
) -> tuple[Tensor, Tensor]:
    """Per-sample λ d(·,·) for CT and CD on a grid of n intervals; each (M,). Targets carry no gradient.

    The pairs and the loss are the library's (`ct_pairs`, `cd_pairs` with an Euler step, `consistency_loss`),
    so the theorem is measured on exactly what the trainer optimises.
    """
    t_i, t_n = grid.interval(s.u, n)
    lam = weighting(t_i)
    ct = ct_pairs(s.x0, s.z, t_i, t_n, lam)
    cd = cd_pairs(s.x0, s.z, t_i, t_n, lam, velocity, solver="euler")
    return consistency_loss(f, ct, dist.fn), consistency_loss(f, cd, dist.fn)


def directional_derivatives(f: PointFn, x: Tensor, t: Tensor, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(∂_CT f, ∂_CD f, J_x f (z − v)) at (x, t), each (M, d), by three forward-mode products."""
    ones, zeros = torch.ones_like(t), torch.zeros_like(t)
    _, d_ct = torch.func.jvp(f, (x, t), (z, ones))
    _, d_cd = torch.func.jvp(f, (x, t), (v, ones))
    _, j_gap = torch.func.jvp(f, (x, t), (z - v, zeros))
    return d_ct, d_cd, j_gap


@dataclass
class LimitTerms:
    """Per-sample ingredients of the continuous-time limit (all (M,)).

    Attributes:
        ct: λ ‖∂_CT f‖^α.
        cd: λ ‖∂_CD f‖^α.
        gap2: λ ‖J_x f (z − v)‖² (the α = 2 form of the integrand).
    """

    ct: Tensor
    cd: Tensor
    gap2: Tensor


def limit_terms(
    f: PointFn, velocity: PointFn, s: CommonSamples, grid: Grid, alpha: float, weighting: Weighting = unit_weighting
) -> LimitTerms:
    """The integrands of R(θ) at t = t_lo + u T on the common samples."""
    t = grid.continuous(s.u)
    x = s.x0 + t[:, None] * s.z
    with torch.no_grad():
        v = velocity(x, t)
    d_ct, d_cd, j_gap = directional_derivatives(f, x, t, s.z, v)
    lam = weighting(t)
    norm = lambda a: a.reshape(a.shape[0], -1).norm(dim=1)  # noqa: E731
    return LimitTerms(
        ct=(lam * norm(d_ct) ** alpha).detach(),
        cd=(lam * norm(d_cd) ** alpha).detach(),
        gap2=(lam * norm(j_gap) ** 2).detach(),
    )


@dataclass
class Theorem1Result:
    """The checker's measurements for one distance.

    Attributes:
        distance, C, alpha: the distance and its law φ(r) ≈ C r^α.
        T: the length of the σ interval.
        ns: the grid sizes N.
        scaled_gap: N^α (L_CT − L_CD) for each N.
        scaled_ct, scaled_cd: N^α L_CT and N^α L_CD for each N.
        limit: predicted C T^{α−1} R(θ) on the same samples.
        limit_ct, limit_cd: predicted limits of N^α L_CT and N^α L_CD.
        limit_stderr: Monte-Carlo standard error of `limit` (sampling noise, not discretisation error).
        R: R(θ) = ∫ λ E[‖∂_CT f‖^α − ‖∂_CD f‖^α] dt (Monte Carlo).
        R_alpha2: ∫ λ E‖J_x f (z − v)‖² dt (equals R in expectation when α = 2).
        rel_error: |scaled_gap − limit| / |limit| for each N.
        order: observed convergence order log2(err(N)/err(2N)) between successive N.
        gradients: scaled-gradient comparison (see `GradientCheck`), or None.
    """

    distance: str
    C: float
    alpha: float
    T: float
    ns: list[int]
    scaled_gap: list[float]
    scaled_ct: list[float]
    scaled_cd: list[float]
    limit: float
    limit_ct: float
    limit_cd: float
    limit_stderr: float
    R: float
    R_alpha2: float
    rel_error: list[float]
    order: list[float]
    gradients: GradientCheck | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "gradients"}
        out["gradients"] = None if self.gradients is None else self.gradients.__dict__
        return out


@dataclass
class GradientCheck:
    """Scaled gradients G(N) = N^{α−1} ∇_θ L(N) of CT and CD, compared against Monte-Carlo noise.

    Attributes:
        ns: grid sizes N.
        rel_gap: ‖Ḡ_CT − Ḡ_CD‖ / ‖Ḡ_CD‖ for each N (Ḡ: mean over chunks).
        rel_gap_debiased: sqrt(max(‖Ḡ_CT − Ḡ_CD‖² − noise², 0)) / ‖Ḡ_CD‖: the part of the gap not explained by noise.
        noise_ratio: ‖Ḡ_CT − Ḡ_CD‖² / noise², where noise² = tr Cov(chunk gaps)/chunks; ≈ 1 when CT and CD agree
            in expectation, ≫ 1 when they do not.
        limit_rel_gap, limit_rel_gap_debiased, limit_noise_ratio: the same for the predicted limits G_∞.
        cosine: cos(Ḡ_CT, Ḡ_CD) for each N.
        agree: True when the limit's noise ratio is below `threshold` (the gap is within sampling noise).
        threshold: the noise-ratio threshold used.
    """

    ns: list[int]
    rel_gap: list[float]
    rel_gap_debiased: list[float]
    noise_ratio: list[float]
    cosine: list[float]
    limit_rel_gap: float
    limit_rel_gap_debiased: float
    limit_noise_ratio: float
    agree: bool
    threshold: float


def _flat_grad(loss: Tensor, params: list[nn.Parameter], retain: bool = False) -> Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _gap_stats(g_ct: Tensor, g_cd: Tensor) -> tuple[float, float, float, float]:
    """(rel gap, debiased rel gap, noise ratio, cosine) from per-chunk gradients (K, P)."""
    k = g_ct.shape[0]
    diff = g_ct - g_cd
    mean_diff, mean_cd, mean_ct = diff.mean(0), g_cd.mean(0), g_ct.mean(0)
    noise2 = float(diff.var(0, unbiased=True).sum() / k)
    gap2 = float(mean_diff.pow(2).sum())
    ref = float(mean_cd.norm()) + 1e-300
    cos = float(torch.nn.functional.cosine_similarity(mean_ct, mean_cd, dim=0))
    return math.sqrt(gap2) / ref, math.sqrt(max(gap2 - noise2, 0.0)) / ref, gap2 / max(noise2, 1e-300), cos


def _limit_gradient(
    model: nn.Module,
    velocity: PointFn,
    s: CommonSamples,
    grid: Grid,
    dist: TheoremDistance,
    weighting: Weighting,
    params: list[nn.Parameter],
) -> tuple[Tensor, Tensor]:
    """G_∞ for CT and CD on the samples: ∇_θ of C α T^{α−1} mean λ ‖∂f‖^{α−2} sg(∂f)ᵀ f_θ(x_t, t)."""
    t = grid.continuous(s.u)
    x = s.x0 + t[:, None] * s.z
    with torch.no_grad():
        v = velocity(x, t)
    with torch.no_grad():
        d_ct, d_cd, _ = directional_derivatives(model, x, t, s.z, v)
    out = model(x, t)
    lam = weighting(t)
    scale = dist.C * dist.alpha * grid.length ** (dist.alpha - 1)
    grads = []
    for d in (d_ct, d_cd):
        nrm = d.norm(dim=1).clamp_min(1e-300)
        w = lam * nrm ** (dist.alpha - 2)
        surrogate = scale * (w[:, None] * d * out).sum(1).mean()
        grads.append(_flat_grad(surrogate, params, retain=True))
    return grads[0], grads[1]


def check_gradients(
    model: nn.Module,
    velocity: PointFn,
    samples: CommonSamples,
    grid: Grid,
    ns: list[int],
    dist: TheoremDistance,
    weighting: Weighting = unit_weighting,
    chunks: int = 16,
    threshold: float = 4.0,
) -> GradientCheck:
    """Compare N^{α−1} ∇_θ L_CT with N^{α−1} ∇_θ L_CD (and their limits), chunk by chunk for error bars."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_n: list[tuple[float, float, float, float]] = []
    for n in ns:
        ct, cd = [], []
        for k in range(chunks):
            sk = samples.chunk(k, chunks)
            l_ct, l_cd = _per_sample_losses(model, velocity, sk, grid, n, dist, weighting)
            ct.append(_flat_grad(n ** (dist.alpha - 1) * l_ct.mean(), params, retain=True))
            cd.append(_flat_grad(n ** (dist.alpha - 1) * l_cd.mean(), params))
        per_n.append(_gap_stats(torch.stack(ct), torch.stack(cd)))
    lim_ct, lim_cd = zip(
        *[
            _limit_gradient(model, velocity, samples.chunk(k, chunks), grid, dist, weighting, params)
            for k in range(chunks)
        ]
    )
    lim = _gap_stats(torch.stack(lim_ct), torch.stack(lim_cd))
    return GradientCheck(
        ns=list(ns),
        rel_gap=[p[0] for p in per_n],
        rel_gap_debiased=[p[1] for p in per_n],
        noise_ratio=[p[2] for p in per_n],
        cosine=[p[3] for p in per_n],
        limit_rel_gap=lim[0],
        limit_rel_gap_debiased=lim[1],
        limit_noise_ratio=lim[2],
        agree=bool(lim[2] < threshold),
        threshold=threshold,
    )


def check_theorem1(
    f: PointFn,
    velocity: PointFn,
    samples: CommonSamples,
    grid: Grid,
    dist: TheoremDistance,
    ns: list[int] | None = None,
    weighting: Weighting = unit_weighting,
    batch: int = 8192,
) -> Theorem1Result:
    """Measure N^α (L_CT − L_CD) for each N and the predicted limit C T^{α−1} R(θ) on common samples.

    Args:
        f: the consistency function (float64; a module or any differentiable function of (x, σ)).
        velocity: the exact PF-ODE velocity v_σ(x) of the data distribution.
        samples: common random numbers (x⋆, z, u), M of them.
        grid: the σ interval [t_lo, t_hi].
        dist: the distance and its (C, α).
        ns: grid sizes (default 10, 20, …, 1280).
        weighting: λ(t), (M,) -> (M,).
        batch: samples per forward pass.
    """
    ns = default_ns() if ns is None else list(ns)
    m = samples.x0.shape[0]
    pieces = [
        CommonSamples(samples.x0[i : i + batch], samples.z[i : i + batch], samples.u[i : i + batch])
        for i in range(0, m, batch)
    ]
    gaps, cts, cds = [], [], []
    for n in ns:
        ct_sum = cd_sum = gap_sum = 0.0
        for p in pieces:
            with torch.no_grad():
                l_ct, l_cd = _per_sample_losses(f, velocity, p, grid, n, dist, weighting)
            ct_sum += float(l_ct.sum())
            cd_sum += float(l_cd.sum())
            gap_sum += float((l_ct - l_cd).sum())
        scale = n**dist.alpha / m
        gaps.append(gap_sum * scale)
        cts.append(ct_sum * scale)
        cds.append(cd_sum * scale)
    terms = [limit_terms(f, velocity, p, grid, dist.alpha, weighting) for p in pieces]
    ct = torch.cat([t.ct for t in terms])
    cd = torch.cat([t.cd for t in terms])
    gap2 = torch.cat([t.gap2 for t in terms])
    T = grid.length
    # E_u[g(t_lo + u T)] = (1/T) ∫ g dt, so ∫ g dt = T · mean.
    R = T * float((ct - cd).mean())
    R2 = T * float(gap2.mean())
    pref = dist.C * T ** (dist.alpha - 1)
    limit = pref * R
    stderr = pref * T * float((ct - cd).std() / math.sqrt(m))
    rel = [abs(g - limit) / abs(limit) for g in gaps]
    order = [math.log2(a / b) if a > 0 and b > 0 else float("nan") for a, b in zip(rel, rel[1:])]
    return Theorem1Result(
        distance=dist.name,
        C=dist.C,
        alpha=dist.alpha,
        T=T,
        ns=list(ns),
        scaled_gap=gaps,
        scaled_ct=cts,
        scaled_cd=cds,
        limit=limit,
        limit_ct=pref * T * float(ct.mean()),
        limit_cd=pref * T * float(cd.mean()),
        limit_stderr=stderr,
        R=R,
        R_alpha2=R2,
        rel_error=rel,
        order=order,
    )


def default_ns(n_min: int = 10, n_max: int = 1280) -> list[int]:
    """10, 20, 40, …, 1280 (doubling)."""
    out, n = [], n_min
    while n <= n_max:
        out.append(n)
        n *= 2
    return out
