"""Data-parallel training on the CPU (gloo): W processes train the single-process run with the same global batch.

Two processes are started with torch.multiprocessing (as torchrun would: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), and once through the documented `torchrun ... -m gcflow train` command.
Dropout is 0 (its seed is per process, so with dropout the runs would differ by design).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from gcflow.training import checkpoint as ckpt
from gcflow.training.config import ConfigError, apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

# Toy GC run (μ = 0.5, EMA predictor): 8 steps, checkpoints at 4 and 8, one evaluation at the end.
TINY = [
    "train.steps=8",
    "train.batch_size=32",
    "train.eval_every=0",
    "train.eval_samples=64",
    "train.checkpoint_every=4",
    "network.width=16",
    "network.depth=1",
    "network.dropout=0",
    "optim.name=adam",
    "optim.lr=1e-3",
    "train.device=cpu",
]
QUIET = {"progress": False, "log": lambda *_: None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _states(result) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}
    out.update({f"ema.{k}": v.detach().clone().contiguous() for k, v in result.ema.state_dict().items()})
    return out


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str, overrides: list[str]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    cfg = apply_overrides(load_preset("toy-gc"), overrides)
    res = train(cfg, Path(run_dir), **QUIET)
    # No DistributedDataParallel wrapper outlives the run's process group: freed later by the garbage
    # collector, its reducer would destroy the group while holding the GIL and deadlock with a gloo
    # worker thread (a hang seen in CI). Checked before anything here runs a collection.
    leftover = [type(o).__name__ for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    Path(out_dir, f"leftover{rank}.json").write_text(json.dumps(leftover))
    save_file(_states(res), str(Path(out_dir, f"rank{rank}.safetensors")))
    Path(out_dir, f"summary{rank}.json").write_text(json.dumps(res.summary, sort_keys=True))


def _spawn(tmp_path: Path, overrides: list[str], world: int = 2) -> Path:
    out = tmp_path / "out"
    for attempt in range(3):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        out.mkdir()
        try:
            args = (world, _free_port(), str(tmp_path / "run"), str(out), overrides)
            mp.spawn(_worker, args=args, nprocs=world, join=True)
            return out
        except mp.ProcessRaisedException as exc:
            # The free port can be taken by another test process between _free_port() and the group's
            # store binding it (pytest -n 2): try a new port, but fail on anything else.
            if "EADDRINUSE" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=tol, atol=tol) for k in a)


def test_two_processes_train_the_single_process_run(tmp_path):
    out = _spawn(tmp_path, TINY)
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert [json.loads((out / f"leftover{r}.json").read_text()) for r in (0, 1)] == [[], []]
    # DDP keeps the processes bit-identical: same gradients, same updates, same EMA.
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    summary = json.loads((out / "summary0.json").read_text())
    assert (out / "summary1.json").read_text() == (
        out / "summary0.json"
    ).read_text()  # every process returns rank 0's summary
    # Rank 0 alone wrote the run folder, and its checkpoint holds what the processes trained.
    final = ckpt.load_latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert final.meta["step"] == 8 and all(torch.equal(final.tensors[k], r0[k]) for k in r0)
    # The same global batch in one process: the same run, up to the order of floating-point sums.
    single = train(apply_overrides(load_preset("toy-gc"), TINY), tmp_path / "single", **QUIET)
    assert _close(r0, _states(single))
    # The logged loss is the mean over processes, i.e. the single-process loss; evaluation sees the same EMA.
    assert summary["loss"] == pytest.approx(single.summary["loss"], rel=1e-5)
    assert summary["w2"] == pytest.approx(single.summary["w2"], rel=1e-4)
    # A checkpoint written by two processes resumes in one (the loader state does not depend on the world size).
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed)
    (resumed / "checkpoints" / "ckpt-00000008.safetensors").unlink()
    res = train(apply_overrides(load_preset("toy-gc"), TINY), resumed, resume=True, **QUIET)
    assert _close(_states(res), _states(single))


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun not installed"
)
def test_documented_torchrun_command(tmp_path):
    """`torchrun --standalone --nproc-per-node=2 -m gcflow train ...` (docs/scaling.md) on the CPU.

    Also: a global batch that the processes cannot share is one ConfigError line (from rank 0 only),
    before any file is touched.
    """
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "gcflow",
        "train",
        "--preset",
        "toy-gc",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
        *TINY,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("gcflow: finished 8 steps") == 1, done.stdout  # rank 0 alone reports
    assert ckpt.load_latest_checkpoint(tmp_path / "run" / "checkpoints").meta["step"] == 8
    odd = [
        o if not o.startswith("train.batch_size=") else "train.batch_size=33" for o in TINY
    ]  # (a key twice is an error)
    bad = subprocess.run(
        [*cmd[: -len(TINY)], *odd, "--overwrite"], capture_output=True, text=True, env=env, timeout=240
    )
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("gcflow: error:")]
    assert errors == [
        "gcflow: error: train.batch_size=33 is not divisible by the 2 processes; "
        "use a multiple of 2 such as train.batch_size=32"
    ], bad.stderr[-2000:]
    assert (
        ckpt.load_latest_checkpoint(tmp_path / "run" / "checkpoints").meta["step"] == 8
    )  # --overwrite never got to act


def test_world_from_torchrun_environment():
    from gcflow.training.distributed import World, world_from_env

    assert world_from_env({}) == World(0, 1, 0)
    assert world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(ConfigError, match="torchrun") as info:
            world_from_env(bad)
        assert "\n" not in str(info.value)
