"""The device a command runs its networks on: ``--device auto|cpu|cuda[:N]``.

``auto`` takes the GPU when torch sees one and mmfast's CUDA kernels were built (a CPU-only
build on a GPU machine stays on the CPU, where its kernels are), else the CPU. Naming ``cuda``
where it cannot run is a ValueError that says which of the two is missing."""

import torch

from mmfast._native import _C


def cuda_ready() -> bool:
    """Whether mmfast's CUDA kernels were built and torch sees a GPU."""
    return bool(_C.build_info()["cuda_kernels"]) and torch.cuda.is_available()


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The ``torch.device`` that ``name`` ("auto", "cpu", "cuda" or "cuda:N") stands for."""
    if name == "auto":
        return torch.device("cuda" if cuda_ready() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag}: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{flag}: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if not _C.build_info()["cuda_kernels"]:
        raise ValueError(f"{flag} {name}: expected mmfast built with its CUDA kernels, got a "
                         "CPU-only build (mmfast info; rebuild where nvcc is on PATH)")
    if not torch.cuda.is_available():
        raise ValueError(f"{flag} {name}: expected a CUDA GPU, got none visible to torch")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {name}: expected a GPU index below "
                         f"{torch.cuda.device_count()}, got {device.index}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device
