import pytest
import torch

import mmfast

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def fused_backend():
    """Every test starts on the fused path, whatever an earlier one left."""
    with mmfast.backend("fused"):
        yield
