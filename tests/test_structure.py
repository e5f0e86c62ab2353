"""The structure's contracts: one pair-construction path, one validation per command, a typed loaded run,
and no silently dropped noise floor."""

import pytest
import torch

from gcflow.cli import main
from gcflow.data import DatasetError
from gcflow.pairs import PairRecipe, build_pairs, get_coupling, select_gc
from gcflow.randomness import step_generator
from gcflow.training import config as config_module
from gcflow.training import step as step_module
from gcflow.training import trainer as trainer_module
from gcflow.training.config import apply_overrides, to_dict
from gcflow.training.presets import load_preset
from gcflow.training.run_state import LoadedRun, load_model_for_inference, load_run
from gcflow.training.trainer import train

TINY = [
    "train.steps=6",
    "train.batch_size=32",
    "train.eval_every=0",
    "train.eval_samples=50",
    "train.checkpoint_every=0",
    "network.width=16",
    "network.depth=1",
    "train.device=cpu",
]


def _tiny(preset: str, extra=()):
    return apply_overrides(load_preset(preset), TINY + list(extra))


@pytest.mark.parametrize("preset", ["toy-ot", "toy-gc", "toy-cd"])
def test_trainer_builds_pairs_with_the_library_call(tmp_path, monkeypatch, preset):
    """The pairs of every training step equal those of the call a user's own loop makes: coupled noise
    from get_coupling, the GC mask from select_gc with the step's generator, then build_pairs."""
    seen = []

    def spy(recipe, x0, z, sigma_i, sigma_next, weight, **kw):
        pairs = build_pairs(recipe, x0, z, sigma_i, sigma_next, weight, **kw)
        seen.append(
            (
                recipe,
                x0,
                z.clone(),
                sigma_i,
                sigma_next,
                weight,
                kw.get("gc_mask"),
                kw.get("predictor"),
                kw.get("velocity"),
                pairs,
            )
        )
        return pairs

    monkeypatch.setattr(step_module, "build_pairs", spy)
    cfg = _tiny(preset)
    train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert len(seen) == cfg.train.steps
    m = cfg.method
    for k, (recipe, x0, z, s_i, s_n, w, mask, predictor, velocity, pairs) in enumerate(seen):
        drawn = torch.randn((cfg.train.batch_size, 2), generator=step_generator(cfg.train.seed, k, "noise"))
        assert recipe == PairRecipe(kind=m.pairs, cd_solver=m.cd_solver)
        assert torch.equal(z, get_coupling(m.coupling)(x0, drawn))
        expected_mask = (
            select_gc(cfg.train.batch_size, m.gc_mu, step_generator(cfg.train.seed, k, "gc")) if m.gc_mu else None
        )
        assert (mask is None) == (expected_mask is None)
        if mask is not None:
            assert torch.equal(mask, expected_mask)
        again = build_pairs(
            PairRecipe(m.pairs, m.cd_solver),
            x0,
            z,
            s_i,
            s_n,
            w,
            gc_mask=expected_mask,
            predictor=predictor,
            velocity=velocity,
        )
        if m.gc_mu == 0:  # (with GC the predictor has moved on since; its rows are checked in test_pairs)
            assert torch.equal(again.x_i, pairs.x_i) and torch.equal(again.x_next, pairs.x_next)


def _count_validations(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = config_module.validate

    def counting(cfg):
        calls.append(to_dict(cfg))
        return real(cfg)

    for module in ("gcflow.commands.train", "gcflow.training.trainer"):
        monkeypatch.setattr(f"{module}.validate", counting)
    return calls


def test_gcflow_train_validates_its_config_once(tmp_path, monkeypatch):
    calls = _count_validations(monkeypatch)
    args = ["train", "--preset", "toy-ic", *TINY, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    assert len(calls) == 1
    # On resume the command line's config and the run's saved one are each checked once.
    calls.clear()
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert len(calls) == 2 and calls[1] == to_dict(_tiny("toy-ic"))


def test_train_validates_a_library_callers_config(tmp_path):
    with pytest.raises(config_module.ConfigError, match="outside"):
        train(_tiny("toy-gc", ["method.gc_mu=1.5"]), tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_load_run_is_typed_and_sets_no_module_attributes(tmp_path):
    res = train(_tiny("toy-gc"), tmp_path / "run", progress=False, log=lambda *_: None)
    run = load_run(res.run_dir)
    assert isinstance(run, LoadedRun)
    assert run.data_shape == (2,) and run.num_classes == 0 and to_dict(run.config) == to_dict(_tiny("toy-gc"))
    assert not run.model.training
    assert not hasattr(run.model, "data_shape") and not hasattr(run.model, "num_classes")
    # The EMA weights of the run (what load_model_for_inference returns too).
    model, cfg = load_model_for_inference(res.run_dir)
    assert to_dict(cfg) == to_dict(run.config)
    for (name, a), b, c in zip(
        run.model.state_dict().items(), model.state_dict().values(), res.ema.state_dict().values()
    ):
        assert torch.equal(a, b) and torch.equal(a, c), name


def test_unreadable_held_out_split_is_a_warning_not_silence(monkeypatch):
    from gcflow.training import evaluate
    from gcflow.training.data_source import ImageSource

    real = evaluate.load_split

    def corrupt_test_split(cfg, split):
        if split == "test":
            raise DatasetError(f"/data/{cfg.data.name}/test.bin is truncated; download it again")
        return real(cfg, split)

    monkeypatch.setattr(evaluate, "load_split", corrupt_test_split)
    cfg = apply_overrides(load_preset("digits-ic"), ["train.batch_size=32", "train.eval_samples=64"])
    source = ImageSource(cfg, torch.device("cpu"))
    logged: list[str] = []
    ev = evaluate.ImageEvaluator(cfg, source, torch.device("cpu"), log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("gcflow: warning: ") and "/data/digits/test.bin" in logged[0]
    assert ev.floor == {} and ev.classifier is None

    def broken(cfg, split):  # anything but a dataset error is a bug: it must surface
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluate, "load_split", broken)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate.ImageEvaluator(cfg, source, torch.device("cpu"), log=logged.append)


def test_trainer_module_holds_the_loop_only():
    """The helpers moved out keep working from their new homes; the trainer re-exports only its public names."""
    assert set(trainer_module.__all__) == {
        "Interrupted",
        "RunResult",
        "TrainingError",
        "load_model_for_inference",
        "train",
    }
    from gcflow.training.distributed import fingerprint, split_global_batch
    from gcflow.training.faults import TrainingError

    assert trainer_module.TrainingError is TrainingError
    assert split_global_batch(8, 2) == 4
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert not torch.equal(fingerprint(a), fingerprint(b))
    b.load_state_dict(a.state_dict())
    assert torch.equal(fingerprint(a), fingerprint(b))
