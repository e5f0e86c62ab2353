import torch

from gcflow.networks.mlp import ToyMLP
from gcflow.precond import ConsistencyModel, consistency_scalings


def test_boundary_condition_exact_float64():
    torch.manual_seed(0)
    model = ConsistencyModel(ToyMLP(2, 32, 2).double(), sigma_data=0.5, sigma_min=0.002)
    x = torch.randn(16, 2, dtype=torch.float64)
    out = model(x, torch.full((16,), 0.002, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert torch.equal(out, x)


def test_boundary_condition_exact_float32_images():
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, c_noise, labels=None):
            return self.c(x) + c_noise[:, None, None, None]

    model = ConsistencyModel(Conv())
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(model(x, torch.full((4,), 0.002)), x)


def test_scalings_closed_form():
    s = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    sc = consistency_scalings(s, 0.5, 0.002)
    assert sc.c_skip[0] == 1.0 and sc.c_out[0] == 0.0
    sd = 0.5
    for j, sig in enumerate(s.tolist()):
        assert abs(sc.c_skip[j].item() - sd**2 / ((sig - 0.002) ** 2 + sd**2)) < 1e-15
        assert abs(sc.c_out[j].item() - sd * (sig - 0.002) / (sd**2 + sig**2) ** 0.5) < 1e-15
        assert abs(sc.c_in[j].item() - 1 / (sd**2 + sig**2) ** 0.5) < 1e-15
        assert abs(sc.c_noise[j].item() - torch.log(torch.tensor(sig, dtype=torch.float64)).item() / 4) < 1e-15
    # At large σ the skip vanishes and the output scale tends to σ_d.
    assert sc.c_skip[2] < 1e-4 and abs(sc.c_out[2] - 0.5) < 1e-4
