"""k-means, ProductQuantizer and RSPQ: determinism, quality, layout, checkpoints, bad inputs."""

import json

import pytest
import torch

import mmfast
from mmfast.quant import RSPQ, ProductQuantizer, kmeans
from mmfast.quant.kmeans import kmeans_inertia
from mmfast.reference.kmeans import kmeans as reference_kmeans


def _blobs(n=2000, dim=16, centers=12, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 4
    return means[torch.randint(centers, (n,), generator=g)] + spread * torch.randn(n, dim, generator=g)


# ---- k-means
def test_kmeans_is_deterministic_for_a_seed():
    x = _blobs()
    a, b = kmeans(x, 20, seed=3), kmeans(x, 20, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, kmeans(x, 20, seed=4))


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_kmeans_quality_matches_the_reference(init):
    x = _blobs(n=3000, dim=8, centers=10, seed=1, spread=1.0)
    ours = kmeans_inertia(x, kmeans(x, 16, iters=25, seed=0, init=init))
    theirs = kmeans_inertia(x, reference_kmeans(x, 16, iters=25, seed=0))
    assert ours <= 1.05 * theirs


def test_kmeans_quality_against_faiss():
    # Fewer centroids than true clusters, so the comparison is of the algorithms, not of
    # which random start happened to miss a cluster; averaged over three seeds each.
    faiss = pytest.importorskip("faiss")
    x = _blobs(n=4000, dim=32, centers=200, seed=2, spread=1.0)
    ours, theirs = 0.0, 0.0
    for seed in range(3):
        clustering = faiss.Kmeans(32, 64, niter=25, seed=1234 + seed, max_points_per_centroid=256)
        clustering.train(x.numpy())
        theirs += kmeans_inertia(x, torch.from_numpy(clustering.centroids))
        ours += kmeans_inertia(x, kmeans(x, 64, iters=25, seed=seed))
    assert ours <= 1.05 * theirs


def test_kmeans_recovers_well_separated_clusters():
    x = _blobs(n=1200, dim=4, centers=6, seed=5, spread=0.01)
    centroids = kmeans(x, 6, init="k-means++", seed=0)
    assert kmeans_inertia(x, centroids) / len(x) < 0.01


def test_kmeans_reseeds_empty_clusters():
    # Only 3 distinct points: k=8 starts with duplicates, so clusters go empty and get re-seeded.
    points = torch.tensor([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]])
    x = points.repeat(50, 1)
    centroids = kmeans(x, 8, iters=10, seed=0)
    assert torch.isfinite(centroids).all()
    assert kmeans_inertia(x, centroids) < 1e-6


def test_kmeans_subsamples_to_max_points_per_centroid():
    x = _blobs(n=5000, dim=4, centers=4)
    assert torch.isfinite(kmeans(x, 4, max_points_per_centroid=10, seed=0)).all()


def test_kmeans_bad_inputs():
    x = _blobs(n=50, dim=4)
    with pytest.raises(ValueError, match="need at least k=64 training points, got 50"):
        kmeans(x, 64)
    with pytest.raises(ValueError, match=r"k must be in \[2, 65536\], got 1"):
        kmeans(x, 1)
    with pytest.raises(ValueError, match="x must be a 2-D floating tensor"):
        kmeans(x.long(), 4)
    with pytest.raises(ValueError, match="init must be 'random' or 'k-means\\+\\+'"):
        kmeans(x, 4, init="forgy")
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        kmeans(bad, 4)


# ---- PQ and RSPQ
@pytest.mark.parametrize("num_centroids,dtype,max_error", [(16, torch.uint8, 0.3),
                                                           (300, torch.int16, 0.1)])
def test_pq_fit_encode_decode(num_centroids, dtype, max_error):
    x = _blobs(n=4000, dim=32, centers=30, seed=3)
    pq = ProductQuantizer(32, 4, num_centroids=num_centroids).fit(x[:3000], iters=10)
    codes = pq.encode(x)
    assert codes.shape == (4000, 4) and codes.dtype == dtype
    assert pq.decode(codes).shape == x.shape
    # Decoding then encoding again is a fixed point: each sub-vector is its own centroid now.
    assert torch.equal(pq.encode(pq.decode(codes)), codes)
    assert pq.reconstruction_error(x) < max_error


def test_more_subvectors_reconstruct_better():
    x = _blobs(n=3000, dim=32, centers=200, seed=4, spread=1.0)
    errors = [ProductQuantizer(32, m, 32).fit(x, iters=8).reconstruction_error(x) for m in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]


