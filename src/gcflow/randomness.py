"""Per-step random streams: every random draw of training step k comes from a generator seeded by
(seed, k, stream). A resumed run therefore draws exactly what the uninterrupted run drew, with no
RNG state to save, and every process of a distributed run can draw the same global-batch noise.
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


def step_generator(seed: int, step: int, stream: str, device: torch.device | str = "cpu", rank: int = 0) -> torch.Generator:
    """A fresh generator on `device` for one (seed, step, stream[, rank])."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, step, stream, rank))
    return g
