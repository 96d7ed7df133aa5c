"""mmfast: fast image+text (multimodal) classification for PyTorch.

Fused C++/CUDA operators (``mmfast.ops``) with pure-PyTorch references (``mmfast.reference``),
product quantization (``mmfast.quant``) and the command ``mmfast``.
"""

import torch  # noqa: F401  (loads libtorch, which the extension links against)

try:
    from mmfast import _C
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "mmfast could not load its native extension mmfast._C "
        f"({error}). Rebuild it in this environment with "
        "`pip install --no-build-isolation -e .` against the torch you run "
        f"(torch {torch.__version__} is installed)."
    ) from error

from mmfast._backend import backend, get_backend, set_backend
from mmfast._info import info
from mmfast import metrics, nn, ops, quant, reference, train
from mmfast.classifier import Classifier, load

__version__ = _C.build_info()["version"]

__all__ = [
    "backend", "get_backend", "set_backend", "info", "metrics", "nn", "ops", "quant",
    "reference", "train", "Classifier", "load",
]
