import os

import pytest
import torch

# Two cores: keep each test process to one intra-op thread so xdist workers do not oversubscribe.
torch.set_num_threads(1)
os.environ.setdefault("GCFLOW_NO_PROGRESS", "1")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
