"""Atomic file output: a reader never sees a half-written file (DESIGN 6)."""

import contextlib
import fcntl
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block ends
    without an exception, otherwise remove it. The file gets the mode an ordinary ``open``
    would give it (0666 less the umask; ``mkstemp`` makes it 0600). The temporary's name holds
    the writer's pid, so the temporaries of a killed writer are removed by the next write of
    ``path`` that succeeds (not before: a failed one leaves them, ``classify --resume`` may still
    want them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                         suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
        _remove_stale_temporaries(path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The ``atomic_path`` temporaries of ``path`` whose writer process no longer runs (a
    killed writer's unfinished output), newest first."""
    path = Path(path)
    stale = []
    for temporary in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = temporary.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            stale.append(temporary)
    return sorted(stale, key=lambda p: p.stat().st_mtime, reverse=True)


def _remove_stale_temporaries(path: Path) -> None:
    for temporary in stale_temporaries(path):
        temporary.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class InUseError(OSError):
    """A folder another mmfast process is writing (``locked``)."""


LOCK_FILE = ".mmfast.lock"


@contextlib.contextmanager
def locked(directory: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``directory``'s advisory lock (``fcntl.flock`` on ``directory/.mmfast.lock``, which
    holds the holder's pid) for the block; another holder means ``InUseError`` at once, naming
    its pid. The kernel releases the lock when its process ends, killed or not, so no stale
    lock outlives a crash."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise InUseError(f"{directory}: in use by pid {holder} ({what} cannot share it): "
                             "wait for that run or choose another folder") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(handle)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


# torch (safetensors.torch) loads where tensors are written or read, not with this module: the
# manifests and stores that import it stay light (a manifest reader is not charged 500 MB).
def save_tensors_atomic(path: str | os.PathLike, tensors: "dict[str, torch.Tensor]") -> None:
    """Write ``tensors`` (detached, on the CPU, contiguous) as one safetensors file, atomically.
    A saved model's writer removes its config.json first and writes it last, after this."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()},
                  temporary)


def cache_dir() -> Path:
    """mmfast's cache: ``$MMFAST_CACHE``, else ``$XDG_CACHE_HOME/mmfast``, else
    ``~/.cache/mmfast``."""
    if os.environ.get("MMFAST_CACHE"):
        return Path(os.environ["MMFAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmfast"


def load_tensors(path: str | os.PathLike) -> "dict[str, torch.Tensor]":
    """The tensors of a safetensors file; a truncated or foreign file is a ValueError naming
    it (safetensors' own error names neither the file nor what was expected)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (the checkpoint is incomplete)") from None
    except Exception as error:  # safetensors raises its own SafetensorError, not an OSError
        raise ValueError(f"{path}: expected a safetensors file, got one that cannot be read "
                         f"({error}); it may be truncated") from None
