"""DeviceBatches: a pure-function data order that resumes bit-identically and shards exactly."""

from __future__ import annotations

import pytest
import torch

from gcflow.data import DeviceBatches, ImageDataset, to_unit_range
from gcflow.data.loader import derive_seed, epoch_permutation


def indexed_dataset(n: int = 50, size: int = 4) -> ImageDataset:
    """Distinct, left-right asymmetric images; label i marks image i so batches can be traced back."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageDataset(images=images, labels=torch.arange(n), num_classes=n, name="indexed")


def take(loader: DeviceBatches, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [loader.next_batch() for _ in range(count)]


def test_batches_are_unit_range_views_of_the_data():
    ds = indexed_dataset()
    loader = DeviceBatches(ds, 8, seed=1)
    x, y = loader.next_batch()
    assert x.shape == (8, 3, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, to_unit_range(ds.images[y]))


def test_each_epoch_is_a_permutation_without_repeats():
    ds = indexed_dataset(n=50)
    loader = DeviceBatches(ds, 8, seed=3)
    assert loader.batches_per_epoch == 6
    epoch0 = torch.cat([y for _, y in take(loader, 6)])
    assert loader.state_dict() == {"epoch": 1, "position": 0}  # the last 50 mod 8 = 2 are skipped
    epoch1 = torch.cat([y for _, y in take(loader, 6)])
    assert len(set(epoch0.tolist())) == 48 and len(set(epoch1.tolist())) == 48
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, epoch_permutation(50, 3, 0)[:48])


def test_order_is_a_pure_function_of_the_seed():
    ds = indexed_dataset()
    a = take(DeviceBatches(ds, 10, seed=7, flip=True), 7)
    b = take(DeviceBatches(ds, 10, seed=7, flip=True), 7)
    c = take(DeviceBatches(ds, 10, seed=8, flip=True), 7)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    assert derive_seed(1, 2) != derive_seed(2, 1)


@pytest.mark.parametrize("stop", [2, 4, 5, 9])  # mid-epoch, at an epoch boundary, and later
def test_resume_from_state_dict_is_bit_identical(stop):
    ds = indexed_dataset()
    loader = DeviceBatches(ds, 10, seed=5, flip=True)
    take(loader, stop)
    state = loader.state_dict()
    expected = take(loader, 8)
    resumed = DeviceBatches(ds, 10, seed=5, flip=True)
    resumed.load_state_dict(dict(state))
    assert resumed.state_dict() == state
    for (x, y), (xr, yr) in zip(expected, take(resumed, 8)):
        assert torch.equal(x, xr) and torch.equal(y, yr)


def test_batch_by_step_matches_the_stream():
    ds = indexed_dataset()
    stream = take(DeviceBatches(ds, 10, seed=6, flip=True), 12)
    loader = DeviceBatches(ds, 10, seed=6, flip=True)
    for step in [11, 0, 7, 4, 5]:
        x, y = loader.batch(step)
        assert torch.equal(x, stream[step][0]) and torch.equal(y, stream[step][1])
    assert loader.shape == (3, 4, 4)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_partition_the_global_batch(world_size):
    ds = indexed_dataset(n=50)
    single = take(DeviceBatches(ds, 12, seed=2, flip=True), 9)  # crosses two epoch boundaries
    ranks = [DeviceBatches(ds, 12, seed=2, flip=True, world_size=world_size, rank=r) for r in range(world_size)]
    for x, y in single:
        parts = [rank.next_batch() for rank in ranks]
        assert all(p[0].shape[0] == 12 // world_size for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert all(rank.state_dict() == ranks[0].state_dict() for rank in ranks)


def test_flips_are_horizontal_mirrors_only():
    ds = indexed_dataset(n=64)
    reference = to_unit_range(ds.images)
    flipped_count = 0
    for x, y in take(DeviceBatches(ds, 16, seed=0, flip=True), 8):
        original, mirrored = reference[y], reference[y].flip(-1)
        same = (x == original).flatten(1).all(1)
        mirror = (x == mirrored).flatten(1).all(1)
        assert (same | mirror).all()
        flipped_count += int((mirror & ~same).sum())
    assert 0.3 < flipped_count / 128 < 0.7
    for x, y in take(DeviceBatches(ds, 16, seed=0, flip=False), 4):
        assert torch.equal(x, reference[y])


def test_uint8_residency_and_no_shuffle():
    ds = indexed_dataset()
    as_float = take(DeviceBatches(ds, 10, seed=4, flip=True), 6)
    as_uint8 = take(DeviceBatches(ds, 10, seed=4, flip=True, resident_uint8=True), 6)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(as_float, as_uint8))
    x, y = DeviceBatches(ds, 10, shuffle=False).next_batch()
    assert torch.equal(y, torch.arange(10))


def test_unlabelled_data_and_bad_arguments():
    ds = ImageDataset(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), None, 0, "blank")
    x, y = DeviceBatches(ds, 4).next_batch()
    assert y is None and (x == -1).all()
    with pytest.raises(ValueError, match="multiple of world_size"):
        DeviceBatches(ds, 6, world_size=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        DeviceBatches(ds, 16)
    with pytest.raises(ValueError, match="rank"):
        DeviceBatches(ds, 4, world_size=2, rank=2)
    with pytest.raises(ValueError, match="invalid loader state"):
        DeviceBatches(ds, 4).load_state_dict({"epoch": 0, "position": 99})
