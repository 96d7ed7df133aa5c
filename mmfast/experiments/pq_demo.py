"""The PQ/RSPQ encoding demo (``mmfast demo --pq``): quantizers trained on generated
image-feature-like vectors, their encoding throughput on the fused kernel against the
reference, and their reconstruction error."""

import time

import torch

import mmfast
from mmfast.quant import RSPQ, ProductQuantizer


def demo_vectors(num_vectors: int, dim: int, seed: int) -> torch.Tensor:
    """A fixed stand-in for pooled CNN image features: a 64-component Gaussian mixture with
    non-negative (post-ReLU-like) coordinates, L2-normalized, as paper 003 feeds its quantizers."""
    generator = torch.Generator().manual_seed(seed)
    components = torch.randn(64, dim, generator=generator).relu() * 2
    scales = torch.rand(dim, generator=generator) + 0.25  # anisotropic, like real features
    labels = torch.randint(64, (num_vectors,), generator=generator)
    x = (components[labels] + torch.randn(num_vectors, dim, generator=generator) * scales).relu()
    return torch.nn.functional.normalize(x, dim=1)


def _throughput(function, x: torch.Tensor, repeats: int = 3) -> tuple[torch.Tensor, float]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = function(x)
        best = min(best, time.perf_counter() - start)
    return out, x.shape[0] / best


def run(num_vectors: int = 60_000, num_train: int = 20_000, dim: int = 512,
        subvectors: int = 8, centroids: int = 256, repetitions: int = 4, iters: int = 20,
        seed: int = 0) -> None:
    """Print PQ's and RSPQ's training time, encoding speed (fused against the reference) and
    reconstruction error on ``num_vectors`` generated vectors, the first ``num_train`` to fit."""
    torch.manual_seed(seed)
    x = demo_vectors(num_vectors, dim, seed)
    train, held_out = x[: num_train], x[num_train :]
    print(
        f"mmfast demo: PQ and RSPQ on {len(x)} generated {dim}-d image-feature vectors "
        f"({len(train)} to train, {len(held_out)} held out), {torch.get_num_threads()} threads"
    )
    quantizers = {
        f"PQ   M={subvectors} C={centroids}": ProductQuantizer(
            dim, subvectors, centroids, seed=seed
        ),
        f"RSPQ M={subvectors} C={centroids} R={repetitions}": RSPQ(
            dim, subvectors, centroids, repetitions, seed=seed
        ),
    }
    print(f"{'quantizer':<26} {'train s':>8} {'encode vec/s':>13} {'reference vec/s':>16} "
          f"{'speed-up':>9} {'same codes':>11} {'rel. error':>11}")
    for name, quantizer in quantizers.items():
        start = time.perf_counter()
        quantizer.fit(train, iters=iters)
        train_seconds = time.perf_counter() - start
        codes, fused_rate = _throughput(quantizer.encode, held_out)
        with mmfast.backend("reference"):
            reference_codes, reference_rate = _throughput(quantizer.encode, held_out)
        same = (codes == reference_codes).float().mean().item()
        error = quantizer.reconstruction_error(held_out)
        print(f"{name:<26} {train_seconds:>8.2f} {fused_rate:>13,.0f} {reference_rate:>16,.0f} "
              f"{fused_rate / reference_rate:>8.1f}x {same:>10.4%} {error:>11.4f}")
    print("rel. error: mean |x - decode(encode(x))|^2 / mean |x|^2 on the held-out vectors")
