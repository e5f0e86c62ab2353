"""Feature-space metric maths (Fréchet distance, KID, IS) and the evaluation protocol, on synthetic features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from gcflow.metrics import frechet
from gcflow.metrics.frechet import (
    feature_stats,
    frechet_distance,
    inception_score,
    kid,
    mmd2_unbiased,
    polynomial_kernel,
    trace_sqrt_product,
)
from gcflow.metrics.protocol import (
    ReferenceStatsError,
    compute_reference_stats,
    evaluate_generator,
    load_reference_stats,
    read_reference_meta,
    save_reference_stats,
    sidecar_path,
)


def random_spd(rng: np.random.Generator, f: int, cond: float = 10.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    return (q * np.geomspace(1.0, 1.0 / cond, f)) @ q.T


# ---------------------------------------------------------------- Fréchet distance, closed forms


def test_diagonal_covariances_match_closed_form():
    rng = np.random.default_rng(0)
    f = 16
    mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
    v1, v2 = rng.uniform(0.1, 3.0, f), rng.uniform(0.1, 3.0, f)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_one_dimensional_gaussians():
    # W2²(N(m1, s1²), N(m2, s2²)) = (m1 − m2)² + (s1 − s2)².
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[0.25]])) == pytest.approx(
        9.0 + 1.5**2, rel=1e-12
    )


def test_commuting_covariances_match_closed_form():
    rng = np.random.default_rng(1)
    f = 12
    q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    a, b = rng.uniform(0.05, 2.0, f), rng.uniform(0.05, 2.0, f)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu = rng.standard_normal(f)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + 4.0 * f  # mean shift of 2 in every coordinate
    assert frechet_distance(mu, s1, mu + 2.0, s2) == pytest.approx(expected, rel=1e-9)


def test_general_covariances_agree_with_scipy_sqrtm():
    rng = np.random.default_rng(2)
    f = 24
    s1, s2 = random_spd(rng, f), random_spd(rng, f, cond=100.0)
    mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert trace_sqrt_product(s1, s2) == pytest.approx(trace_sqrt_product(s2, s1), rel=1e-10)


def test_symmetric_and_zero_for_identical_stats():
    rng = np.random.default_rng(3)
    f = 32
    s1, s2 = random_spd(rng, f), random_spd(rng, f)
    mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10 * np.trace(s1))
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def test_singular_covariances_are_handled():
    # Fewer samples than features: rank-deficient covariances (as with few images and 2048-d features).
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((10, 50)), rng.standard_normal((10, 50)) + 0.5
    mx, sx = feature_stats(x)
    my, sy = feature_stats(y)
    fd = frechet_distance(mx, sx, my, sy)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(mx, sx, mx, sx) == pytest.approx(0.0, abs=1e-9)
    # Diagonal with exact zeros: the closed form still holds.
    v1, v2 = np.r_[rng.uniform(0.5, 2, 5), np.zeros(5)], np.r_[np.zeros(3), rng.uniform(0.5, 2, 7)]
    expected = np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(np.zeros(10), np.diag(v1), np.zeros(10), np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_sample_estimate_converges_to_closed_form():
    rng = np.random.default_rng(5)
    f = 4
    s1, s2 = random_spd(rng, f), random_spd(rng, f)
    mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
    exact = frechet_distance(mu1, s1, mu2, s2)
    errors = []
    for n in (1_000, 100_000):
        x = rng.multivariate_normal(mu1, s1, size=n)
        y = rng.multivariate_normal(mu2, s2, size=n)
        errors.append(abs(frechet_distance(*feature_stats(x), *feature_stats(y)) - exact))
    assert errors[1] < 0.02 * exact
    assert errors[1] < errors[0]


def test_feature_stats_match_numpy_and_accept_tensors(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((257, 7)) * 3 + 10  # large mean: the centred two-pass must stay exact
    monkeypatch.setattr(frechet, "_CHUNK_ROWS", 50)  # exercise the chunked accumulation
    mu, sigma = feature_stats(torch.from_numpy(x.astype(np.float32)))
    assert mu.dtype == np.float64 and sigma.shape == (7, 7)
    np.testing.assert_allclose(mu, x.astype(np.float32).mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32), rowvar=False), rtol=1e-5)
    with pytest.raises(ValueError):
        feature_stats(np.zeros(5))


# ---------------------------------------------------------------- KID


def test_polynomial_kernel_and_unbiased_mmd_golden():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((6, 3))
    k = polynomial_kernel(x, y)
    assert k[1, 2] == pytest.approx((x[1] @ y[2] / 3 + 1) ** 3)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), k
    brute = (
        sum(kxx[i, j] for i in range(5) for j in range(5) if i != j) / 20
        + sum(kyy[i, j] for i in range(6) for j in range(6) if i != j) / 30
        - 2 * kxy.mean()
    )
    assert mmd2_unbiased(kxx, kyy, kxy) == pytest.approx(brute, rel=1e-12)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(8)
    f = 16
    a, b = rng.standard_normal((3000, f)), rng.standard_normal((3000, f))
    same_mean, same_std = kid(a, b, subsets=20, subset_size=500)
    shifted_mean, _ = kid(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-4
    assert abs(same_mean) < 0.02 * shifted_mean
    assert shifted_mean > 0.05
    # Reproducible with a seed, subset size capped by the smaller set.
    assert kid(a, b[:300], subsets=5, generator=1) == kid(a, b[:300], subsets=5, generator=1)


# ---------------------------------------------------------------- Inception Score


def test_inception_score_is_one_for_constant_predictions():
    logits = np.tile(np.array([[2.0, -1.0, 0.5, 3.0]]), (100, 1))
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["probs", "logits"])
def test_inception_score_is_k_for_confident_balanced_predictions(kind):
    k, splits = 7, 10
    labels = np.arange(k * splits * 3) % k  # every contiguous split holds each class 3 times
    one_hot = np.eye(k)[labels]
    scores = one_hot if kind == "probs" else 60.0 * one_hot  # softmax saturates to one-hot
    mean, std = inception_score(torch.from_numpy(scores), splits=splits, kind=kind)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-10)


def test_inception_score_logits_and_probs_agree_and_are_bounded():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((500, 12)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m_logits, s_logits = inception_score(logits)
    m_probs, s_probs = inception_score(probs, kind="probs")
    assert m_logits == pytest.approx(m_probs, rel=1e-10) and s_logits == pytest.approx(s_probs, rel=1e-8)
    assert 1.0 < m_logits < 12.0


# ---------------------------------------------------------------- protocol: reference files and draws


class PixelExtractor:
    """Features = the image's pixel values as floats; logits = first 3 pixels (a stand-in network)."""

    name = "pixels-test"

    def features(self, images):
        x = images.reshape(images.shape[0], -1).float() / 255.0
        return x, x[:, :3] * 5.0


