import os

import pytest
import torch

import mmfast

# CUDA cases run where the kernels were built and a device is present; elsewhere they are
# collected and skipped with the reason, and `pytest -m cuda` selects them on a GPU machine.
if not mmfast.info()["cuda_kernels"]:
    NO_CUDA = "mmfast was built without its CUDA kernels"
elif not torch.cuda.is_available():
    NO_CUDA = "no CUDA device"
else:
    NO_CUDA = None
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def fused_backend():
    """Every test starts on the fused path with full checks, whatever an earlier one left."""
    with mmfast.backend("fused"), mmfast.checks("full"):
        yield


def pytest_collection_modifyitems(config, items):
    """CUDA tests (marked ``cuda``) skip without built kernels and a device; the slow tier
    (tests marked ``slow``: thousands of fuzz cases, end-to-end runs) is opt-in: it runs only
    with MMFAST_SLOW=1."""
    if NO_CUDA is not None:
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))
    if os.environ.get("MMFAST_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set MMFAST_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
