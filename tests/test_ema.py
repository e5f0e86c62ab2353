import copy

import pytest
import torch

from gcflow.ema import (
    EmaSchedule,
    constant_ema,
    ema_decay_from_half_life,
    ema_step,
    ema_update,
    half_life_ema,
    make_ema,
    warmup_decay,
    warmup_ema,
    weight_shares,
)

ema_pytorch = pytest.importorskip("ema_pytorch")  # the test extra pins ema-pytorch==0.2.3


def test_half_life_semantics():
    beta = ema_decay_from_half_life(10_000, 500)
    # After h/B steps the old weights' contribution is exactly one half.
    assert beta ** (10_000 / 500) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        ema_decay_from_half_life(0, 10)
    assert half_life_ema(10_000, 500).decay_at(7) == beta


def test_update_formula_and_buffers():
    torch.manual_seed(0)
    model = torch.nn.BatchNorm1d(3)
    model.weight.data = torch.tensor([1.0, 2.0, 3.0])
    ema = make_ema(model)
    assert not any(p.requires_grad for p in ema.parameters())
    model.weight.data = torch.tensor([3.0, 4.0, 5.0])
    model.running_mean.fill_(7.0)
    ema_update(ema, model, 0.75)
    assert torch.allclose(ema.weight, 0.75 * torch.tensor([1.0, 2.0, 3.0]) + 0.25 * torch.tensor([3.0, 4.0, 5.0]))
    assert torch.equal(ema.running_mean, model.running_mean)


def test_constant_schedule_is_todays_ema():
    s = constant_ema(0.999)
    assert [s.decay_at(k) for k in (1, 2, 1000)] == [0.999] * 3
    assert not any(s.copies_at(k) for k in range(1, 50))


def test_schedule_validation():
    with pytest.raises(ValueError, match="start"):
        EmaSchedule(warmup=True)
    with pytest.raises(ValueError, match="update_every"):
        warmup_ema(update_every=0)
    with pytest.raises(ValueError, match="from 1"):
        warmup_ema().decay_at(0)


@pytest.mark.parametrize("start", [0, 10_000])
def test_warmup_decay_matches_ema_pytorch(start):
    ref = ema_pytorch.EMA(torch.nn.Linear(2, 2), beta=0.9999, update_after_step=start, update_every=5)
    for k in (0, 1, 4, 5, 100, 10_000, 100_000):
        ref.step.fill_(k)
        assert warmup_decay(k, start, 0.9999) == pytest.approx(ref.get_current_decay(), abs=1e-12)
    # Golden values of the formula itself: 1 − (1 + e)^(−2/3), capped at 0.9999.
    assert warmup_decay(6, 0, 0.9999) == pytest.approx(1 - 6 ** (-2 / 3), abs=1e-15)
    assert warmup_decay(100_000, 0, 0.9999) == pytest.approx(1 - 100_000 ** (-2 / 3), abs=1e-15)
    assert warmup_decay(10**7, 0, 0.9999) == 0.9999


class _Net(torch.nn.Module):
    """A small network with a constant float buffer (like the embedding frequencies of gcflow's networks)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 3)
        self.register_buffer("freqs", torch.linspace(0.5, 2.0, 5))


def _train_like(model: torch.nn.Module, k: int) -> None:
    """Stand-in for optimizer step k: a deterministic random move of every parameter."""
    g = torch.Generator().manual_seed(1000 + k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("start,every", [(0, 5), (37, 5), (12, 1), (3, 7)])
def test_averaged_weights_match_ema_pytorch_float64(start, every):
    torch.manual_seed(0)
    model = _Net()
    # ema-pytorch only averages float32/float16 tensors, named at construction: build it in float32, then
    # move both copies to float64 so that the comparison is not limited by float32 rounding.
    ref = ema_pytorch.EMA(model, beta=0.9999, update_after_step=start, update_every=every)
    model.double()
    ref.ema_model.double()
    ours = make_ema(model)
    schedule = warmup_ema(0.9999, update_every=every, start=start)
    for k in range(1, 301):
        _train_like(model, k)
        ref.update()
        ema_step(ours, model, schedule, k)
        if k in (1, 2, start + 1, start + every + 1, 150, 300):
            for (name, p), q in zip(ours.named_parameters(), ref.ema_model.parameters()):
                assert torch.allclose(p, q, rtol=0, atol=1e-12), (k, name)
    assert torch.equal(ours.freqs, ref.ema_model.freqs)
    # The EMA is not simply the online model: it really averaged.
    assert not torch.allclose(ours.a.weight, model.a.weight, atol=1e-3)


def test_resume_is_bit_identical():
    torch.manual_seed(1)
    schedule = warmup_ema(0.9999, update_every=5, start=20)
    model = _Net()
    ema = make_ema(model)
    snapshot = None
    for k in range(1, 121):
        _train_like(model, k)
        ema_step(ema, model, schedule, k)
        if k == 63:
            snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(ema.state_dict()))
    # Resume from the step-63 checkpoint (weights only: the schedule needs no state) and run 64..120.
    model2 = _Net()
    model2.load_state_dict(snapshot[0])
    ema2 = make_ema(model2)
    ema2.load_state_dict(snapshot[1])
    for k in range(64, 121):
        _train_like(model2, k)
        ema_step(ema2, model2, schedule, k)
    for p, q in zip(ema.parameters(), ema2.parameters()):
        assert torch.equal(p, q)


def test_initial_weight_share_diagnostic():
    # Issue 11: a constant 0.9999 from step 0 still holds 37 % of the random initial weights at
    # step 10 000 (13.5 % at 20 000); the released code's warm-up EMA holds none.
    k = 10_000
    const, warm = weight_shares(constant_ema(0.9999), k), weight_shares(warmup_ema(), k)
    assert float(const.sum()) == pytest.approx(1.0, abs=1e-9) and float(warm.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(const[0]) == pytest.approx(0.9999**k, rel=1e-9) and 0.36 < float(const[0]) < 0.38
    assert float(warm[0]) == 0.0
    # Mean weight age: 6 321 steps against 1 989.
    ages = k - torch.arange(k + 1, dtype=torch.float64)
    assert float((const * ages).sum()) == pytest.approx(6321, abs=1)
    assert float((warm * ages).sum()) == pytest.approx(1989, abs=1)
    # Only every fifth step's weights enter the warm-up EMA (update_every = 5: steps 1, 6, 11, ...).
    assert torch.count_nonzero(warm[2:6]) == 0 and float(warm[k - 4]) > 0
