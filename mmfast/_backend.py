"""The one switch between mmfast's fused kernels and its pure-PyTorch references."""

import contextlib
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
