import torch


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Plain Lloyd's k-means: k distinct random points as the start, then assign every point to
    its nearest centroid and move each centroid to the mean of its points. Empty clusters keep
    their centroid. Centroids [k, D]."""
    generator = torch.Generator().manual_seed(seed)
    x = x.double()
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k]]
    for _ in range(iters):
        assignment = torch.cdist(x, centroids).argmin(1)
        for c in range(k):
            members = x[assignment == c]
            if len(members):
                centroids[c] = members.mean(0)
    return centroids.float()
