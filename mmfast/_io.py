"""Atomic file output: a reader never sees a half-written file (DESIGN 6)."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block ends
    without an exception, otherwise remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (detached, on the CPU, contiguous) as one safetensors file, atomically.
    A saved model's writer removes its config.json first and writes it last, after this."""
    with atomic_path(path) as temporary:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()},
                  temporary)


def cache_dir() -> Path:
    """mmfast's cache: ``$MMFAST_CACHE``, else ``$XDG_CACHE_HOME/mmfast``, else ``~/.cache/mmfast``."""
    if os.environ.get("MMFAST_CACHE"):
        return Path(os.environ["MMFAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmfast"
