"""Argument checks shared by the op wrappers: messages name the argument, what was expected
and what came. ``check_tensor``, ``check_same_device`` and ``check_same_dtype`` read only
metadata, so they cost nothing under ``torch.compile``; ``check_ids`` and ``check_finite`` read
the values (one device sync each; ``check_finite`` follows ``mmfast.set_checks``);
``check_number`` checks a Python number."""

import math
import numbers

import torch

from mmfast import _backend

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(op: str, name: str, value, *, ndim: int | None = None, dtypes=None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(
            f"{op}: {name} must have {ndim} dimensions, got shape {tuple(value.shape)}"
        )
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} must be one of {names}, got {value.dtype}")


def check_same_device(op: str, name: str, value: torch.Tensor, reference: torch.Tensor,
                      reference_name: str | None = None) -> None:
    """``value`` on ``reference``'s device; ``reference_name`` says what the reference is
    ("the model's device"), else it is the op's first input."""
    if value.device != reference.device:
        expected = (f"{reference.device} like the first input" if reference_name is None
                    else f"{reference_name} ({reference.device})")
        raise ValueError(f"{op}: {name} must be on {expected}, got {value.device}")


def check_same_dtype(op: str, name: str, value: torch.Tensor, reference: torch.Tensor) -> None:
    if value.dtype != reference.dtype:
        raise TypeError(
            f"{op}: {name} must have the dtype of the first input ({reference.dtype}), "
            f"got {value.dtype}"
        )


def check_ids(op: str, rule: str, ids: torch.Tensor, limit: int, error=ValueError) -> None:
    """``ids`` in [0, limit), read back with one aminmax (one sync on a GPU, not four); the
    message reads "{op}: {rule} in [0, limit), got values in [low, high]"."""
    if ids.numel():
        low, high = (int(value) for value in ids.aminmax())
        if low < 0 or high >= limit:
            raise error(f"{op}: {rule} in [0, {limit}), got values in [{low}, {high}]")


def check_finite(op: str, name: str, value: torch.Tensor) -> None:
    """No NaN or infinity in ``value`` [B, ...]; the message names the first bad row. Reads the
    data (one device sync), unlike the checks above, so it is skipped where
    ``mmfast.set_checks`` says values go unchecked."""
    if not _backend.checks_values(value):
        return
    bad = ~torch.isfinite(value)
    if bad.any():
        row = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{op}: {name} must be finite, but row {row} has a NaN or infinite "
                         "value")


def check_number(where: str, name: str, value, minimum: float, strict: bool) -> float:
    """``value`` a finite real number (not a bool) ``> minimum`` (``strict``) or ``>= minimum``,
    as a float; the message writes the bound as ``minimum`` is written (0 or 0.0)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < minimum or (strict and value == minimum)):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{where}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def refuse_double_backward(op: str) -> None:
    """Called first in an op's registered backward. Its backward kernel has no derivative of
    its own, so under ``create_graph=True`` (grad mode is on while the backward runs) the
    gradients would silently come out as constants: say so instead."""
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{op}: double backward (create_graph=True, gradgradcheck, "
                                  "gradient penalties) is not supported; the first derivative "
                                  "is. Use mmfast.backend('reference') for higher derivatives")
