"""Seeding: the one module that turns a user's seed into torch generators.

* Training (`step_generator`): every random draw of training step k comes from a generator seeded by
  (seed, k, stream). A resumed run therefore draws exactly what the uninterrupted run drew, with no
  RNG state to save, and every process of a distributed run can draw the same global-batch noise.
* Experiments (`experiment_generator`): each numbered part of a `gcflow experiment` study draws from
  its own generator seeded by (seed, part), so parts are independent of each other's draws. This
  scheme is older than the per-step streams and is kept as it is: the published theory numbers
  (docs/theory.md) were drawn with it.
"""

from __future__ import annotations

import hashlib

import torch

STREAMS = ("data", "levels", "noise", "gc", "dropout", "eval", "init")


def stream_seed(seed: int, step: int, stream: str, rank: int = 0) -> int:
    """A 63-bit seed that is a pure function of (seed, step, stream, rank)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; choose one of {STREAMS}")
    digest = hashlib.blake2b(f"{seed}|{step}|{stream}|{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def step_generator(
    seed: int, step: int, stream: str, device: torch.device | str = "cpu", rank: int = 0
) -> torch.Generator:
    """A fresh generator on `device` for one (seed, step, stream[, rank])."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, step, stream, rank))
    return g


def experiment_generator(seed: int, part: int) -> torch.Generator:
    """A CPU generator for numbered part `part` of an experiment: seeded by seed · 1 000 003 + part.

    Distinct parts of one experiment draw from distinct, fixed streams, so adding draws to one part
    never shifts another's. (A linear seed, not a hash as in `stream_seed`, because the published
    experiment results were drawn with it.)
    """
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(part))
