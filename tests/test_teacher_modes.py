"""The teacher modes of the bundled trainer: diffusion pretraining (method.pairs=edm), CD from a
teacher or the exact empirical velocity, ECT tuning initialised from the teacher (with GC)."""

import json

import pytest
import torch

from gcflow.teacher.edm_loss import Denoiser
from gcflow.teacher.edm_sampler import edm_sample, edm_sampler_sigmas
from gcflow.toy.mixture import GaussianMixture
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import ConfigError, apply_overrides, validate
from gcflow.training.objectives import OBJECTIVES, get_objective
from gcflow.training.presets import load_preset
from gcflow.training.teacher_source import cd_velocity, empirical_velocity, load_teacher_model, teacher_velocity
from gcflow.training.trainer import train

TINY = [
    "network.channels=8",
    "train.batch_size=16",
    "train.eval_samples=64",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "method.edm_sampler_steps=4",
]
QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("gcflow-cache")
    old = os.environ.get("GCFLOW_CACHE")
    os.environ["GCFLOW_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["GCFLOW_CACHE"]
    else:
        os.environ["GCFLOW_CACHE"] = old


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, cache):
    """A 20-step digits diffusion run (the shared teacher of these tests)."""
    cfg = apply_overrides(load_preset("digits-edm"), [*TINY, "train.steps=20"])
    return train(cfg, tmp_path_factory.mktemp("t") / "edm", **QUIET)


