import pytest
import torch

from gcflow.ema import ema_decay_from_half_life, ema_update, make_ema


def test_half_life_semantics():
    beta = ema_decay_from_half_life(10_000, 500)
    # After h/B steps the old weights' contribution is exactly one half.
    assert beta ** (10_000 / 500) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        ema_decay_from_half_life(0, 10)


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
