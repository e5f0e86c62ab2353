"""Batches from a dataset held whole on the training device: resumable, shardable, no workers.

The data order is a pure function of the seed. Epoch e visits the samples in the order
perm_e = randperm(N) drawn from a generator seeded with mix(seed, e, 0), and sample number p of
that order is mirrored left-right iff flip_e[p] = 1, with flip_e drawn from mix(seed, e, 1).
Both tables are drawn on the CPU (so CPU and GPU runs see identical data), then moved to the
device once per epoch. The loader's whole state is therefore {"epoch": e, "position": p}, where
p counts the samples of epoch e already handed out across all ranks.

Global batch k of an epoch is positions [kG, (k+1)G); with world size W, rank r takes positions
[kG + rG/W, kG + (r+1)G/W). Concatenating the ranks' batches in rank order gives exactly the
single-process batch, flips included, and the state is the same on every rank, so a checkpoint
written by rank 0 resumes any world size with the same G. The last N mod G samples of each epoch
are skipped (every batch is full, and they fall elsewhere in the next epoch's permutation).
So global batch number k is also a pure function of k: `batch(k)` seeks there directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from gcflow.data.common import ImageDataset, to_unit_range

_MASK64 = (1 << 64) - 1
_ORDER_STREAM, _FLIP_STREAM = 0, 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit generator seed that depends on every part (order matters)."""
    x = 0
    for part in parts:
        x = _splitmix64(x ^ (part & _MASK64))
    return x >> 1


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The visiting order of epoch `epoch`: a CPU int64 permutation of range(num_samples)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, _ORDER_STREAM))
    return torch.randperm(num_samples, generator=gen)


def epoch_flips(num_samples: int, seed: int, epoch: int) -> Tensor:
    """Whether position p of epoch `epoch` is mirrored: a CPU bool tensor of length num_samples."""
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, _FLIP_STREAM))
    return torch.randint(0, 2, (num_samples,), generator=gen, dtype=torch.uint8).bool()


class DeviceBatches:
    """An endless stream of (images, labels) batches from a dataset resident on `device`.

    Args:
        dataset: the uint8 dataset; it is copied to `device` once.
        batch_size: the global batch size G over all ranks; each rank gets G / world_size.
        device: where the data lives and batches are made.
        seed: the data-order seed; order and flips are pure functions of (seed, epoch, position).
        flip: mirror each sample left-right with probability 1/2.
        shuffle: False visits samples in dataset order each epoch (e.g. for evaluation).
        world_size, rank: data-parallel sharding of every global batch.
        dtype: float dtype of the batches, values in [-1, 1].
        resident_uint8: keep the resident copy as uint8 (4x less memory for float32 batches) and
            convert each batch; otherwise it is stored already converted to `dtype`.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        flip: bool = False,
        shuffle: bool = True,
        world_size: int = 1,
        rank: int = 0,
        dtype: torch.dtype = torch.float32,
        resident_uint8: bool = False,
    ) -> None:
        if batch_size < 1 or batch_size % world_size != 0:
            raise ValueError(f"global batch size {batch_size} must be a positive multiple of world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, {world_size})")
        if len(dataset) < batch_size:
            raise ValueError(f"dataset {dataset.name} has {len(dataset)} images, fewer than one batch of {batch_size}")
        self.device = torch.device(device)
        self.num_samples = len(dataset)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.local_batch_size = batch_size // world_size
        self.seed, self.flip, self.shuffle, self.dtype = seed, flip, shuffle, dtype
        self.num_classes = dataset.num_classes
        self.shape = dataset.shape
        resident = dataset.images.to(self.device)
        self.images = resident if resident_uint8 else to_unit_range(resident).to(dtype)
        self.labels = None if dataset.labels is None else dataset.labels.to(self.device)
        self.epoch, self.position = 0, 0
        self._tables_epoch: int | None = None
        self._order: Tensor | None = None
        self._flips: Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    @property
    def images_seen(self) -> int:
        """Samples handed out so far over all ranks (EDM-style progress in images)."""
        return (self.epoch * self.batches_per_epoch) * self.batch_size + self.position

    def seek(self, step: int) -> None:
        """Go to global batch number `step` counted from the start (the state is a function of it)."""
        epoch, batch = divmod(int(step), self.batches_per_epoch)
        self.epoch, self.position = epoch, batch * self.batch_size

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        """This rank's slice of global batch number `step`: `seek(step)` then `next_batch()`."""
        self.seek(step)
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.num_samples:
            raise ValueError(f"invalid loader state {state} for a dataset of {self.num_samples} images")
        self.epoch, self.position = epoch, position
        self._roll_over()

    def _roll_over(self) -> None:
        if self.position + self.batch_size > self.num_samples:
            self.epoch, self.position = self.epoch + 1, 0

    def _tables(self) -> tuple[Tensor, Tensor | None]:
        """This epoch's order and flip tables on the device, drawn once per epoch."""
        if self._tables_epoch != self.epoch:
            n = self.num_samples
            order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
            self._order = order.to(self.device)
            self._flips = epoch_flips(n, self.seed, self.epoch).to(self.device) if self.flip else None
            self._tables_epoch = self.epoch
        assert self._order is not None
        return self._order, self._flips

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        """This rank's slice of the next global batch: ((G/W, C, H, W) in [-1, 1], (G/W,) int64 or None)."""
        order, flips = self._tables()
        start = self.position + self.rank * self.local_batch_size
        stop = start + self.local_batch_size
        index = order[start:stop]
        x = self.images.index_select(0, index)
        if x.dtype == torch.uint8:
            x = to_unit_range(x).to(self.dtype)
        if flips is not None:
            x = torch.where(flips[start:stop].view(-1, 1, 1, 1), x.flip(-1), x)
        y = None if self.labels is None else self.labels.index_select(0, index)
        self.position += self.batch_size
        self._roll_over()
        return x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        while True:
            yield self.next_batch()
