"""The switches that hold for every op: fused kernels or pure-PyTorch references, and how much
the ops check their inputs."""

import contextlib
import sys
from collections.abc import Iterator

_BACKENDS = ("fused", "reference")
_current = "fused"


def set_backend(name: str) -> None:
    """Make every mmfast op and module use the fused kernels ("fused") or the references."""
    global _current
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _current = name


def get_backend() -> str:
    return _current


def use_reference() -> bool:
    return _current == "reference"


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """``with mmfast.backend("reference"):`` runs the block on the reference path."""
    previous = _current
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


_CHECKS = ("full", "shapes")
_checks = "full"


def set_checks(mode: str) -> None:
    """How much the ops check their inputs: "full" (the default) checks shapes, dtypes, devices
    and values (no NaN or infinity, 0/1 targets, index ranges); "shapes" skips the value checks
    that cost a pass over the data or, on CUDA, a device-to-host copy and a stream sync each,
    for latency-bound loops that feed trusted data (a value check a CPU kernel makes within its
    own pass over the data costs nothing and still runs). Index ranges still guard memory:
    checked on the host on the CPU, asserted inside the kernel on CUDA. While a CUDA stream
    captures a graph (``torch.cuda.graph``, ``torch.compile(mode="reduce-overhead")``) the ops
    check as in "shapes" whatever the mode, since capture forbids reading values back to the
    host."""
    global _checks
    if mode not in _CHECKS:
        raise ValueError(f"checks must be one of {_CHECKS}, got {mode!r}")
    _checks = mode
    native = sys.modules.get("mmfast._native")  # loaded later, it reads the mode itself
    if native is not None:
        native._C._set_full_checks(mode == "full")


def get_checks() -> str:
    return _checks


@contextlib.contextmanager
def checks(mode: str) -> Iterator[None]:
    """``with mmfast.checks("shapes"):`` runs the block in that checks mode."""
    previous = _checks
    set_checks(mode)
    try:
        yield
    finally:
        set_checks(previous)


def checks_values(tensor) -> bool:
    """Whether a value check of ``tensor`` runs now: in the "full" mode, and for a CUDA tensor
    only while its stream is not capturing a graph."""
    if _checks != "full":
        return False
    if tensor.is_cuda:
        import torch

        return not torch.cuda.is_current_stream_capturing()
    return True
