"""Raw networks F_θ(x_in, c_noise, class_labels) wrapped by `gcflow.precond.ConsistencyModel`."""

from gcflow.networks.mlp import ToyMLP
from gcflow.networks.songunet import SongUNet, count_parameters

__all__ = ["SongUNet", "ToyMLP", "count_parameters"]
