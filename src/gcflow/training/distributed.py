"""Data-parallel training across the processes that `torchrun` starts (see docs/scaling.md).

torchrun gives each process RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. A process
started any other way is a world of one, and nothing here talks to other processes: every helper
below is then the identity, so the single-process trainer runs exactly the code it always ran.

The division of labour in a run of W processes:

* every process draws the levels, noise and GC selection of the *global* batch from the
  (seed, step, stream) generators and keeps its rows [r·G/W, (r+1)·G/W), as the data loader does
  for the images, so the global batch is the single-process batch whatever W is;
* DistributedDataParallel averages the gradients; with the loss a mean over equal-size slices, the
  average of the W slice means is the global mean, so each update is the single-process update;
* the model, its EMA and the optimizer are therefore identical on every process (checked at every
  checkpoint); rank 0 alone evaluates, logs, and writes the run folder and its checkpoints;
* decisions (stop on a signal, a non-finite loss) are agreed on by all processes at sync points.

Collectives: NCCL for CUDA tensors and gloo for CPU tensors (one process group with both
backends when CUDA is available, so small control messages always travel as CPU tensors).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gcflow.training.builders import resolve_device
from gcflow.training.config import ConfigError

T = TypeVar("T")
TIMEOUT_ENV = "GCFLOW_DIST_TIMEOUT_MINUTES"  # how long a process waits at a collective (rank 0 may be evaluating)


class DistributedError(RuntimeError):
    """Another process of the run failed; the message is that process's one-line error."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank in [0, size), and its rank on its node (its GPU index)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 owns the run folder: it alone evaluates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- Agreement between processes. All are the identity for a world of one. -----------------

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and hand its (picklable) result to every process.

        If `fn` raises on rank 0, every other process raises a DistributedError with its one-line
        message instead of waiting forever at its next collective.
        """
        if not self.distributed:
            return fn()
        if self.is_main:
            try:
                value = fn()
            except BaseException as exc:
                _broadcast(("error", " ".join(f"{type(exc).__name__}: {exc}".split())))
                raise
            _broadcast(("ok", value))
            return value
        status, value = _broadcast(None)
        if status == "error":
            raise DistributedError(f"rank 0 failed: {value}")
        return value

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Element-wise OR of boolean flags over all processes (one small CPU collective)."""
        if not self.distributed:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def mean(self, value: float) -> float:
        """The mean of a float over all processes (the value itself for a world of one)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.size

    def check_identical(self, fingerprint: Callable[[], torch.Tensor], what: str) -> None:
        """Raise DistributedError unless `fingerprint()` (a CPU vector) is bit-identical on every process.

        The fingerprint is a callable so that a world of one never pays for computing it.
        """
        if not self.distributed:
            return
        value = fingerprint().to(torch.float64)
        hi, lo = value.clone(), value.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        if not torch.equal(hi, lo):
            raise DistributedError(
                f"the processes' {what} differ; the run is no longer data-parallel (a nondeterministic "
                "kernel or a hardware fault); restart from the last checkpoint with --resume"
            )


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _env_int(env: dict[str, str], key: str, default: int) -> int:
    text = env.get(key)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {key}={text!r} is not an integer; start distributed runs with torchrun"
        ) from None


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The World described by torchrun's environment variables (a world of one when they are absent)."""
    env = dict(os.environ if env is None else env)
    size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}")
    return World(rank=rank, size=size, local_rank=local)


def device_for(world: World, name: str) -> torch.device:
    """The device of this process for train.device=`name`: with several CUDA processes, process r of
    a node takes cuda:LOCAL_RANK.
    """
    dev = resolve_device(name)
    if not world.distributed or dev.type != "cuda":
        return dev
    if name not in ("auto", "cuda"):
        raise ConfigError(
            f"train.device={name!r} names one GPU, but torchrun started {world.size} processes; "
            "use train.device=cuda (process r of a node takes cuda:LOCAL_RANK)"
        )
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK={world.local_rank} but this node has {count} CUDA devices; "
            f"use torchrun --nproc-per-node={count} or fewer"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors when this build has CUDA."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


@contextmanager
def process_group(world: World) -> Iterator[World]:
    """Join the run's process group for the duration of the block (nothing for a world of one).

    A group that is already initialised (e.g. by a user's own script) is used as it is and left open.
    """
    if not world.distributed:
        yield world
        return
    owned = not dist.is_initialized()
    if owned:
        minutes = float(os.environ.get(TIMEOUT_ENV, "60"))
        dist.init_process_group(backend(), rank=world.rank, world_size=world.size, timeout=timedelta(minutes=minutes))
    try:
        yield world
    finally:
        # DistributedDataParallel's reducer holds a reference to the group and sits in a reference
        # cycle, so the cyclic garbage collector frees it at some later moment. Freed after the group
        # is destroyed (by us, or by the script that owns the group), it would drop the group's last
        # reference while holding the GIL: the group's destructor then joins a gloo worker thread
        # that needs the GIL, a deadlock (a hang, or "terminate called without an active exception"
        # at exit). Collect it now, while the group is registered, so that destroying the group frees it.
        gc.collect()
        if owned:
            dist.destroy_process_group()


def split_global_batch(batch_size: int, world_size: int) -> int:
    """The per-process batch of a global batch split over `world_size` processes.

    Raises ConfigError (one line, with the fix) unless `batch_size` is a positive multiple of `world_size`.
    """
    if world_size < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {world_size}")
    if batch_size < 1 or batch_size % world_size:
        lo = max(world_size, batch_size - batch_size % world_size)
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size} such as train.batch_size={lo}"
        )
    return batch_size // world_size


def fingerprint(*modules: nn.Module) -> Tensor:
    """A CPU float64 vector of per-parameter sums over `modules`: equal iff the weights very likely are."""
    sums = [p.detach().double().sum() for mod in modules for p in mod.parameters()]
    return torch.stack(sums).cpu() if sums else torch.zeros(1, dtype=torch.float64)
