"""pq_encode (DESIGN 2.1) against its reference, faiss-style exact cases, and bad inputs."""

import pytest
import torch
from torch.library import opcheck

import mmfast
from mmfast import reference
from mmfast.ops import pq_encode


def _problem(batch, dim, subvectors, centroids, repetitions=1, clustered=False, seed=0,
             dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    dsub = dim // subvectors
    codebooks = torch.randn(repetitions * subvectors, centroids, dsub, generator=g)
    if clustered:
        # Points near centroids: the regime of real PQ, with many near ties between neighbours.
        centers = torch.randn(16, dim, generator=g) * 3
        x = centers[torch.randint(16, (batch,), generator=g)] + 0.3 * torch.randn(batch, dim, generator=g)
    else:
        x = torch.randn(batch, dim, generator=g)
    perm = None
    if repetitions > 1:
        perm = torch.stack([torch.randperm(dim, generator=g) for _ in range(repetitions)])
        perm = perm.to(device)
    return x.to(device, dtype), codebooks.to(device), perm


def _subspace_distances(x, codebooks, perm, codes):
    """Exact (float64) distance of every row's sub-vector to the centroid ``codes`` names."""
    num_subspaces, _, dsub = codebooks.shape
    perms = [None] if perm is None else list(perm)
    per_rep = num_subspaces // len(perms)
    x = x.double()
    out = []
    for r, columns in enumerate(perms):
        xr = x if columns is None else x[:, columns]
        for m in range(per_rep):
            s = r * per_rep + m
            chosen = codebooks[s].double()[codes[:, s].long()]
            out.append(((xr[:, m * dsub:(m + 1) * dsub] - chosen) ** 2).sum(1))
    return torch.stack(out, 1)


def assert_codes_match(codes, expected, x, codebooks, perm):
    """DESIGN 2.1: >= 99.9% identical, and every differing code a near tie (1e-5 relative)."""
    assert codes.shape == expected.shape and codes.dtype == expected.dtype
    if codes.numel() == 0:
        return
    differ = codes != expected
    assert differ.float().mean().item() <= 1e-3, f"{int(differ.sum())} of {codes.numel()} differ"
    if differ.any():
        got = _subspace_distances(x, codebooks, perm, codes)[differ]
        want = _subspace_distances(x, codebooks, perm, expected)[differ]
        scale = torch.maximum(got, want).clamp(min=1e-6)
        assert ((got - want).abs() / scale).max() <= 1e-5


SHAPES = [  # batch, dim, M, C, R
    (0, 16, 4, 256, 1),
    (1, 16, 4, 256, 1),
    (7, 12, 3, 5, 1),
    (37, 20, 5, 2, 1),
    (101, 30, 6, 300, 1),
    (257, 64, 8, 256, 1),
    (130, 48, 4, 1000, 2),
    (55, 21, 7, 17, 3),
    (20, 4, 2, 40000, 1),
]


@pytest.mark.parametrize("batch,dim,subvectors,centroids,repetitions", SHAPES)
@pytest.mark.parametrize("clustered", [False, True])
def test_matches_reference(device, batch, dim, subvectors, centroids, repetitions, clustered):
    x, codebooks, perm = _problem(batch, dim, subvectors, centroids, repetitions, clustered,
                                  device=device)
    codes = pq_encode(x, codebooks, perm)
    assert codes.device == x.device
    assert_codes_match(codes, reference.pq_encode(x, codebooks, perm), x, codebooks, perm)


@pytest.mark.parametrize("centroids,dtype", [(2, torch.uint8), (256, torch.uint8),
                                              (257, torch.int16), (32768, torch.int16),
                                              (32769, torch.int32), (65536, torch.int32)])
def test_code_dtype_and_full_range(centroids, dtype):
    # Vectors placed exactly on centroids (faiss's test) encode to exactly those centroids,
    # including the highest index of the largest codebooks.
    g = torch.Generator().manual_seed(1)
    codebooks = torch.randn(2, centroids, 2, generator=g) * 10
    chosen = torch.tensor([[0, centroids - 1], [centroids - 1, 0], [centroids // 2, 1]])
    x = torch.cat([codebooks[0][chosen[:, 0]], codebooks[1][chosen[:, 1]]], 1)
    codes = pq_encode(x, codebooks)
    assert codes.dtype == dtype
    assert torch.equal(codes.long(), chosen)


def test_vectors_on_centroids_encode_exactly(device):
    g = torch.Generator().manual_seed(2)
    codebooks = torch.randn(8, 256, 16, generator=g)
    chosen = torch.randint(256, (500, 8), generator=g)
    x = torch.cat([codebooks[m][chosen[:, m]] for m in range(8)], 1)
    codes = pq_encode(x.to(device), codebooks.to(device))
    assert torch.equal(codes.long().cpu(), chosen)


def test_ties_go_to_the_lowest_index():
    codebooks = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])
    x = torch.tensor([[0.5, 0.5], [0.0, 0.0], [1.0, 0.0]])
    assert pq_encode(x, codebooks)[:, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(device, dtype):
    x, codebooks, perm = _problem(300, 64, 8, 256, 2, clustered=True, dtype=dtype, device=device)
    codes = pq_encode(x, codebooks, perm)
    assert_codes_match(codes, reference.pq_encode(x, codebooks, perm), x, codebooks, perm)


def test_non_contiguous_inputs(device):
    x, codebooks, perm = _problem(200, 96, 6, 64, 2, device=device)
    strided = x[::2, ::2]  # 100 x 48, both strides > 1
    books = codebooks[:, :, ::2]  # [12, 64, 8] non-contiguous
    perm48 = torch.stack([torch.randperm(48) for _ in range(2)]).to(device)
    transposed = x[:, :48].t().contiguous().t()  # column-major
    for xs, cb, p in ((strided, books, perm48), (transposed, books, perm48)):
        assert not xs.is_contiguous()
        codes = pq_encode(xs, cb, p)
        assert_codes_match(codes, reference.pq_encode(xs.contiguous(), cb.contiguous(), p),
                           xs, cb, p)


def test_reference_backend_switch(monkeypatch):
    x, codebooks, _ = _problem(10, 8, 2, 16)
    calls = []
    monkeypatch.setattr(reference, "pq_encode", lambda *a: calls.append(a) or torch.zeros(1))
    with mmfast.backend("reference"):
        pq_encode(x, codebooks)
    assert len(calls) == 1 and mmfast.get_backend() == "fused"
    pq_encode(x, codebooks)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="backend must be one of"):
        mmfast.set_backend("fast")


@pytest.mark.parametrize("repetitions", [1, 3])
def test_opcheck(device, repetitions):
    x, codebooks, perm = _problem(33, 24, 4, 40, repetitions, device=device)
    opcheck(torch.ops.mmfast.pq_encode.default, (x, codebooks, perm))
    opcheck(torch.ops.mmfast.pq_encode.default, (x.requires_grad_(), codebooks, perm))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, backend):
    x, codebooks, perm = _problem(64, 32, 4, 64, 2, device=device)

    @torch.compile(fullgraph=True, backend=backend)
    def tokens(x, codebooks, perm):
        codes = pq_encode(x * 2.0, codebooks, perm).long()
        return codes + torch.arange(codes.shape[1], device=codes.device) * codebooks.shape[1]

    expected = pq_encode(x * 2.0, codebooks, perm).long()
    expected = expected + torch.arange(expected.shape[1], device=x.device) * 64
    assert torch.equal(tokens(x, codebooks, perm), expected)


def test_bad_inputs():
    x, codebooks, perm = _problem(10, 16, 4, 8, 2)
    with pytest.raises(TypeError, match="x must be one of float32, float16, bfloat16, got torch.int64"):
        pq_encode(x.long(), codebooks)
    with pytest.raises(TypeError, match="x must be one of .* got torch.float64"):
        pq_encode(x.double(), codebooks)
    with pytest.raises(TypeError, match="codebooks must be a torch.Tensor, got list"):
        pq_encode(x, [1, 2])
    with pytest.raises(ValueError, match=r"x must have 2 dimensions, got shape \(160,\)"):
        pq_encode(x.flatten(), codebooks)
    with pytest.raises(ValueError, match="codebooks must have 3 dimensions"):
        pq_encode(x, codebooks[0])
    with pytest.raises(ValueError, match="cover 4 x 3 dimensions per repetition, but x has 16"):
        pq_encode(x, codebooks[:4, :, :3])
    with pytest.raises(ValueError, match=r"centroids\) must be in \[2, 65536\], got 1"):
        pq_encode(x, codebooks[:, :1])
    with pytest.raises(ValueError, match="multiple of the repetitions R=3"):
        pq_encode(x, codebooks, torch.stack([perm[0]] * 3))
    with pytest.raises(ValueError, match=r"perm must have shape \[R, 16\]"):
        pq_encode(x, codebooks, perm[:, :8])
    with pytest.raises(TypeError, match="perm must be one of int64, got torch.int32"):
        pq_encode(x, codebooks, perm.int())
    with pytest.raises(ValueError, match="codebooks must be on cpu like the first input, got meta"):
        pq_encode(x, codebooks.to("meta"))


def test_bad_values_raise_from_the_kernel():
    x, codebooks, perm = _problem(10, 16, 4, 8, 2)
    bad = x.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match="x must be finite, but row 7 has a NaN or infinite value"):
        pq_encode(bad, codebooks, perm)
    bad[7, 3] = float("inf")
    with pytest.raises(ValueError, match="row 7"):
        pq_encode(bad, codebooks[:4])
    books = codebooks.clone()
    books[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="codebooks must be finite"):
        pq_encode(x, books, perm)
    # A direct op call skips the Python checks; the kernel still refuses out-of-range columns.
    with pytest.raises(ValueError, match=r"perm values must be column indices in \[0, 16\)"):
        torch.ops.mmfast.pq_encode(x, codebooks, perm + 1)
