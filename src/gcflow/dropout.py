"""One shared dropout mask for the teacher and student passes of a consistency pair.

iCT evaluates the stop-gradient target and the online prediction with the same dropout mask.
We get that by replaying one RNG state: each training step draws a fresh seed, and every pass
run inside `shared.replay()` starts from that seed, so the k-th dropout call of each pass draws
the same mask (the passes have identical architectures and input shapes). The surrounding global
RNG state is restored afterwards, on the CPU and on the pass's CUDA device alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SharedDropout:
    """Replays one dropout seed in several forward passes.

    Args:
        seed: the per-step seed (draw it from the run's generator so runs are reproducible).
        device: the device the passes run on; its RNG (CPU or CUDA) is the one replayed.
    """

    def __init__(self, seed: int, device: torch.device | str) -> None:
        self.seed = int(seed)
        self.device = torch.device(device)

    @staticmethod
    def draw(generator: torch.Generator, device: torch.device | str) -> SharedDropout:
        """A SharedDropout with a seed drawn from `generator` (advances it by one draw)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return SharedDropout(seed, device)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the enclosed pass from this object's seed; restores the previous RNG state on exit."""
        cuda = self.device.type == "cuda"
        devices = [self.device] if cuda else []
        with torch.random.fork_rng(devices=devices, enabled=True, device_type="cuda"):
            torch.random.default_generator.manual_seed(self.seed)
            if cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(self.seed)
            yield
