"""``bilinear_fusion``: the (optionally gated) bilinear form of two inputs (DESIGN 2.2)."""

import torch

from mmfast import _backend, reference
from mmfast.ops._checks import (FLOAT_DTYPES, check_same_device, check_same_dtype, check_tensor,
                                refuse_double_backward)

_OP = "bilinear_fusion"
GATES = ("none", "first", "second")
# float64 runs too (in float64), so that torch.autograd.gradcheck can hold the kernels to account.
_DTYPES = FLOAT_DTYPES + (torch.float64,)


def bilinear_fusion(
    u: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gate: str = "none",
) -> torch.Tensor:
    """``out[b, k] = sum_p sum_q g(u)[b, p] weight[k, p, q] g'(v)[b, q] + bias[k]`` for u [B, P],
    v [B, Q], weight [K, P, Q], bias [K] or None; out is [B, K]. ``gate="first"`` makes g a
    sigmoid, ``"second"`` makes g' one (Kiela's bilinear-gated fusion), ``"none"`` neither; the
    gate is applied inside the kernel. All tensors share one dtype (float32, float16, bfloat16
    with float32 accumulation, or float64) and one device. Differentiable in u, v, weight and
    bias. Like ``torch.nn.functional.bilinear``, a NaN or infinity in a row of u or v reaches that
    row of out (and only that row); nothing is checked for finiteness. An infinity gives +-inf
    or NaN (inf - inf), depending on the signs of the other terms and on the order of the sum,
    which differs from ``F.bilinear``'s: an output that one of them makes +-inf, the other may
    make NaN."""
    check_tensor(_OP, "u", u, ndim=2, dtypes=_DTYPES)
    check_tensor(_OP, "v", v, ndim=2, dtypes=_DTYPES)
    check_tensor(_OP, "weight", weight, ndim=3, dtypes=_DTYPES)
    for name, tensor in (("v", v), ("weight", weight)):
        check_same_dtype(_OP, name, tensor, u)
        check_same_device(_OP, name, tensor, u)
    if v.shape[0] != u.shape[0]:
        raise ValueError(
            f"{_OP}: v must have the batch size of u ({u.shape[0]}), got shape {tuple(v.shape)}"
        )
    if weight.shape[1:] != (u.shape[1], v.shape[1]):
        raise ValueError(
            f"{_OP}: weight must have shape [K, {u.shape[1]}, {v.shape[1]}] to match u and v, "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor(_OP, "bias", bias, ndim=1, dtypes=_DTYPES)
        check_same_dtype(_OP, "bias", bias, u)
        check_same_device(_OP, "bias", bias, u)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"{_OP}: bias must have shape [{weight.shape[0]}] to match weight, "
                f"got {tuple(bias.shape)}"
            )
    if gate not in GATES:
        raise ValueError(f"{_OP}: gate must be one of {GATES}, got {gate!r}")
    if _backend.use_reference():
        return reference.bilinear_fusion(u, v, weight, bias, gate)
    return torch.ops.mmfast.bilinear_fusion(u, v, weight, bias, gate)


@torch.library.register_fake("mmfast::bilinear_fusion")
def _(u, v, weight, bias, gate):
    return u.new_empty((u.shape[0], weight.shape[0]))


@torch.library.register_fake("mmfast::_bilinear_fusion_backward")
def _(grad_out, u, v, weight, gate):
    # The kernels return fresh contiguous gradients whatever the inputs' strides.
    return (
        u.new_empty(u.shape),
        v.new_empty(v.shape),
        weight.new_empty(weight.shape),
        weight.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    u, v, weight, bias, gate = inputs
    ctx.save_for_backward(u, v, weight)
    ctx.gate = gate


def _backward(ctx, grad_out):
    refuse_double_backward("bilinear_fusion")
    u, v, weight = ctx.saved_tensors
    grad_u, grad_v, grad_weight, grad_bias = torch.ops.mmfast._bilinear_fusion_backward(
        grad_out, u, v, weight, ctx.gate
    )
    needs = ctx.needs_input_grad
    return (
        grad_u if needs[0] else None,
        grad_v if needs[1] else None,
        grad_weight if needs[2] else None,
        grad_bias if needs[3] else None,
        None,
    )


torch.library.register_autograd(
    "mmfast::bilinear_fusion", _backward, setup_context=_setup_context
)
