"""Reliability promises: exact resume, corrupt-checkpoint fallback, numerical faults, code-free checkpoints.

Each test proves one line of the README section "What gcflow guarantees".
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import re
import signal
from pathlib import Path

import pytest
import torch

import gcflow
import gcflow.training.trainer as trainer_mod
from gcflow.cli import main
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

# A tiny toy run: 30 steps, evaluations at 10/20/30, checkpoints at 10/20/30.
TINY = [
    "train.steps=30",
    "train.batch_size=32",
    "train.eval_every=10",
    "train.eval_samples=100",
    "train.checkpoint_every=10",
    "network.width=16",
    "network.depth=1",
    "train.log_every=10",
    "train.device=cpu",
]
QUIET = {"progress": False, "log": lambda *_: None}
# The smallest metadata that passes checkpoint.validate_meta (what the trainer writes, with an empty config).
MINIMAL_META = {
    "config": {},
    "data_shape": [2],
    "num_classes": 0,
    "loss_window": None,
    "data": {},
    "optimizer": {"param_groups": [], "scalars": {}},
}


def _cfg(preset: str = "toy-gc", extra: tuple[str, ...] = ()):
    return apply_overrides(load_preset(preset), TINY + list(extra))


def _final_tensors(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1]).tensors


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    wall_time = ("seconds", "images_per_s", "step_time_ms")  # the records' only non-deterministic values
    return [{k: v for k, v in json.loads(line).items() if k not in wall_time} for line in lines if line.strip()]


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("gcflow: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny toy-gc run (the run every resumed run must reproduce)."""
    return train(_cfg(), tmp_path_factory.mktemp("ref") / "run", **QUIET).run_dir


def _interrupt_at(monkeypatch, step: int, how: str = "signal") -> None:
    """Make training step `step` (1-based) raise SIGINT in this process, or produce a NaN loss or gradient."""
    real = trainer_mod.consistency_loss
    calls = {"n": 0}

    class _NaNGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    def loss(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == step:
            if how == "signal":
                signal.raise_signal(signal.SIGINT)
            elif how == "nan-loss":
                out = out * float("nan")
            elif how == "nan-grad":
                out = _NaNGradient.apply(out)
        return out

    monkeypatch.setattr(trainer_mod, "consistency_loss", loss)


# --- Resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, extra", [("toy-gc", ("network.dropout=0.2",)), ("toy-ot", ("optim.name=lion", "optim.lr=1e-4"))]
)
def test_cli_resume_after_interrupt_is_bit_identical(tmp_path, capsys, monkeypatch, preset, extra):
    """`gcflow train --resume` after Ctrl-C ends with the weights, EMA, optimizer and metrics of an
    uninterrupted run.
    """
    argv = ["train", "--no-progress", "--preset", preset, *TINY, *extra]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 13)
        assert main([*argv, "--out", str(tmp_path / "part")]) == 130
    assert "stopped by signal" in capsys.readouterr().out
    assert ckpt.load_latest_checkpoint(tmp_path / "part" / "checkpoints").meta["step"] == 13  # mid-window: 13 % 10 != 0
    assert main(["train", "--no-progress", "--resume", str(tmp_path / "part")]) == 0
    assert "resuming" in capsys.readouterr().out
    assert _same_tensors(_final_tensors(tmp_path / "full"), _final_tensors(tmp_path / "part"))
    assert _metrics(tmp_path / "full") == _metrics(tmp_path / "part")
    full, part = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("full", "part"))
    assert full["w2"] == part["w2"] and full["loss"] == part["loss"]


