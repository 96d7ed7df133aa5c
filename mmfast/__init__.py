"""mmfast: fast image+text (multimodal) classification for PyTorch.

Fused C++/CUDA operators (``mmfast.ops``) with pure-PyTorch references (``mmfast.reference``),
product quantization (``mmfast.quant``) and the command ``mmfast``.

``import mmfast`` is cheap: its submodules and names load, with torch and the native extension,
on first use (``mmfast.ops``, ``mmfast.Classifier``, ...), so the command starts fast.
"""

import importlib as _importlib
import importlib.metadata as _metadata

try:
    __version__ = _metadata.version("mmfast")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
    __version__ = "unknown"

_SUBMODULES = ("metrics", "nn", "ops", "quant", "reference", "train")
_NAMES = {"backend": "mmfast._backend", "get_backend": "mmfast._backend",
          "set_backend": "mmfast._backend", "checks": "mmfast._backend",
          "get_checks": "mmfast._backend", "set_checks": "mmfast._backend",
          "info": "mmfast._info",
          "Classifier": "mmfast.classifier", "load": "mmfast.classifier"}

__all__ = [*_NAMES, *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"mmfast.{name}")
    if name in _NAMES:
        return getattr(_importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'mmfast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
