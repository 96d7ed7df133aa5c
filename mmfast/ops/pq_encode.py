"""``pq_encode``: nearest-centroid codes for PQ, RSPQ and k-means assignment (DESIGN 2.1)."""

import torch

from mmfast import _backend, reference
from mmfast.ops._checks import FLOAT_DTYPES, check_finite, check_same_device, check_tensor
from mmfast.reference.pq_encode import code_dtype

_OP = "pq_encode"


def pq_encode(
    x: torch.Tensor, codebooks: torch.Tensor, perm: torch.Tensor | None = None
) -> torch.Tensor:
    """Codes of ``x`` [B, D] against ``codebooks`` [R*M, C, D/M] (optionally permuted by ``perm``
    [R, D] per repetition): ``codes[b, r*M + m]`` is the nearest centroid of subspace m of
    repetition r, lowest index on ties. Codes are uint8 for C <= 256, int16 for C <= 32768,
    else int32. x is float32, float16 or bfloat16 (distances in float32); a non-finite row is
    an error. Not differentiable."""
    check_tensor(_OP, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor(_OP, "codebooks", codebooks, ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_same_device(_OP, "codebooks", codebooks, x)
    num_subspaces, num_centroids, dsub = codebooks.shape
    if not 2 <= num_centroids <= 65536:
        raise ValueError(
            f"{_OP}: codebooks.shape[1] (centroids) must be in [2, 65536], got {num_centroids}"
        )
    repetitions = 1
    if perm is not None:
        check_tensor(_OP, "perm", perm, ndim=2, dtypes=(torch.int64,))
        check_same_device(_OP, "perm", perm, x)
        if perm.shape[1] != x.shape[1]:
            raise ValueError(
                f"{_OP}: perm must have shape [R, {x.shape[1]}] to match x, "
                f"got {tuple(perm.shape)}"
            )
        repetitions = perm.shape[0]
    if repetitions == 0 or num_subspaces % repetitions != 0:
        raise ValueError(
            f"{_OP}: codebooks.shape[0]={num_subspaces} must be a positive multiple of "
            f"the repetitions R={repetitions}"
        )
    if (num_subspaces // repetitions) * dsub != x.shape[1]:
        raise ValueError(
            f"{_OP}: codebooks of shape {tuple(codebooks.shape)} cover "
            f"{num_subspaces // repetitions} x {dsub} dimensions per repetition, "
            f"but x has {x.shape[1]}"
        )
    if _backend.use_reference():
        _check_values(x, codebooks, perm)
        return reference.pq_encode(x, codebooks, perm)
    return torch.ops.mmfast.pq_encode(x, codebooks, perm)


@torch.library.register_fake("mmfast::pq_encode")
def _(x, codebooks, perm):
    return x.new_empty((x.shape[0], codebooks.shape[0]), dtype=code_dtype(codebooks.shape[1]))


def _check_values(x: torch.Tensor, codebooks: torch.Tensor, perm: torch.Tensor | None) -> None:
    """The kernels' value checks, with their messages, for the reference path (made only when
    there is something to encode and values are checked, as the kernels do)."""
    if x.shape[0] == 0 or codebooks.shape[0] == 0 or not _backend.checks_values(x):
        return
    if not bool(torch.isfinite(codebooks).all()):
        raise ValueError(f"{_OP}: codebooks must be finite, found a NaN or infinite value")
    if perm is not None and perm.numel():
        low, high = (int(value) for value in perm.aminmax())
        if low < 0 or high >= x.shape[1]:
            raise ValueError(f"{_OP}: perm values must be column indices in [0, {x.shape[1]})")
    check_finite(_OP, "x", x)
