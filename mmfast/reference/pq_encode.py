import torch


def code_dtype(num_centroids: int) -> torch.dtype:
    """The narrowest integer dtype that holds every code of a C-entry codebook (DESIGN 2.1)."""
    if num_centroids <= 256:
        return torch.uint8
    if num_centroids <= 32768:
        return torch.int16
    return torch.int32


def pq_encode(
    x: torch.Tensor, codebooks: torch.Tensor, perm: torch.Tensor | None = None
) -> torch.Tensor:
    """Nearest centroid of every subspace of every row.

    x [B, D]; codebooks [R*M, C, D/M]; perm [R, D] or None (R = 1, identity).
    Subspace m of repetition r is ``x[:, perm[r]][:, m*dsub:(m+1)*dsub]``; its code is
    ``argmin_c |sub - codebooks[r*M + m, c]|^2``, the lowest index on ties.
    """
    num_subspaces, num_centroids, dsub = codebooks.shape
    perms = [None] if perm is None else list(perm)
    per_rep = num_subspaces // len(perms)
    x = x.float()
    codes = []
    for r, columns in enumerate(perms):
        xr = x if columns is None else x[:, columns]
        for m in range(per_rep):
            sub = xr[:, m * dsub : (m + 1) * dsub]  # [B, dsub]
            book = codebooks[r * per_rep + m].float()  # [C, dsub]
            distances = (
                (sub * sub).sum(1, keepdim=True) - 2 * sub @ book.T + (book * book).sum(1)
            )  # [B, C]
            codes.append(distances.argmin(1))  # first minimum: lowest index on ties
    out = torch.stack(codes, 1) if codes else x.new_zeros((x.shape[0], 0), dtype=torch.long)
    return out.to(code_dtype(num_centroids))
