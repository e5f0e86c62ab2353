"""Property-based tests (hypothesis): the configuration parser and the pair-construction invariants."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gcflow.pairs import PairRecipe, build_pairs, cd_pairs, ct_pairs, get_coupling, minibatch_ot_coupling, select_gc
from gcflow.pairs.coupling import ot_assignment
from gcflow.shapes import per_sample
from gcflow.sigmas import karras_sigmas, sample_noise_levels
from gcflow.training.config import (
    GROUPS,
    SIGMA_RANGE,
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    iter_fields,
    to_dict,
    validate,
)
from gcflow.training.distributed import split_global_batch

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TORCH = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = {key: f.type for key, f, _ in iter_fields()}

# --- The configuration parser -------------------------------------------------------------------

_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./:=,+", max_size=12)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_INT = st.integers(-(10**9), 10**9)


def _values(tp: typing.Any) -> st.SearchStrategy:
    if typing.get_origin(tp) is tuple:
        return st.lists(_values(typing.get_args(tp)[0]), max_size=4).map(tuple)  # () spells 'none'
    return {bool: st.booleans(), int: _INT, float: _FLOAT, str: _TEXT}[tp]


def _text(value: typing.Any) -> str:
    """The command-line spelling of a value."""
    if isinstance(value, tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@st.composite
def configs(draw) -> Config:
    """A Config with arbitrary well-typed values in a random subset of its fields."""
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=12))
    cfg = Config()
    for key in keys:
        group, name = key.split(".")
        setattr(getattr(cfg, group), name, draw(_values(FIELDS[key])))
    return cfg


@FAST
@given(configs())
def test_config_round_trips_through_json(cfg):
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


@FAST
@given(configs())
def test_config_round_trips_through_command_line_overrides(cfg):
    overrides = [f"{key}={_text(value)}" for key, _, value in iter_fields(cfg)]
    assert apply_overrides(Config(), overrides) == cfg


@FAST
@given(st.sampled_from(GROUPS), st.from_regex(r"[a-z_]{1,12}", fullmatch=True), _TEXT)
def test_unknown_keys_are_rejected(group, name, value):
    assume(f"{group}.{name}" not in FIELDS)
    with pytest.raises(ConfigError, match="unknown option"):
        apply_overrides(Config(), [f"{group}.{name}={value}"])
    with pytest.raises(ConfigError, match="unknown option"):
        from_dict({group: {name: value}})


@FAST
@given(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(lambda g: g not in GROUPS),
    st.dictionaries(_TEXT, _INT, max_size=2),
)
def test_unknown_groups_are_rejected(group, values):
    with pytest.raises(ConfigError, match="unknown configuration group"):
        from_dict({group: values})


@FAST
@given(st.sampled_from(sorted(FIELDS)), st.text(max_size=16))
def test_any_override_text_parses_to_the_field_type_or_fails_cleanly(key, text):
    """Arbitrary text for any option gives either a value of the declared type or a one-line ConfigError."""
    try:
        cfg = apply_overrides(Config(), [f"{key}={text}"])
    except ConfigError as exc:
        assert "\n" not in str(exc) and key in str(exc)
        return
    group, name = key.split(".")
    value, tp = getattr(getattr(cfg, group), name), FIELDS[key]
    if typing.get_origin(tp) is tuple:
        assert isinstance(value, tuple) and all(type(v) is typing.get_args(tp)[0] for v in value)
    else:
        assert type(value) is tp


def _wrong_json(tp: typing.Any) -> st.SearchStrategy:
    """JSON values that are not of type `tp` (ints are accepted for floats, so never offered as wrong)."""
    if typing.get_origin(tp) is tuple:
        return st.lists(_wrong_json(typing.get_args(tp)[0]), min_size=1, max_size=3)
    wrong = {
        int: st.one_of(_TEXT, _FLOAT, st.booleans(), st.none()),
        float: st.one_of(_TEXT, st.booleans(), st.none(), st.dictionaries(_TEXT, _INT, max_size=1)),
        bool: st.one_of(_TEXT, _INT, _FLOAT, st.none()),
        str: st.one_of(_INT, _FLOAT, st.booleans(), st.none()),
    }
    return wrong[tp]


@FAST
@given(st.data())
def test_wrongly_typed_json_values_are_rejected(data):
    key = data.draw(st.sampled_from(sorted(FIELDS)))
    value = data.draw(_wrong_json(FIELDS[key]))
    group, name = key.split(".")
    with pytest.raises(ConfigError, match="is not a valid"):
        from_dict({group: {name: value}})


@FAST
@given(_FLOAT, _FLOAT, st.floats(allow_nan=True))
@example(0.002, 80.0, 0.0)
@example(0.002, 80.0, 1.0)
@example(1.0, 1.0, 0.5)
def test_validation_accepts_exactly_the_valid_noise_ranges_and_mu(sigma_min, sigma_max, mu):
    cfg = apply_overrides(
        Config(), [f"method.sigma_min={sigma_min!r}", f"method.sigma_max={sigma_max!r}", f"method.gc_mu={mu!r}"]
    )
    ok = SIGMA_RANGE[0] <= sigma_min < sigma_max <= SIGMA_RANGE[1] and 0 <= mu <= 1
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError):
            validate(cfg)


@FAST
@given(st.integers(0, 4096), st.integers(1, 64))
def test_split_global_batch(batch, world):
    if batch >= 1 and batch % world == 0:
        assert split_global_batch(batch, world) * world == batch
    else:
        with pytest.raises(ConfigError, match="not divisible"):
            split_global_batch(batch, world)


# --- Pair construction --------------------------------------------------------------------------

_SHAPES = st.sampled_from([(1,), (2,), (5,), (1, 3, 3), (3, 4, 4), (2, 2, 5)])


@st.composite
def pair_inputs(draw):
    """x0, z (B, *D) float64 and per-sample levels (σ_i, σ_{i+1}, λ) drawn from a random Karras grid."""
    batch, shape = draw(st.integers(1, 9)), draw(_SHAPES)
    n = draw(st.integers(1, 64))
    sigma_min = draw(st.floats(1e-3, 0.5))
    sigma_max = draw(st.floats(1.0, 100.0))
    rho = draw(st.floats(1.0, 9.0))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((batch, *shape), generator=g, dtype=torch.float64)
    z = torch.randn((batch, *shape), generator=g, dtype=torch.float64)
    s_i, s_n, w = sample_noise_levels(n, batch, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, generator=g)
    grid = karras_sigmas(n, sigma_min, sigma_max, rho, dtype=torch.float32)
    return x0, z, s_i.double(), s_n.double(), w.double(), grid, g


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        torch.allclose(a, b, rtol=1e-10, atol=1e-10 * (1 + float(b.abs().max()))) if b.numel() else a.shape == b.shape
    )


def _predictor(calls: list[int]):
    """A deterministic, row-wise stand-in for f_η that records how many rows it was asked about."""

    def f(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.tanh(x) * per_sample(1 + s, x) - 0.25

    return f


@TORCH
@given(pair_inputs())
def test_noise_levels_are_adjacent_grid_points(inputs):
    _, _, s_i, s_n, w, grid, _ = inputs
    assert bool((s_i < s_n).all())
    on_grid = (s_i.float()[:, None] == grid[None]).any(1) & (s_n.float()[:, None] == grid[None]).any(1)
    assert bool(on_grid.all())
    assert torch.allclose(w, 1 / (s_n - s_i), rtol=1e-5)


@TORCH
@given(pair_inputs())
def test_ct_pairs_share_z_and_preserve_shapes(inputs):
    x0, z, s_i, s_n, w, _, _ = inputs
    p = ct_pairs(x0, z, s_i, s_n, w)
    assert p.x_i.shape == p.x_next.shape == p.endpoint.shape == p.noise.shape == x0.shape
    assert p.sigma_i.shape == p.sigma_next.shape == p.weight.shape == p.is_gc.shape == (x0.shape[0],)
    assert _close(p.x_next - p.x_i, per_sample(s_n - s_i, z) * z)
    assert _close(p.x_i, x0 + per_sample(s_i, z) * z) and _close(p.x_next, x0 + per_sample(s_n, z) * z)
    assert torch.equal(p.noise, z) and torch.equal(p.endpoint, x0) and not bool(p.is_gc.any())


@TORCH
@given(
    pair_inputs(), st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)), st.sampled_from(["independent", "ot"])
)
def test_gc_pairs_invariants(inputs, mu, coupling):
    x0, z, s_i, s_n, w, _, g = inputs
    calls: list[int] = []
    mask = select_gc(x0.shape[0], mu, g) if mu > 0 else None
    p = build_pairs(
        PairRecipe(kind="ct"), x0, get_coupling(coupling)(x0, z), s_i, s_n, w, gc_mask=mask, predictor=_predictor(calls)
    )
    # Shapes are preserved and both points use the same z (a permutation of the drawn noises under OT).
    assert p.x_i.shape == p.x_next.shape == p.endpoint.shape == x0.shape
    assert _close(p.x_next - p.x_i, per_sample(s_n - s_i, z) * p.noise)
    assert _close(p.x_i, p.endpoint + per_sample(s_i, z) * p.noise)
    if coupling == "independent":
        assert torch.equal(p.noise, z)
    else:
        assert torch.equal(p.noise, z[ot_assignment(x0, z)])
    # GC rows hold the predictor's output at (x⋆ + σ_i z, σ_i); the others hold the data.
    mask = p.is_gc
    expected = _predictor([])(x0 + per_sample(s_i, x0) * p.noise, s_i)
    assert torch.equal(p.endpoint[~mask], x0[~mask])
    assert _close(p.endpoint[mask], expected[mask])
    assert sum(calls) == int(mask.sum())  # the predictor only ever sees the selected rows
    if mu == 0.0:
        assert not bool(mask.any()) and torch.equal(p.endpoint, x0) and calls == []
    if mu == 1.0:
        assert bool(mask.all())


@TORCH
@given(pair_inputs())
def test_mu_zero_gives_plain_ct_pairs(inputs):
    x0, z, s_i, s_n, w, _, g = inputs
    a = build_pairs(PairRecipe(), x0, z, s_i, s_n, w, gc_mask=None, predictor=_predictor([]))
    b = ct_pairs(x0, z, s_i, s_n, w)
    for field in ("x_i", "x_next", "endpoint", "noise", "is_gc"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@FAST
@given(st.integers(0, 64), st.integers(0, 2**31 - 1))
def test_select_gc_extremes(batch, seed):
    g = torch.Generator().manual_seed(seed)
    assert not bool(select_gc(batch, 0.0, g).any())
    assert bool(select_gc(batch, 1.0, g).all())
    assert select_gc(batch, 0.5, g).shape == (batch,)


@TORCH
@given(st.integers(1, 24), _SHAPES, st.integers(0, 2**31 - 1))
def test_ot_coupling_is_an_optimal_permutation(batch, shape, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((batch, *shape), generator=g, dtype=torch.float64)
    z = torch.randn((batch, *shape), generator=g, dtype=torch.float64)
    perm = ot_assignment(x0, z)
    assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(batch))
    coupled = minibatch_ot_coupling(x0, z)
    assert coupled.shape == z.shape and torch.equal(coupled, z[perm])

    def cost(noise: torch.Tensor) -> float:
        return float(((x0 - noise) ** 2).sum())

    assert cost(coupled) <= cost(z) + 1e-9
    assert cost(coupled) <= cost(z[torch.randperm(batch, generator=g)]) + 1e-9


@TORCH
@given(pair_inputs(), st.sampled_from(["euler", "heun"]))
def test_cd_pairs_with_an_exact_straight_line_velocity_equal_ct_pairs(inputs, solver):
    """For one data point the probability-flow ODE is the straight line x⋆ + σ z: one ODE step is exact."""
    x0, z, s_i, s_n, w, _, _ = inputs

    def velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (x - x0) / per_sample(s, x)

    cd, ct = cd_pairs(x0, z, s_i, s_n, w, velocity, solver), ct_pairs(x0, z, s_i, s_n, w)
    assert cd.x_i.shape == x0.shape and torch.equal(cd.x_next, ct.x_next) and torch.equal(cd.endpoint, x0)
    # Rounding error of x_next (size eps·σ_{i+1}|z|) is amplified by σ_{i+1}/σ_i in Heun's second velocity.
    scale = float(s_n.max()) * (1 + float(z.abs().max())) * (float((s_n / s_i).max()) if solver == "heun" else 1.0)
    assert float((cd.x_i - ct.x_i).abs().max()) <= 1e-13 * scale