def test_rspq_layout_tokens_and_decode():
    x = _blobs(n=3000, dim=24, centers=50, seed=6)
    rspq = RSPQ(24, 3, num_centroids=32, repetitions=4, seed=7).fit(x, iters=8)
    assert rspq.perm.shape == (4, 24)
    assert all(torch.equal(p.sort().values, torch.arange(24)) for p in rspq.perm)
    codes = rspq.encode(x)
    assert codes.shape == (3000, 12) and rspq.num_tokens == 12 * 32
    # Repetition r, subspace m codes with codebook r*M + m on columns perm[r][m*dsub:(m+1)*dsub].
    r, m = 2, 1
    sub = x[:, rspq.perm[r][m * 8:(m + 1) * 8]]
    book = rspq.codebooks[r * 3 + m]
    assert torch.equal(codes[:, r * 3 + m].long(), torch.cdist(sub, book).argmin(1))
    tokens = rspq.tokens(x)
    assert torch.equal(tokens, codes.long() + torch.arange(12) * 32)
    assert int(tokens.max()) < rspq.num_tokens
    # decode averages the R un-permuted reconstructions
    expected = torch.zeros_like(x)
    for r in range(4):
        parts = rspq.codebooks[r * 3:(r + 1) * 3][torch.arange(3), codes[:, r * 3:(r + 1) * 3].long()]
        rec = torch.empty_like(x)
        rec[:, rspq.perm[r]] = parts.reshape(len(x), 24)
        expected += rec / 4
    assert torch.allclose(rspq.decode(codes), expected, atol=1e-6)
    assert rspq.reconstruction_error(x) < ProductQuantizer(24, 3, 32).fit(x, iters=8).reconstruction_error(x) * 1.5


@pytest.mark.parametrize("make", [lambda: ProductQuantizer(16, 4, 64, seed=1),
                                  lambda: RSPQ(16, 2, 40, repetitions=3, seed=2)])
def test_save_load_round_trip(tmp_path, make):
    x = _blobs(n=1000, dim=16, seed=8)
    quantizer = make().fit(x, iters=5)
    quantizer.save(tmp_path / "q")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["config.json", "quantizer.safetensors"]
    loaded = ProductQuantizer.load(tmp_path / "q")
    assert type(loaded) is type(quantizer)
    assert torch.equal(loaded.codebooks, quantizer.codebooks)
    assert torch.equal(loaded.encode(x), quantizer.encode(x))
    # the state dict is the other way in: an nn.Module's buffers
    clone = make()
    clone.load_state_dict(quantizer.state_dict())
    assert torch.equal(clone.encode(x), quantizer.encode(x))


def test_load_rejects_unknown_kind_and_shape_mismatch(tmp_path):
    x = _blobs(n=500, dim=8)
    ProductQuantizer(8, 2, 16).fit(x, iters=2).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_centroids": 32}))
    with pytest.raises(ValueError, match=r"have shape \(2, 16, 4\), the config expects \(2, 32, 4\)"):
        ProductQuantizer.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "kind": "Pickle"}))
    with pytest.raises(ValueError, match="unknown kind 'Pickle'"):
        ProductQuantizer.load(tmp_path)


def test_quantizer_bad_inputs():
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_subvectors=4"):
        ProductQuantizer(10, 4)
    with pytest.raises(ValueError, match="num_centroids must be an integer >= 2, got 1"):
        ProductQuantizer(8, 2, 1)
    with pytest.raises(ValueError, match="num_centroids must be at most 65536"):
        ProductQuantizer(8, 2, 70000)
    with pytest.raises(ValueError, match="repetitions must be an integer >= 1, got 0"):
        RSPQ(8, 2, repetitions=0)
    pq = ProductQuantizer(8, 2, 16)
    with pytest.raises(RuntimeError, match="not trained: call fit"):
        pq.encode(torch.randn(3, 8))
    pq.fit(_blobs(n=200, dim=8), iters=2)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 8\], got \(3, 9\)"):
        pq.encode(torch.randn(3, 9))
    with pytest.raises(ValueError, match="x is on meta but the codebooks are on cpu"):
        pq.encode(torch.randn(3, 8, device="meta"))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 16\), got values in \[0, 16\]"):
        pq.decode(torch.tensor([[0, 16]]))
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        pq.decode(torch.zeros(2, 2))
    bad = torch.randn(4, 8)
    bad[2, 0] = float("inf")
    with pytest.raises(ValueError, match="row 2 has a NaN or infinite value"):
        pq.encode(bad)


def test_encode_accepts_float64_and_half():
    x = _blobs(n=600, dim=8)
    pq = ProductQuantizer(8, 2, 16).fit(x, iters=3)
    assert torch.equal(pq.encode(x.double()), pq.encode(x))
    assert pq.encode(x.half()).shape == (600, 2)


def test_reference_backend_gives_the_same_quantizer():
    x = _blobs(n=1500, dim=16, seed=9)
    fused = ProductQuantizer(16, 4, 32).fit(x, iters=6)
    with mmfast.backend("reference"):
        ref = ProductQuantizer(16, 4, 32).fit(x, iters=6)
        ref_codes = ref.encode(x)
    assert torch.allclose(fused.codebooks, ref.codebooks, atol=1e-4)
    assert (fused.encode(x) == ref_codes).float().mean() > 0.999
