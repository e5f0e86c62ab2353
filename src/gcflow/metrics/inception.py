"""Inception-v3 features for FID / KID / IS, through torch-fidelity's TensorFlow-compatible network.

This is the optional extra `gcflow[fid]`: torch-fidelity imports torchvision, which has no CPU
build on some machines, so the import is lazy and its absence is a one-line `MetricError`, never
an import failure of gcflow. Weights are never downloaded: the user passes the converted
TensorFlow weights file (torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`,
`--inception-weights PATH`); it is checked to be a plain tensor state dict before
torch-fidelity unpickles it (see `check_weights_file`), and its SHA-256 is kept in
`weights_sha256` (record it beside reference statistics).

Features are torch-fidelity's defaults: the 2048-d pool features for FID and KID and the
1008-way "logits_unbiased" (fc without bias) for IS, computed from uint8 RGB images resized
inside the network to 299×299 with TensorFlow-1 bilinear interpolation. Grayscale images are
repeated to 3 channels.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from gcflow.metrics.protocol import MetricError

__all__ = ["InceptionExtractor", "MetricError", "check_weights_file", "INSTALL_HINT", "OFFICIAL_SHA256_PREFIX"]

INSTALL_HINT = "pip install 'gcflow[fid]' on a machine with torchvision"
# torch-fidelity's file name carries the first 8 hex digits of the weights' SHA-256.
OFFICIAL_SHA256_PREFIX = "6726825d"
FEATURE_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"


def check_weights_file(path: Path) -> str:
    """SHA-256 of a weights file, after checking it is a plain tensor state dict.

    torch-fidelity ≥ 0.4 reads the file with `torch.load(..., weights_only=False)`, i.e. a full
    unpickle that could run code. Loading it first with `weights_only=True` (the restricted
    unpickler: tensors and plain containers only) refuses anything else, so the later full
    unpickle only meets what the safe one accepted.
    """
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ... depending on the file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MetricError(
            f"Inception weights {path} are not a plain tensor state dict (refusing to unpickle it): {reason}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetricError(f"Inception weights {path} do not hold a state dict of tensors")
    return hashlib.sha256(data).hexdigest()


def _import_feature_extractor() -> type:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:  # torch_fidelity itself, or torchvision which it imports
        missing = e.name or str(e)
        raise MetricError(
            f"Inception metrics need torch-fidelity ({missing} is not installed): {INSTALL_HINT}"
        ) from None
    return FeatureExtractorInceptionV3


class InceptionExtractor:
    """Extractor (see `protocol.FeatureExtractor`) giving Inception-v3 pool features and IS logits.

    Args:
        weights_path: local torch-fidelity Inception weights (.pth); never downloaded.
        device: where to run the network (default: CUDA if available, else CPU).
    """

    name = "inception-v3-compat"

    def __init__(self, weights_path: str | os.PathLike, device: str | torch.device | None = None) -> None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MetricError(
                f"Inception weights file {path} not found; pass --inception-weights PATH "
                "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth)"
            )
        network_class = _import_feature_extractor()
        self.weights_path = path
        self.weights_sha256 = check_weights_file(path)
        if not self.weights_sha256.startswith(OFFICIAL_SHA256_PREFIX):
            warnings.warn(
                f"{path} is not torch-fidelity's official Inception weights (SHA-256 {self.weights_sha256[:8]}…, "
                f"expected {OFFICIAL_SHA256_PREFIX}…): scores will not be comparable with published FIDs",
                stacklevel=2,
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        try:
            network = network_class(self.name, [FEATURE_LAYER, LOGITS_LAYER], feature_extractor_weights_path=str(path))
        except RuntimeError as e:  # load_state_dict: missing / unexpected keys, wrong shapes
            reason = str(e).splitlines()[0]
            raise MetricError(f"Inception weights {path} do not fit torch-fidelity's network: {reason}") from None
        self.network = network.to(self.device).eval()

    @torch.inference_mode()
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images (N, 1 or 3, H, W) → pool features (N, 2048) and logits (N, 1008), float32 on CPU."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            got = f"{images.dtype} {tuple(images.shape)}"
            raise MetricError(f"Inception features need uint8 images (N, 1 or 3, H, W), got {got}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        feats, logits = self.network(images.to(self.device).contiguous())
        return feats.float().cpu(), logits.float().cpu()
