"""k-means (Lloyd) whose assignment step is the fused ``pq_encode`` op.

One routine trains the codebooks of every subspace of a vector at once: PQ is k-means on M
subspaces, plain k-means the case M = 1. Like faiss, training runs a fixed number of iterations
on at most ``k * max_points_per_centroid`` sampled points, and an empty cluster is re-seeded by
splitting the largest one, so results are deterministic for a seed.
"""

import torch

from mmfast.ops.pq_encode import pq_encode

KMEANS_INITS = ("random", "k-means++")  # the ``init`` values k-means takes
_SPLIT_EPS = 1.0 / 1024.0


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 25,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    init: str = "random",
) -> torch.Tensor:
    """Centroids [k, D] (float32) of ``x`` [N, D].

    ``init``: "random" (k distinct sampled points, as faiss) or "k-means++".
    """
    return train_subspace_codebooks(
        x, 1, k, iters=iters, seed=seed, max_points_per_centroid=max_points_per_centroid, init=init
    )[0]


def kmeans_inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum over rows of the squared distance to the nearest centroid."""
    codes = pq_encode(x.float(), centroids[None].float()).long()[:, 0]
    return float(((x.double() - centroids.double()[codes]) ** 2).sum())


def train_subspace_codebooks(
    x: torch.Tensor,
    num_subspaces: int,
    k: int,
    *,
    iters: int = 25,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    init: str = "random",
) -> torch.Tensor:
    """k-means on each of the ``num_subspaces`` contiguous slices of ``x`` [N, D] at once:
    returns codebooks [num_subspaces, k, D / num_subspaces]."""
    _check_training_args(x, num_subspaces, k, iters, max_points_per_centroid, init)
    generator = torch.Generator().manual_seed(seed)
    n, dim = x.shape
    dsub = dim // num_subspaces
    if n > k * max_points_per_centroid:
        sample = torch.randperm(n, generator=generator)[: k * max_points_per_centroid]
        x = x[sample.to(x.device)]
        n = x.shape[0]
    x = x.float().contiguous()
    subvectors = x.view(n, num_subspaces, dsub)  # [N, M, dsub]

    if init == "random":
        chosen = torch.randperm(n, generator=generator)[:k].to(x.device)
        codebooks = subvectors[chosen].transpose(0, 1).contiguous()  # [M, k, dsub]
    else:
        codebooks = _kmeans_plus_plus(subvectors, k, generator)

    offsets = torch.arange(num_subspaces, device=x.device) * k  # cluster (m, c) -> m*k + c
    flat_subvectors = subvectors.reshape(n * num_subspaces, dsub).double()
    for iteration in range(iters):
        codes = pq_encode(x, codebooks)  # [N, M]
        clusters = (codes.long() + offsets).reshape(-1)
        sums = torch.zeros(num_subspaces * k, dsub, dtype=torch.float64, device=x.device)
        sums.index_add_(0, clusters, flat_subvectors)
        counts = torch.bincount(clusters, minlength=num_subspaces * k).view(num_subspaces, k)
        sums = sums.view(num_subspaces, k, dsub)
        updated = sums / counts.clamp(min=1).unsqueeze(-1)
        # A cluster that lost all its points keeps its old centroid until it is re-seeded.
        codebooks = torch.where(counts.unsqueeze(-1) > 0, updated, codebooks.double()).float()
        if iteration + 1 < iters:  # the last update stays exact means
            _split_largest_into_empty(codebooks, counts)
    return codebooks


def _check_training_args(x, num_subspaces, k, iters, max_points_per_centroid, init) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"kmeans: x must be a 2-D floating tensor [N, D], got {shape}")
    if not 2 <= k <= 65536:
        raise ValueError(f"kmeans: k must be in [2, 65536], got {k}")
    if x.shape[1] % num_subspaces != 0:
        raise ValueError(
            f"kmeans: dimension {x.shape[1]} is not divisible by the {num_subspaces} subspaces"
        )
    if x.shape[0] < k:
        raise ValueError(f"kmeans: need at least k={k} training points, got {x.shape[0]}")
    if iters < 0 or max_points_per_centroid < 1:
        raise ValueError(
            f"kmeans: iters must be >= 0 and max_points_per_centroid >= 1, "
            f"got {iters} and {max_points_per_centroid}"
        )
    if init not in KMEANS_INITS:
        raise ValueError(f"kmeans: init must be 'random' or 'k-means++', got {init!r}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("kmeans: x must be finite, found a NaN or infinite value")


def _kmeans_plus_plus(
    subvectors: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding of every subspace: each next centroid is drawn with probability
    proportional to the squared distance to the nearest one chosen so far."""
    n, num_subspaces, dsub = subvectors.shape
    per_subspace = subvectors.transpose(0, 1)  # [M, N, dsub]
    first = torch.randint(n, (num_subspaces,), generator=generator).to(subvectors.device)
    subspace = torch.arange(num_subspaces, device=subvectors.device)
    centroids = [per_subspace[subspace, first]]  # each [M, dsub]
    nearest = ((per_subspace - centroids[0][:, None]) ** 2).sum(-1)  # [M, N]
    for _ in range(1, k):
        weights = nearest.double().cpu() + 1e-30  # all-zero rows (duplicates) stay drawable
        chosen = torch.multinomial(weights, 1, generator=generator)[:, 0].to(subvectors.device)
        centroids.append(per_subspace[subspace, chosen])
        nearest = torch.minimum(nearest, ((per_subspace - centroids[-1][:, None]) ** 2).sum(-1))
    return torch.stack(centroids, 1).contiguous()  # [M, k, dsub]


def _split_largest_into_empty(codebooks: torch.Tensor, counts: torch.Tensor) -> None:
    """Re-seed each empty cluster by splitting the currently largest cluster of its subspace in
    two slightly perturbed halves (faiss's rule), in place."""
    for m, c in torch.nonzero(counts == 0).tolist():
        largest = int(counts[m].argmax())
        if counts[m, largest] < 2:
            continue
        sign = torch.ones(codebooks.shape[-1], device=codebooks.device)
        sign[1::2] = -1
        centroid = codebooks[m, largest].clone()
        codebooks[m, c] = centroid * (1 + _SPLIT_EPS * sign)
        codebooks[m, largest] = centroid * (1 - _SPLIT_EPS * sign)
        half = counts[m, largest] // 2
        counts[m, c] = half
        counts[m, largest] -= half