def gaussian_images(seed_start: int, n: int, shift: float = 0.0) -> torch.Tensor:
    """uint8 (n, 1, 2, 2) images; image i depends only on seed seed_start + i."""
    out = []
    for s in range(seed_start, seed_start + n):
        g = torch.Generator().manual_seed(s)
        out.append((128 + 30 * torch.randn(1, 2, 2, generator=g) + shift).round().clamp(0, 255))
    return torch.stack(out).to(torch.uint8)


@pytest.fixture(scope="module")
def reference():
    return compute_reference_stats(gaussian_images(10**6, 4000), PixelExtractor(), batch=333, keep_features=2000)


def test_reference_stats_round_trip_and_tamper_detection(tmp_path, reference):
    path = tmp_path / "ref" / "toy.npz"
    save_reference_stats(path, reference, {"dataset": "toy", "num_images": 4000, "extractor": "pixels-test"})
    loaded = load_reference_stats(path, extractor="pixels-test")
    assert set(loaded) == {"mu", "sigma", "features"}
    for k in loaded:
        np.testing.assert_array_equal(loaded[k], reference[k])
    meta = read_reference_meta(path)
    assert meta["dataset"] == "toy" and meta["num_images"] == 4000 and len(meta["arrays"]["mu"]["sha256"]) == 64

    with pytest.raises(ReferenceStatsError, match="extractor"):
        load_reference_stats(path, extractor="inception-v3-compat")

    # Tamper with one array (valid npz, wrong numbers): the SHA-256 check catches it.
    tampered = dict(loaded, mu=loaded["mu"] + 1e-9)
    np.savez(path, **tampered)
    with pytest.raises(ReferenceStatsError, match="'mu'.*SHA-256"):
        load_reference_stats(path)

    # Sidecar missing or listing other arrays.
    save_reference_stats(path, reference, {"dataset": "toy", "num_images": 4000, "extractor": "pixels-test"})
    side = json.loads(sidecar_path(path).read_text())
    del side["arrays"]["features"]
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ReferenceStatsError, match="sidecar lists"):
        load_reference_stats(path)
    sidecar_path(path).unlink()
    with pytest.raises(ReferenceStatsError, match="sidecar"):
        load_reference_stats(path)
    with pytest.raises(ReferenceStatsError, match="not found"):
        load_reference_stats(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="lacks"):
        save_reference_stats(path, reference, {"dataset": "toy"})


def test_evaluate_generator_seeds_draws_and_ranking(reference):
    calls = []

    def sample_fn(seed_start, n):
        calls.append((seed_start, n))
        return gaussian_images(seed_start, n)

    kid_opts = {"kid_subsets": 10, "kid_subset_size": 200}
    out = evaluate_generator(sample_fn, PixelExtractor(), reference, num_samples=500, draws=3, batch=200, **kid_opts)
    # Draw j covers seeds j·500 … j·500 + 499, in batches of at most 200.
    assert calls[:3] == [(0, 200), (200, 200), (400, 100)] and calls[3] == (500, 200) and calls[6] == (1000, 200)
    assert out["draws"] == 3 and len(out["fid_draws"]) == 3 and out["extractor"] == "pixels-test"
    assert out["fid_std"] == pytest.approx(np.std(out["fid_draws"]))
    assert {"kid_mean", "kid_std", "is_mean", "is_std"} <= set(out)

    # Batch size does not change the numbers (sample i depends only on seed i).
    again = evaluate_generator(
        gaussian_images, PixelExtractor(), reference, num_samples=500, draws=3, batch=77, **kid_opts
    )
    np.testing.assert_allclose(again["fid_draws"], out["fid_draws"], rtol=1e-6)

    shifted_fn = lambda s, n: gaussian_images(s, n, shift=25.0)  # noqa: E731
    shifted = evaluate_generator(shifted_fn, PixelExtractor(), reference, num_samples=500, draws=2, **kid_opts)
    assert shifted["fid_mean"] > 10 * out["fid_mean"]
    assert shifted["kid_mean"] > 10 * abs(out["kid_mean"])
