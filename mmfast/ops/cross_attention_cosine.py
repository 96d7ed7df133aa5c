"""``cross_attention_cosine``: AnANet's alignment net as one op (DESIGN 2.3).

The backward is its own op, ``_cross_attention_cosine_backward``, which recomputes the attention
from V and T: autograd saves the inputs only, never S, the attention maps, Vhat or That.
"""

import math

import torch

from mmfast import _backend, reference
from mmfast.ops._checks import (FLOAT_DTYPES, check_same_device, check_tensor,
                                refuse_double_backward)

_OP = "cross_attention_cosine"


def cross_attention_cosine(
    V: torch.Tensor,
    T: torch.Tensor,
    t_lengths: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v_bar [B, Kr], t_bar [B, N])``: the cosine between each region of V [B, Kr, d] and
    its attention over the words of T [B, N, d], and between each word and its attention over
    the regions, with scores ``scale * V T^T``. Words past ``t_lengths[b]`` (int64 [B]; None:
    all valid) are padding: they take no part, their t_bar is 0 and they get no gradient.
    float32, float16 and bfloat16 (float32 accumulation) and float64; the inputs must be
    finite (padding excepted). Differentiable in V and T.
    """
    check_tensor(_OP, "V", V, ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_tensor(_OP, "T", T, ndim=3, dtypes=(V.dtype,))
    check_same_device(_OP, "T", T, V)
    if T.shape[0] != V.shape[0] or T.shape[2] != V.shape[2]:
        raise ValueError(
            f"{_OP}: T must have shape [{V.shape[0]}, N, {V.shape[2]}] to match V, "
            f"got {tuple(T.shape)}"
        )
    if t_lengths is not None:
        check_tensor(_OP, "t_lengths", t_lengths, ndim=1, dtypes=(torch.int64,))
        check_same_device(_OP, "t_lengths", t_lengths, V)
        if t_lengths.shape[0] != V.shape[0]:
            raise ValueError(
                f"{_OP}: t_lengths must have shape [{V.shape[0]}], got {tuple(t_lengths.shape)}"
            )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{_OP}: scale must be a finite float, got {scale!r}")
    if _backend.use_reference():
        _check_values(V, T, t_lengths)
        return reference.cross_attention_cosine(V, T, t_lengths, float(scale))
    v_bar, t_bar = torch.ops.mmfast.cross_attention_cosine(V, T, t_lengths, float(scale))
    return v_bar, t_bar


def _check_values(V: torch.Tensor, T: torch.Tensor, t_lengths: torch.Tensor | None) -> None:
    """The kernels' value checks, with their messages, for the reference path: t_lengths in
    [0, N], V finite, T finite at the valid words (as ``mmfast.set_checks`` says)."""
    batch, num_words = V.shape[0], T.shape[1]
    if batch == 0 or not _backend.checks_values(V):
        return
    if t_lengths is not None:
        low, high = (int(value) for value in t_lengths.aminmax())
        if low < 0 or high > num_words:
            raise ValueError(f"{_OP}: t_lengths values must be in [0, {num_words}] (N = "
                             f"T.size(1)), got values from {low} to {high}")
    bad_regions = ~torch.isfinite(V).all(2)  # [B, Kr]
    if bad_regions.any():
        b, i = bad_regions.nonzero()[0].tolist()
        raise ValueError(f"{_OP}: V must be finite, but V[{b}, {i}] has a NaN or infinite value")
    valid = torch.arange(num_words, device=T.device) < (
        num_words if t_lengths is None else t_lengths[:, None])
    bad_words = ~torch.isfinite(T).all(2) & valid  # [B, N]
    if bad_words.any():
        b, j = bad_words.nonzero()[0].tolist()
        raise ValueError(f"{_OP}: T must be finite, but T[{b}, {j}] (a valid word) has a NaN or "
                         "infinite value")


@torch.library.register_fake("mmfast::cross_attention_cosine")
def _(V, T, t_lengths, scale):
    return V.new_empty(V.shape[:2]), V.new_empty(T.shape[:2])


@torch.library.register_fake("mmfast::_cross_attention_cosine_backward")
def _(grad_v_bar, grad_t_bar, V, T, t_lengths, scale):
    return torch.empty_like(V, memory_format=torch.contiguous_format), torch.empty_like(
        T, memory_format=torch.contiguous_format
    )


def _setup_context(ctx, inputs, output):
    V, T, t_lengths, scale = inputs
    ctx.save_for_backward(V, T, t_lengths)
    ctx.scale = scale


def _backward(ctx, grad_v_bar, grad_t_bar):
    refuse_double_backward("cross_attention_cosine")
    V, T, t_lengths = ctx.saved_tensors
    if grad_v_bar is None:
        grad_v_bar = V.new_zeros(V.shape[:2])
    if grad_t_bar is None:
        grad_t_bar = T.new_zeros(T.shape[:2])
    grad_V, grad_T = torch.ops.mmfast._cross_attention_cosine_backward(
        grad_v_bar, grad_t_bar, V, T, t_lengths, ctx.scale
    )
    return grad_V, grad_T, None, None


torch.library.register_autograd(
    "mmfast::cross_attention_cosine", _backward, setup_context=_setup_context
)
