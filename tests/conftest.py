import os

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


def pytest_collection_modifyitems(config, items):
    """The slow tier (tests marked ``slow``: thousands of fuzz cases, end-to-end runs) is opt-in:
    it runs only with MMFAST_SLOW=1."""
    if os.environ.get("MMFAST_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set MMFAST_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
