import pytest
import torch

from gcflow.sampling import default_multistep_sigmas, sample_multistep, sample_onestep, seeded_normal


def test_onestep_calls_at_sigma_max():
    seen = {}

    def f(x, s):
        seen["s"] = s
        return x / s[:, None]

    z = torch.randn(5, 2)
    out = sample_onestep(f, z, 80.0)
    assert torch.allclose(out, z) and bool((seen["s"] == 80.0).all())


def test_multistep_renoises_with_sigma_correction(gen):
    calls = []

    def f(x, s):
        calls.append(s[0].item())
        return torch.zeros_like(x)  # a model that always predicts 0

    z = torch.randn(20000, 1, generator=gen)
    out = sample_multistep(f, z, [2.0], 80.0, 0.002, generator=gen)
    assert calls == [80.0, 2.0]
    # The last call sees 0 + sqrt(σ² − σ_min²) z' and returns 0.
    assert torch.equal(out, torch.zeros_like(z))
    with pytest.raises(ValueError):
        sample_multistep(f, z, [1.0, 2.0], 80.0, 0.002)


def test_seeded_normal_rows_depend_only_on_their_seed():
    a = seeded_normal([1, 2, 3], (4,))
    b = seeded_normal([3, 9], (4,))
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], b[1])


def test_default_multistep_sigmas():
    assert default_multistep_sigmas(1) == []
    s = default_multistep_sigmas(3)
    assert len(s) == 2 and s[0] > s[1] > 0.002
