import torch

COSINE_EPS = 1e-8


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.b / (max(|a|, eps) max(|b|, eps))`` along the last dimension."""
    norms = a.norm(dim=-1).clamp(min=COSINE_EPS) * b.norm(dim=-1).clamp(min=COSINE_EPS)
    return (a * b).sum(-1) / norms


def cross_attention_cosine(
    V: torch.Tensor,
    T: torch.Tensor,
    t_lengths: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AnANet's alignment net (DESIGN 2.3): how well each region and each word is explained by
    the other modality.

    V [B, Kr, d] regions; T [B, N, d] words, of which the first ``t_lengths[b]`` are valid (all
    when None). ``S = scale V T^T``; each region attends to the valid words
    (``Vhat = softmax_words(S) T``) and each word to the regions
    (``That = softmax_regions(S)^T V``);
    ``v_bar = cos(V, Vhat)`` [B, Kr] and ``t_bar = cos(T, That)`` [B, N], 0 at padded words.
    float16/bfloat16 are computed in float32; results have the input dtype.
    """
    batch, _, _ = V.shape
    num_words = T.shape[1]
    compute_dtype = torch.float64 if V.dtype == torch.float64 else torch.float32
    regions, words = V.to(compute_dtype), T.to(compute_dtype)
    if t_lengths is None:
        t_lengths = torch.full((batch,), num_words, dtype=torch.long, device=V.device)
    valid = torch.arange(num_words, device=V.device) < t_lengths[:, None]  # [B, N]
    # Padded words take no part and get no gradient, whatever they hold.
    words = torch.where(valid[:, :, None], words, 0.0)

    scores = scale * regions @ words.transpose(1, 2)  # [B, Kr, N]

    # Each region's attention over the valid words. Padding is filled with the lowest finite
    # value, not -inf, so a sample without words gives a uniform row (zeroed by the mask)
    # instead of NaN.
    lowest = torch.finfo(compute_dtype).min
    attn_t2v = scores.masked_fill(~valid[:, None, :], lowest).softmax(dim=2)
    attn_t2v = attn_t2v * valid[:, None, :]
    v_hat = attn_t2v @ words  # [B, Kr, d]
    v_bar = cosine(regions, v_hat)

    attn_v2t = scores.softmax(dim=1).transpose(1, 2)  # [B, N, Kr]: each word over the regions
    t_hat = attn_v2t @ regions  # [B, N, d]
    t_bar = torch.where(valid, cosine(words, t_hat), 0.0)
    return v_bar.to(V.dtype), t_bar.to(V.dtype)
