"""Build and runtime facts: what was compiled, for which CPU ISA and CUDA architectures."""

import torch

from mmfast._native import _C


def info() -> dict:
    """Version, torch (built with / running), compiler, CPU ISA, threads, CUDA kernels and archs."""
    build = _C.build_info()
    archs = build["cuda_architectures"]
    return {
        "version": build["version"],
        "torch": torch.__version__,
        "torch_built_with": build["torch_built_with"],
        "compiler": build["compiler"],
        "cpu_isa": build["cpu_isa"],
        "cpu_arch_flag": build["cpu_arch_flag"] or "(compiler default)",
        "openmp": build["openmp"],
        "intra_op_threads": _C.intra_op_threads(),
        "cuda_kernels": build["cuda_kernels"],
        "cuda_architectures": archs.split(",") if archs else [],
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