def test_resume_of_a_finished_run_changes_nothing(reference, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    before = _final_tensors(run)
    res = train(_cfg(), run, resume=True, **QUIET)
    assert res.summary["step"] == 30 and _same_tensors(before, _final_tensors(run))


# --- Corrupt checkpoints ------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_tensor_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # inside the tensor data: the checksum catches it
    path.write_bytes(bytes(raw))


def _edit_metadata(path: Path) -> None:
    raw = path.read_bytes()
    assert raw.count(b'\\"step\\": 30') == 1
    path.write_bytes(
        raw.replace(b'\\"step\\": 30', b'\\"step\\": 31')
    )  # valid JSON, same length: the meta checksum catches it


@pytest.mark.parametrize(
    "damage",
    [_truncate, _flip_tensor_byte, _edit_metadata, lambda p: p.write_bytes(b"")],
    ids=["truncated", "bit-flip", "edited-metadata", "empty"],
)
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_used(reference, tmp_path, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest = run / "checkpoints" / "ckpt-00000030.safetensors"
    damage(newest)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(newest)
    assert main(["train", "--no-progress", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"gcflow: warning: .*ckpt-00000030.safetensors .*(truncated or corrupt|checksum).*trying the previous", out
    ), out
    assert f"resuming {run} from step 20" in out
    # The damaged file was replaced by a good one; the run ends as the uninterrupted one.
    assert _same_tensors(_final_tensors(reference), _final_tensors(run))
    assert _metrics(reference) == _metrics(run)


def test_no_verifiable_checkpoint_refuses_to_resume(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        _truncate(p)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert main(["train", "--no-progress", "--resume", str(run)]) == 2
    assert "no checkpoint in" in _one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_leftover_temp_files_are_ignored_and_cleaned(tmp_path):
    d = tmp_path / "ck"
    good = ckpt.save_checkpoint(d, 10, {"w": torch.ones(3)}, MINIMAL_META, keep=3)
    dead = d / ".ckpt-00000020.safetensors.tmp-999999999"  # a write killed before its rename
    dead.write_bytes(good.read_bytes()[:100])
    assert ckpt.list_checkpoints(d) == [good] and ckpt.load_latest_checkpoint(d).meta["step"] == 10
    ckpt.save_checkpoint(d, 20, {"w": torch.zeros(3)}, MINIMAL_META, keep=3)
    assert not dead.exists() and sorted(p.name for p in d.iterdir()) == [
        "ckpt-00000010.safetensors",
        "ckpt-00000020.safetensors",
    ]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the file being fsynced through /proc (Linux)")
def test_checkpoint_write_failure_keeps_the_previous_checkpoints(tmp_path, capsys, monkeypatch):
    """A full disk during a checkpoint write: one-line error, exit 2, older checkpoints intact, resumable."""
    real_fsync = os.fsync

    def fsync(fd):
        if "ckpt-00000020" in os.readlink(f"/proc/self/fd/{fd}"):  # the disk fills up while writing checkpoint 20
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        code = main(["train", "--no-progress", "--out", str(run), *TINY])
    assert code == 2
    line = _one_error_line(capsys)
    assert "cannot write" in line and ("disk is full" in line or "space" in line), line
    ckpt_dir = run / "checkpoints"
    steps = [int(ckpt.load_checkpoint(p).meta["step"]) for p in ckpt.list_checkpoints(ckpt_dir)]
    assert steps == [10] and [p.name for p in ckpt_dir.iterdir()] == ["ckpt-00000010.safetensors"]
    assert main(["train", "--no-progress", "--resume", str(run)]) == 0
    assert ckpt.load_latest_checkpoint(ckpt_dir).meta["step"] == 30


# --- Numerical faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("how, what", [("nan-loss", "loss"), ("nan-grad", "gradient")])
def test_nonfinite_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, capsys, monkeypatch, how, what):
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, 15, how)
    assert main(["train", "--no-progress", "--out", str(run), *TINY]) == 2
    line = _one_error_line(capsys)
    assert f"non-finite {what} at step 15" in line and "likely cause" in line, line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-00000010.safetensors"]
    good = ckpt.load_checkpoint(run / "checkpoints" / "ckpt-00000010.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in good.tensors.values() if t.is_floating_point())


@pytest.mark.parametrize(
    "how, step", [("nan-grad", 7), ("nan-loss", 30)]
)  # an ordinary step; the last (eval + checkpoint) step
def test_nonfinite_skip_skips_only_that_update(tmp_path, monkeypatch, how, step):
    messages: list[str] = []
    _interrupt_at(monkeypatch, step, how)
    res = train(_cfg(extra=("train.nonfinite=skip",)), tmp_path / "run", progress=False, log=messages.append)
    assert any(f"at step {step}" in m and "skipping the step" in m for m in messages), messages
    assert res.summary["step"] == 30 and [r["step"] for r in _metrics(res.run_dir) if r["kind"] == "eval"] == [
        10,
        20,
        30,
    ]
    final = ckpt.load_latest_checkpoint(res.run_dir / "checkpoints")
    assert final.meta["step"] == 30
    assert all(bool(torch.isfinite(t).all()) for t in final.tensors.values() if t.is_floating_point())


def test_nonfinite_checkpoint_never_overwrites_a_good_one(tmp_path):
    d = tmp_path / "ck"
    good = ckpt.save_checkpoint(d, 10, {"w": torch.ones(4)}, MINIMAL_META)
    before = good.read_bytes()
    for step in (10, 20):  # the same name, and a newer one
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ckpt.CheckpointError, match=f"non-finite values in 'w' at step {step}"):
                ckpt.save_checkpoint(d, step, {"w": torch.tensor([1.0, bad, 0.0, 1.0])}, MINIMAL_META)
    assert [p.name for p in d.iterdir()] == [good.name] and good.read_bytes() == before


# --- Checkpoints never run code -----------------------------------------------------------------


class _Payload:
    """Unpickling this object would run code that creates `marker` (as a malicious checkpoint would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def malicious(tmp_path) -> dict[str, Path]:
    """A pickle and a torch.save file carrying a live code payload (checked live below), plus the marker path."""
    marker = tmp_path / "PWNED"
    pkl, pt = tmp_path / "evil.pkl", tmp_path / "evil.pt"
    pkl.write_bytes(pickle.dumps({"model.w": _Payload(marker)}))
    torch.save({"model": {"w": torch.zeros(2)}, "hook": _Payload(marker)}, pt)
    # The payloads are live: a plain unpickle runs them.
    pickle.loads(pkl.read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(pt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # PyTorch's weights-only loader, the only way gcflow would ever read a torch file, refuses them.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(pt, weights_only=True)
    assert not marker.exists()
    return {"marker": marker, "pkl": pkl, "pt": pt}


def _plant(run: Path, payload: Path) -> Path:
    """Make `payload` the only checkpoint of run folder `run`, named like a real one."""
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        p.unlink()
    target = run / "checkpoints" / "ckpt-00000030.safetensors"
    target.write_bytes(payload.read_bytes())
    return target


@pytest.mark.parametrize("kind", ["pkl", "pt"])
def test_malicious_checkpoints_are_refused_without_running_code(reference, tmp_path, capsys, malicious, kind):
    import shutil

    marker, payload = malicious["marker"], malicious[kind]
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    planted = _plant(run, payload)
    renamed = tmp_path / f"evil-{kind}.safetensors"
    renamed.write_bytes(payload.read_bytes())

    # gcflow sample: the file itself (original and disguised names) and a run folder holding it.
    for target, fragment in (
        (payload, "not a .safetensors checkpoint"),
        (renamed, "pickle or torch.save file"),
        (run, "no valid checkpoint"),
    ):
        assert main(["sample", str(target), "--n", "4", "--out", str(tmp_path / "s")]) == 2
        assert fragment in _one_error_line(capsys)
    # gcflow train --resume on that run folder: refused, nothing changed.
    assert main(["train", "--no-progress", "--resume", str(run)]) == 2
    assert "no checkpoint in" in _one_error_line(capsys)
    assert planted.read_bytes() == payload.read_bytes() and ckpt.list_checkpoints(run / "checkpoints") == [planted]
    # A frozen GC predictor loaded from it.
    for target, fragment in (
        (payload, "not a .safetensors checkpoint"),
        (renamed, "pickle or torch.save file"),
        (run, "no valid checkpoint"),
    ):
        argv = [
            "train",
            "--no-progress",
            "--out",
            str(tmp_path / f"gc-{target.name}"),
            *TINY,
            "method.gc_predictor=frozen",
            f"method.gc_checkpoint={target}",
        ]
        assert main(argv) == 2
        assert fragment in _one_error_line(capsys)
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_json(reference):
    """A run folder has no pickle anywhere, and a checkpoint's non-tensor state is one JSON document."""
    # (TensorBoard's event files, written when the package is installed, are protocol buffers, not pickles)
    suffixes = {p.suffix for p in reference.rglob("*") if p.is_file() and "tb" not in p.relative_to(reference).parts}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".png"}, suffixes
    chk = ckpt.load_checkpoint(ckpt.list_checkpoints(reference / "checkpoints")[-1])
    assert all(isinstance(t, torch.Tensor) for t in chk.tensors.values())
    assert json.loads(json.dumps(chk.meta)) == chk.meta
    assert {k.split(".")[0] for k in chk.tensors} == {"model", "ema", "optim"}


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call to a name or attribute chain, e.g. ("torch.load", ...)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                out.append((".".join([f.id, *reversed(parts)]), node))
    return out


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


# Restricted unpicklers, each tested against a live payload: CIFAR's batches (tests/test_image_datasets.py)
# and EDM network pickles (tests/test_import_edm.py).
AUDITED_UNPICKLERS = {"cifar.py", "edm_pickle.py"}


def test_source_never_unpickles_untrusted_files():
    """Static audit: torch files only through the weights-only loader, numpy without pickles, no bare unpickling."""
    problems = []
    for path in Path(gcflow.__file__).parent.rglob("*.py"):
        for name, call in _calls(ast.parse(path.read_text())):
            where = f"{path.name}:{call.lineno} {name}"
            if name == "torch.load" and not _keyword_is(call, "weights_only", True):
                problems.append(f"{where} without weights_only=True")
            if name in ("np.load", "numpy.load") and not _keyword_is(call, "allow_pickle", False):
                problems.append(f"{where} without allow_pickle=False")
            if name in (
                "pickle.load",
                "pickle.loads",
                "torch.jit.load",
                "joblib.load",
                "yaml.load",
                "yaml.unsafe_load",
                "dill.load",
                "dill.loads",
                "marshal.loads",
                "eval",
                "exec",
            ):
                problems.append(f"{where}: unrestricted deserialisation or evaluation")
            if name.endswith("Unpickler") and path.name not in AUDITED_UNPICKLERS:
                problems.append(f"{where}: an Unpickler outside the audited readers {sorted(AUDITED_UNPICKLERS)}")
    assert not problems, problems


# --- Resume on an image dataset -----------------------------------------------------------------

DIGITS = [
    "network.channels=8",
    "network.channel_mult=1,2",
    "network.num_blocks=1",
    "network.attn_resolutions=4",
    "network.dropout=0.1",
    "data.flip=true",
    "train.steps=30",
    "train.batch_size=64",
    "train.eval_every=15",
    "train.eval_samples=64",
    "train.checkpoint_every=10",
    "train.device=cpu",
]


def test_image_resume_across_an_epoch_boundary_is_bit_identical(tmp_path, monkeypatch):
    """Digits with a tiny SongUNet: interrupted at step 25 (past the epoch end at 1500 // 64 = 23 batches), resumed."""
    from gcflow.training.trainer import Interrupted

    cfg = apply_overrides(load_preset("digits-gc"), DIGITS)
    full = train(cfg, tmp_path / "full", **QUIET)
    with monkeypatch.context() as m:
        _interrupt_at(m, 25)
        with pytest.raises(Interrupted, match="at step 25"):
            train(cfg, tmp_path / "part", **QUIET)
    chk = ckpt.load_latest_checkpoint(tmp_path / "part" / "checkpoints")
    assert chk.meta["step"] == 25 and chk.meta["data"] == {
        "epoch": 1,
        "position": 2 * 64,
    }  # the loader's place in epoch 1
    part = train(cfg, tmp_path / "part", resume=True, **QUIET)
    assert _same_tensors(_final_tensors(full.run_dir), _final_tensors(part.run_dir))
    assert _metrics(full.run_dir) == _metrics(part.run_dir)
    assert "classifier_fd" in part.summary and part.summary["classifier_fd"] == full.summary["classifier_fd"]
