import torch


def bilinear_fusion(
    u: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gate: str = "none",
) -> torch.Tensor:
    """The bilinear form of every row pair, optionally gated.

    u [B, P]; v [B, Q]; weight [K, P, Q]; bias [K] or None.
    ``out[b, k] = sum_p sum_q g(u)[b, p] * weight[k, p, q] * g'(v)[b, q] + bias[k]``, where the
    gate "first" makes g a sigmoid, "second" makes g' one, and "none" leaves both the identity.
    """
    if gate == "first":
        u = torch.sigmoid(u)
    elif gate == "second":
        v = torch.sigmoid(v)
    out = torch.einsum("bp,kpq,bq->bk", u, weight, v)
    if bias is not None:
        out = out + bias
    return out
