"""Image datasets in memory and a resumable, shardable on-device batch loader.

dataset = load_image_dataset("cifar10", root="data/cifar10", split="train")
batches = DeviceBatches(dataset, batch_size=512, device="cuda", seed=0, flip=True)
x, y = batches.next_batch()          # (512, 3, 32, 32) in [-1, 1], (512,) int64
state = batches.state_dict()         # {"epoch": e, "position": p}: save with the checkpoint
"""

from gcflow.data.common import DatasetError, ImageDataset, to_uint8, to_unit_range
from gcflow.data.images import IMAGE_DATASETS, load_image_dataset
from gcflow.data.loader import DeviceBatches
from gcflow.data.npz import save_prepared_npz
from gcflow.data.shapes import dataset_shape

__all__ = [
    "IMAGE_DATASETS",
    "DatasetError",
    "DeviceBatches",
    "ImageDataset",
    "dataset_shape",
    "load_image_dataset",
    "save_prepared_npz",
    "to_uint8",
    "to_unit_range",
]
