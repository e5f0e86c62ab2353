import pytest
import torch

from gcflow.dropout import SharedDropout


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 64), torch.nn.Dropout(0.3)
    ).train()


def test_shared_dropout_gives_identical_masks():
    net, x = _net(), torch.randn(32, 8)
    shared = SharedDropout(seed=17, device="cpu")
    with shared.replay(), torch.no_grad():
        a = net(x)
    with shared.replay():
        b = net(x)
    assert torch.equal(a, b)
    with SharedDropout(seed=18, device="cpu").replay():
        c = net(x)
    assert not torch.equal(a, c)


def test_replay_restores_global_rng():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with SharedDropout(3, "cpu").replay():
        torch.rand(10)
    assert torch.equal(torch.get_rng_state(), before)


def test_draw_is_reproducible():
    a = SharedDropout.draw(torch.Generator().manual_seed(1), "cpu").seed
    b = SharedDropout.draw(torch.Generator().manual_seed(1), "cpu").seed
    assert a == b


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (run on the GPU machine, see BENCHMARKS.md)")
def test_shared_dropout_on_cuda_if_available():
    net, x = _net().cuda(), torch.randn(32, 8, device="cuda")
    shared = SharedDropout(seed=17, device="cuda")
    with shared.replay():
        a = net(x)
    with shared.replay():
        b = net(x)
    assert torch.equal(a, b)
