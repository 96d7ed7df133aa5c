"""Loads the native extension ``mmfast._C`` (its ops register as ``torch.ops.mmfast.*``).

Imported by everything that calls those ops; ``import mmfast`` alone does not load it, so the
command answers ``--help`` and ``--version`` without torch.
"""

import importlib

import torch

from mmfast import _backend

try:
    _C = importlib.import_module("mmfast._C")  # after torch: it links against libtorch
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "mmfast could not load its native extension mmfast._C "
        f"({error}). Rebuild it in this environment with "
        "`pip install --no-build-isolation -e .` against the torch you run "
        f"(torch {torch.__version__} is installed)."
    ) from error

# A checks mode set before the extension loaded (mmfast.set_checks) reaches its kernels now.
_C._set_full_checks(_backend.get_checks() == "full")
