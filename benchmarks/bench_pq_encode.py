"""PQ encoding and training: mmfast vs its reference vs faiss, on the same centroids.

    pytest benchmarks/bench_pq_encode.py --benchmark-enable

Encode: 100k vectors, d in {512, 2048}, M in {4, 8, 16}, C = 256, 1 and 2 threads. The codes
must equal faiss's except at near ties. Training: PQ codebooks (25 iterations, 256 points per
centroid) against faiss's ProductQuantizer.train, with reconstruction errors side by side.
"""

import pytest
import torch

import mmfast
from mmfast.ops import pq_encode
from mmfast.quant import ProductQuantizer

faiss = pytest.importorskip("faiss")

NUM_VECTORS = 100_000
CENTROIDS = 256


def _features(n, dim, seed=0):
    # Non-negative, L2-normalized, clustered: shaped like pooled CNN features.
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(128, dim, generator=g).relu()
    x = centers[torch.randint(128, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x.relu(), dim=1).contiguous()


@pytest.fixture(scope="module", params=[512, 2048], ids=lambda d: f"d{d}")
def vectors(request):
    return _features(NUM_VECTORS, request.param)


@pytest.fixture
def threads(threads):
    """The shared thread fixture, applied to faiss's OpenMP pool too."""
    faiss.omp_set_num_threads(threads)
    return threads


def _faiss_pq(dim, subvectors, codebooks):
    pq = faiss.ProductQuantizer(dim, subvectors, 8)
    faiss.copy_array_to_vector(codebooks.numpy().ravel(), pq.centroids)
    return pq


@pytest.mark.parametrize("subvectors", [4, 8, 16], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("impl", ["mmfast", "reference", "faiss"])
def test_encode(benchmark, record, vectors, threads, subvectors, impl):
    dim = vectors.shape[1]
    # Codebooks from real training, so codes fall among near neighbours as in use.
    quantizer = ProductQuantizer(dim, subvectors, CENTROIDS).fit(vectors[:20_000], iters=4)
    codebooks = quantizer.codebooks
    record(benchmark, f"encode d={dim} M={subvectors} {threads}thr", impl)
    if impl == "faiss":
        pq, x = _faiss_pq(dim, subvectors, codebooks), vectors.numpy()
        codes = torch.from_numpy(benchmark.pedantic(pq.compute_codes, (x,), rounds=3))
    else:
        with mmfast.backend("fused" if impl == "mmfast" else "reference"):
            codes = benchmark.pedantic(pq_encode, (vectors, codebooks), rounds=3)
    if benchmark.stats is not None:  # None under --benchmark-disable (a plain test run)
        benchmark.extra_info["vectors_per_s"] = NUM_VECTORS / benchmark.stats.stats.min
    faiss_codes = _faiss_pq(dim, subvectors, codebooks).compute_codes(vectors.numpy())
    agreement = (codes.numpy() == faiss_codes).mean()
    benchmark.extra_info["same_codes_as_faiss"] = float(agreement)
    assert agreement >= 0.999


@pytest.mark.parametrize("impl", ["mmfast", "faiss"])
def test_train(benchmark, record, vectors, threads, impl):
    dim, subvectors = vectors.shape[1], 8
    train = vectors[: CENTROIDS * 256]
    record(benchmark, f"train d={dim} M={subvectors} {threads}thr", impl)
    if impl == "faiss":
        pq = faiss.ProductQuantizer(dim, subvectors, 8)
        pq.cp.niter = 25
        benchmark.pedantic(pq.train, (train.numpy(),), rounds=1)
        decoded = torch.from_numpy(pq.decode(pq.compute_codes(vectors.numpy())))
        error = float(((decoded - vectors) ** 2).sum(1).mean() / (vectors**2).sum(1).mean())
    else:
        quantizer = ProductQuantizer(dim, subvectors, CENTROIDS)
        benchmark.pedantic(quantizer.fit, (train,), kwargs={"iters": 25}, rounds=1)
        error = quantizer.reconstruction_error(vectors)
    benchmark.extra_info["relative_reconstruction_error"] = error
