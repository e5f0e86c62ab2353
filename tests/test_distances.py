import math

import pytest
import torch

from gcflow.distances import (
    DISTANCE_NAMES,
    canonical_distance,
    distance_exponent,
    get_distance,
    l2_norm,
    pseudo_huber,
    pseudo_huber_c,
    squared_l2,
)


def test_c_value_for_cifar():
    assert pseudo_huber_c(3 * 32 * 32) == pytest.approx(0.0299, abs=1e-4)


def test_pseudo_huber_limits_float64():
    d = 3 * 32 * 32
    c = pseudo_huber_c(d)
    a = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    small = torch.full_like(a, 1e-6)
    large = torch.full_like(a, 10.0)
    # Small differences: ≈ ‖δ‖²/(2c).
    n2 = squared_l2(small, a)
    assert torch.allclose(pseudo_huber(small, a), n2 / (2 * c), rtol=1e-6)
    # Large differences: ≈ ‖δ‖ (minus c).
    assert torch.allclose(pseudo_huber(large, a), l2_norm(large, a) - c, rtol=1e-6)
    assert (pseudo_huber(large, a) / l2_norm(large, a)).min() > 0.999


def test_per_sample_not_elementwise():
    a = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    b = torch.zeros_like(a)
    c = 0.1
    assert pseudo_huber(a, b, c).item() == pytest.approx(math.sqrt(25 + 0.01) - 0.1, rel=1e-14)
    assert squared_l2(a, b).item() == 25.0
    assert l2_norm(a, b).item() == 5.0


def test_registry_and_exponents():
    assert get_distance("l2") is squared_l2
    with pytest.raises(KeyError, match="unknown distance"):
        get_distance("lpipz")
    assert distance_exponent("l2_norm", 2) == (1.0, 1.0)
    C, alpha = distance_exponent("pseudo_huber", 3072)
    assert alpha == 2.0 and C == pytest.approx(1 / (2 * pseudo_huber_c(3072)))


def test_l2_norm_is_the_euclidean_norm_not_l1():
    a = torch.tensor([[1.0, -2.0, 2.0]], dtype=torch.float64)
    b = torch.zeros_like(a)
    assert l2_norm(a, b).item() == 3.0  # sqrt(1 + 4 + 4); the L1 norm would be 5


def test_old_name_l1_is_an_alias_of_l2_norm():
    # Configs saved with distance "l1" must keep meaning the same function and the same Theorem 1 law.
    assert canonical_distance("l1") == "l2_norm"
    assert get_distance("l1") is get_distance("l2_norm") is l2_norm
    assert distance_exponent("l1", 5) == distance_exponent("l2_norm", 5) == (1.0, 1.0)
    assert {"pseudo_huber", "l2", "l2_norm", "l1"} == set(DISTANCE_NAMES)
    with pytest.raises(KeyError, match="l2_norm"):
        distance_exponent("l3", 2)