def test_edm_sampler_levels_golden():
    t = edm_sampler_sigmas(3, 0.002, 80.0, 7.0)
    mid = (80.0 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert torch.allclose(t, torch.tensor([80.0, mid, 0.002, 0.0], dtype=torch.float64))
    assert abs(mid - 2.51522) < 1e-4  # ((80^(1/7) + 0.002^(1/7))/2)^7


def test_heun_sampler_with_exact_denoiser_lands_on_the_data(gen):
    """The PF-ODE of an empirical distribution ends on its points: Heun with the exact denoiser gets there."""
    points = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    mix = GaussianMixture.empirical(points)
    x = edm_sample(lambda x, s: mix.denoise(x, s), torch.randn(64, 4, generator=gen, dtype=torch.float64), steps=40)
    nearest = torch.cdist(x, points).min(dim=1).values
    assert nearest.max() < 1e-2


def test_registry_and_validation():
    assert set(OBJECTIVES) == {"ct", "cd", "edm", "ect"}
    with pytest.raises(KeyError, match="unknown objective"):
        get_objective("dsm")
    for bad in (
        ["method.pairs=edm", "method.gc_mu=0.5"],
        ["method.pairs=ect", "method.teacher=x"],
        ["method.pairs=ect", "method.ect_q=1"],
    ):
        with pytest.raises(ConfigError):
            validate(apply_overrides(load_preset("digits-ic"), bad))


def test_diffusion_run_is_a_denoiser_scored_with_heun(teacher):
    model = load_teacher_model(teacher.run_dir)
    assert isinstance(model, Denoiser) and not model.training
    record = json.loads((teacher.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 20 and record["classifier_fd"] > 0 and record["pixel_sliced_w2"] > 0


def test_teacher_velocity_is_denoiser_velocity(teacher, gen):
    model = load_teacher_model(teacher.run_dir)
    v = teacher_velocity(teacher.run_dir)
    x, s = torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([0.1, 1.0, 5.0, 80.0])
    with torch.no_grad():
        expected = (x - model(x, s)) / s.view(-1, 1, 1, 1)
    assert torch.allclose(v(x, s), expected, atol=1e-5)


def test_consistency_run_is_not_a_cd_teacher(tmp_path, cache):
    run = train(apply_overrides(load_preset("digits-ic"), [*TINY, "train.steps=2"]), tmp_path / "ic", **QUIET)
    with pytest.raises(ConfigError, match="not a diffusion model"):
        teacher_velocity(run.run_dir)
    with pytest.raises(ConfigError, match="gcflow run folder or a 'gcflow import-edm' file"):
        load_teacher_model(tmp_path / "missing")


def test_oracle_cd_velocity_on_digits_is_the_empirical_one(gen):
    from gcflow.training.data_source import build_source

    cfg = apply_overrides(load_preset("digits-cd-oracle"), TINY)
    source = build_source(cfg, torch.device("cpu"))
    v = cd_velocity(cfg, source, torch.device("cpu"))
    images = (
        source.dataset.images.to(torch.float32) / 127.5 - 1
        if source.dataset.images.dtype == torch.uint8
        else source.dataset.images
    )
    x, s = torch.randn(3, 1, 8, 8, generator=gen), torch.tensor([0.05, 0.5, 20.0])
    assert torch.allclose(v(x, s), empirical_velocity(images)(x, s), atol=1e-5)
    # At a small level near a training point the exact velocity points back at it: (x − x_k)/σ = z.
    z = torch.randn(1, 1, 8, 8, generator=gen)
    near = images[:1] + 0.01 * z
    assert torch.allclose(v(near, torch.tensor([0.01])), z, atol=1e-3)


def test_ect_gc_digits_50_steps_end_to_end(teacher, tmp_path):
    """ECT-GC (μ = 0.3) from the teacher: starts from its raw network, trains 50 steps, scores finite metrics."""
    from gcflow.training.builders import build_model, init_from_teacher

    cfg = apply_overrides(
        load_preset("digits-ect-gc"), [*TINY, "train.steps=50", f"method.init_from={teacher.run_dir}"]
    )
    init = init_from_teacher(build_model(cfg, (1, 8, 8)), cfg)
    tnet = load_teacher_model(teacher.run_dir).net.state_dict()
    assert all(torch.equal(v, tnet[k]) for k, v in init.net.state_dict().items())
    res = train(cfg, tmp_path / "ect", **QUIET)
    assert res.summary["step"] == 50 and res.summary["config"]["method"]["gc_mu"] == 0.3
    assert 0 < res.summary["classifier_fd"] < float("inf") and res.summary["pixel_sliced_w2"] > 0
    moved = [not torch.equal(v, tnet[k]) for k, v in res.model.net.state_dict().items() if v.is_floating_point()]
    assert any(moved)


def test_init_from_mismatched_network_is_one_line_error(teacher, tmp_path):
    cfg = apply_overrides(
        load_preset("digits-ect-ic"),
        [*TINY, "network.channels=16", "train.steps=2", f"method.init_from={teacher.run_dir}"],
    )
    with pytest.raises(ConfigError, match="does not match network"):
        train(cfg, tmp_path / "bad", **QUIET)


def _resume_matches(cfg, tmp_path):
    full = train(cfg, tmp_path / "full", **QUIET)
    train(cfg, tmp_path / "part", **QUIET)
    for step in (6, 8):  # resume from step 4 and redo 4 steps
        (tmp_path / "part" / "checkpoints" / f"ckpt-{step:08d}.safetensors").unlink()
    res = train(cfg, tmp_path / "part", resume=True, **QUIET)
    ta = ckpt.load_latest_checkpoint(full.run_dir / "checkpoints").tensors
    tb = ckpt.load_latest_checkpoint(res.run_dir / "checkpoints").tensors
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("mode", ["edm", "ect-gc", "cd-teacher", "cd-oracle"])
def test_resume_is_bit_identical_for_teacher_modes(mode, teacher, tmp_path):
    preset, extra = {
        "edm": ("digits-edm", []),
        "ect-gc": ("digits-ect-gc", [f"method.init_from={teacher.run_dir}", "method.ect_stages=2"]),
        "cd-teacher": ("digits-cd", [f"method.teacher={teacher.run_dir}", "method.cd_solver=heun"]),
        "cd-oracle": ("digits-cd-oracle", []),
    }[mode]
    # 8 steps, checkpoints every 2 (the ECT stage changes at step 4); resume from step 4.
    cfg = apply_overrides(
        load_preset(preset), [*TINY, *extra, "train.steps=8", "train.checkpoint_every=2", "train.eval_every=0"]
    )
    _resume_matches(cfg, tmp_path)
