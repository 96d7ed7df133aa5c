"""Every CUDA path of the fused ops that no other test reaches (issue #16), each run on both
devices through the ``device`` fixture: on the CPU (where it proves the test itself right) and,
with ``pytest -m cuda`` on a GPU machine, on CUDA. Each compares the fused op with its reference
(``mmfast.reference``) or with the CPU's result and message.

What the kernels' geometry needs (csrc/cuda/*.cu):
- pq_encode: 128 rows per block, centroids staged 32 at a time, dsub staged 8, 16 or 32 deep
  (several stages above 32), grid rows striding over more than 65535 subspaces; codes uint8 up
  to 256 centroids, int16 up to 32768, int32 above.
- bilinear_fusion: tiles of 8192 rows, p blocks of 64 MiB / (8192 rows x Q x element size).
"""

import re

import pytest
import torch

import mmfast
from mmfast import reference
from mmfast.nn import CACNet
from mmfast.ops import bilinear_fusion, cross_attention_cosine, pq_encode
from mmfast.ops import cacnet as cacnet_ops
from mmfast.reference import cacnet as cacnet_reference


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def assert_raises_as_on_cpu(error, pattern, fn, *args):
    """``fn(*args)`` raises ``error`` matching ``pattern``, with the very message that the same
    call on CPU copies of the arguments gives (on the CPU run the two calls are the same)."""
    with pytest.raises(error, match=pattern) as raised:
        fn(*args)
    with pytest.raises(error) as on_cpu:
        fn(*_to_cpu(args))
    # First lines: with TORCH_SHOW_CPP_STACKTRACES=1 the C++ frames that follow differ.
    assert str(raised.value).splitlines()[0] == str(on_cpu.value).splitlines()[0]


# ---- pq_encode
def _codebooks(subspaces, centroids, dsub, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(subspaces, centroids, dsub, generator=g) * scale


def _distances(x, codebooks, perm, codes):
    """Exact (float64) squared distance of every sub-vector to the centroid ``codes`` names, and
    the squared norm of the sub-vector plus that of the centroid (the scale of float32's
    rounding in |x|^2 - 2 x.c + |c|^2)."""
    subspaces, _, dsub = codebooks.shape
    perms = [None] if perm is None else list(perm.cpu())
    per_rep = subspaces // len(perms)
    x, books, codes = x.cpu().double(), codebooks.cpu().double(), codes.cpu().long()
    distances, norms = [], []
    for r, columns in enumerate(perms):
        xr = x if columns is None else x[:, columns]
        for m in range(per_rep):
            s = r * per_rep + m
            sub, centroid = xr[:, m * dsub:(m + 1) * dsub], books[s][codes[:, s]]
            distances.append(((sub - centroid) ** 2).sum(1))
            norms.append((sub**2).sum(1) + (centroid**2).sum(1))
    return torch.stack(distances, 1), torch.stack(norms, 1)


def assert_codes_match_reference(codes, x, codebooks, perm=None):
    """The reference's codes and dtype, on x's device; a code that differs must be a near tie
    (distances within 1e-5 of the larger distance, or of the norms where both are tiny), as
    DESIGN 2.1 allows. No share of differing codes is bounded: at dsub 1 and 100 centroids one
    near tie in a few hundred codes is expected."""
    expected = reference.pq_encode(x.cpu(), codebooks.cpu(), None if perm is None else perm.cpu())
    assert codes.device == x.device
    assert codes.dtype == expected.dtype and codes.shape == expected.shape
    differ = codes.cpu() != expected
    if differ.any():
        got, got_norms = _distances(x, codebooks, perm, codes)
        want, want_norms = _distances(x, codebooks, perm, expected)
        scale = torch.maximum(torch.maximum(got, want), torch.maximum(got_norms, want_norms))
        assert ((got - want).abs() / scale.clamp(min=1e-12))[differ].max() <= 1e-5


def _on_centroids(codebooks, chosen):
    """Rows made of the chosen centroids, one per subspace: x [len(chosen), S * dsub]."""
    return torch.cat([codebooks[s][chosen[:, s]] for s in range(codebooks.shape[0])], 1)


@pytest.mark.parametrize("centroids,dtype", [
    (256, torch.uint8), (257, torch.int16), (32768, torch.int16), (32769, torch.int32),
    (65536, torch.int32),
])
def test_pq_code_dtype_boundaries(device, centroids, dtype):
    # Rows on centroids (the highest index included) encode to exactly them; random rows as
    # the reference does. Two subspaces of dsub 2 keep the 65536-centroid case cheap.
    books = _codebooks(2, centroids, 2, seed=1, scale=10.0)
    picks = sorted({0, 1, 255, 256 % centroids, centroids // 2, centroids - 2, centroids - 1,
                    32767 % centroids, 32768 % centroids})
    chosen = torch.tensor([[c, picks[-1 - i]] for i, c in enumerate(picks)])
    g = torch.Generator().manual_seed(2)
    x = torch.cat([_on_centroids(books, chosen), torch.randn(7, 4, generator=g) * 10])
    codes = pq_encode(x.to(device), books.to(device))
    assert codes.dtype == dtype
    assert torch.equal(codes[:len(picks)].cpu().long(), chosen)
    assert_codes_match_reference(codes, x.to(device), books)


@pytest.mark.parametrize("dsub", [1, 7, 8, 9, 16, 17, 32, 33, 40, 72])
@pytest.mark.parametrize("repetitions", [1, 2])
def test_pq_depth_stages_and_centroid_chunks(device, dsub, repetitions):
    # dsub <= 8, <= 16 and <= 32 each pick their own shared-memory depth; 33, 40 and 72 take
    # two and three 32-deep stages. 100 centroids are four chunks of 32, the last partial;
    # 150 rows are two row blocks, the last partial; RSPQ reads its columns through perm.
    subvectors, centroids, batch = 3, 100, 150
    dim = subvectors * dsub
    books = _codebooks(repetitions * subvectors, centroids, dsub, seed=dsub)
    g = torch.Generator().manual_seed(100 + dsub)
    perm = None
    if repetitions > 1:
        perm = torch.stack([torch.randperm(dim, generator=g) for _ in range(repetitions)])
    x = torch.randn(batch, dim, generator=g)
    # Rows 0..3 sit on centroids of the first repetition (among them the last, in the partial
    # chunk): their codes are exact.
    chosen = torch.tensor([[0] * subvectors, [31, 32, 33], [centroids - 1] * subvectors,
                           [63, 64, 95]])
    on = _on_centroids(books[:subvectors], chosen)
    if perm is None:
        x[:4] = on
    else:
        x[:4, perm[0]] = on  # column perm[0][j] of x is column j of the permuted row
    codes = pq_encode(x.to(device), books.to(device), None if perm is None else perm.to(device))
    assert torch.equal(codes[:4, :subvectors].cpu().long(), chosen)
    assert_codes_match_reference(codes, x.to(device), books, perm)


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("book_dtype", [torch.float32, torch.float16, torch.bfloat16,
                                        torch.float64])
def test_pq_half_precision_x_with_every_codebook_dtype(device, x_dtype, book_dtype):
    # Centroids on multiples of 1/4 in [-2, 2) are exact in every dtype, so rows on centroids
    # stay on them in x's dtype and encode exactly; random rows as the reference does (distances
    # in float32 from the same rounded inputs). 130 rows are two CUDA row blocks.
    g = torch.Generator().manual_seed(3)
    books = (torch.randint(-8, 8, (4, 40, 12), generator=g) / 4).to(book_dtype)
    chosen = torch.tensor([[0, 39, 17, 5], [39, 0, 1, 38], [31, 32, 33, 34]])
    x = torch.cat([_on_centroids(books.float(), chosen), torch.randn(127, 48, generator=g)])
    x = x.to(x_dtype)
    codes = pq_encode(x.to(device), books.to(device))
    assert codes.dtype == torch.uint8
    assert torch.equal(codes[:3].cpu().long(), chosen)
    assert_codes_match_reference(codes, x.to(device), books)


@pytest.mark.parametrize("repetitions", [1, 2])
def test_pq_more_subspaces_than_a_grid_dimension(device, repetitions):
    # 70000 subspaces: CUDA grid rows stride over them (gridDim.y stops at 65535). dsub 1 and
    # 2 centroids keep it at ~0.1 s on the CPU, so the full case runs on both devices.
    subspaces = 70000
    books = _codebooks(subspaces, 2, 1, seed=4)
    g = torch.Generator().manual_seed(5)
    dim = subspaces // repetitions
    x = torch.randn(3, dim, generator=g)
    perm = None
    if repetitions > 1:
        perm = torch.stack([torch.randperm(dim, generator=g) for _ in range(repetitions)])
    codes = pq_encode(x.to(device), books.to(device), None if perm is None else perm.to(device))
    assert codes.shape == (3, subspaces) and codes.dtype == torch.uint8
    # All of them against a vectorized exact argmin (the reference loops in Python per
    # subspace), lowest index on ties.
    columns = torch.cat(list(perm)) if perm is not None else torch.arange(dim)
    sub = x[:, columns].double()  # [3, S]: subspace s is column s of the permuted rows
    distances = (sub[:, :, None] - books[None, :, :, 0].double()) ** 2  # [3, S, 2]
    assert torch.equal(codes.cpu().long(), distances.argmin(-1))
    # And the reference itself on a slice past the 65535 boundary (subspaces are independent).
    if perm is None:
        lo = 65000
        assert_codes_match_reference(codes[:, lo:], x[:, lo:].to(device), books[lo:])


def test_pq_error_paths_match_the_cpu(device):
    g = torch.Generator().manual_seed(6)
    books = _codebooks(8, 8, 4, seed=6)
    x = torch.randn(10, 16, generator=g)
    perm = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])
    nan_x, inf_x, inf_books = x.clone(), x.clone(), books.clone()
    nan_x[7, 3] = float("nan")
    inf_x[2, 0] = inf_x[9, 15] = -float("inf")
    inf_books[5, 2, 1] = float("inf")
    x, books, perm, nan_x, inf_x, inf_books = (t.to(device) for t in (x, books, perm, nan_x,
                                                                       inf_x, inf_books))
    op = torch.ops.mmfast.pq_encode
    cases = [
        (TypeError, "x must be one of float32, float16, bfloat16, got torch.int64",
         pq_encode, x.long(), books, perm),
        (TypeError, "x must be one of float32, float16, bfloat16, got torch.float64",
         pq_encode, x.double(), books, perm),
        (TypeError, "codebooks must be one of float32, float16, bfloat16, float64, got "
         "torch.int32", pq_encode, x, books.int(), perm),
        (ValueError, r"x must have 2 dimensions, got shape \(160,\)",
         pq_encode, x.flatten(), books, perm),
        (ValueError, "codebooks must have 3 dimensions", pq_encode, x, books[0], None),
        (ValueError, "cover 4 x 3 dimensions per repetition, but x has 16",
         pq_encode, x, books[:4, :, :3], None),
        (ValueError, r"centroids\) must be in \[2, 65536\], got 1",
         pq_encode, x, books[:, :1], perm),
        (ValueError, r"centroids\) must be in \[2, 65536\], got 65537",
         pq_encode, x, torch.zeros(4, 65537, 4, device=device), None),
        (ValueError, "multiple of the repetitions R=3",
         pq_encode, x, books, torch.stack([perm[0]] * 3)),
        (ValueError, r"perm must have shape \[R, 16\]", pq_encode, x, books, perm[:, :8]),
        (TypeError, "perm must be one of int64, got torch.int32", pq_encode, x, books, perm.int()),
        # Values: checked by the kernels (the wrapper checks them only on the reference path).
        (ValueError, r"perm values must be column indices in \[0, 16\)",
         pq_encode, x, books, perm + 1),
        (ValueError, r"perm values must be column indices in \[0, 16\)",
         pq_encode, x, books, perm - 1),
        (ValueError, "x must be finite, but row 7 has a NaN or infinite value",
         pq_encode, nan_x, books, perm),
        (ValueError, "x must be finite, but row 2 has a NaN or infinite value",
         pq_encode, inf_x, books[:4], None),
        (ValueError, "codebooks must be finite, found a NaN or infinite value",
         pq_encode, x, inf_books, perm),
        # Direct op calls skip the wrapper: the kernels' own argument checks.
        (TypeError, "pq_encode: x must be float32, float16 or bfloat16, got Double",
         op, x.double(), books, perm),
        (ValueError, "cover 4 x 3 = 12 dimensions per repetition, but x has 16",
         op, x, books[:4, :, :3], None),
        (ValueError, r"must be a multiple of the repetitions R=3",
         op, x, books, torch.stack([perm[0]] * 3)),
    ]
    for error, pattern, fn, *args in cases:
        assert_raises_as_on_cpu(error, pattern, fn, *args)
    # The reference path checks the same values with the kernels' messages.
    with mmfast.backend("reference"):
        for error, pattern, fn, *args in cases[11:16]:
            assert_raises_as_on_cpu(error, pattern, fn, *args)
    # An empty batch has nothing to encode: no value check, an empty result of the code dtype.
    assert pq_encode(x[:0], books, perm + 1).shape == (0, 8)


# ---- bilinear_fusion
def _bilinear_problem(batch, in1, in2, out, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = in1**-0.5 if in1 else 1.0
    u = torch.randn(batch, in1, generator=g)
    v = torch.randn(batch, in2, generator=g)
    weight = (torch.rand(out, in1, in2, generator=g) * 2 - 1) * scale
    bias = torch.randn(out, generator=g)
    grad_out = torch.randn(batch, out, generator=g)
    return [t.to(dtype) for t in (u, v, weight, bias, grad_out)]


def _bilinear_fwd_bwd(fn, u, v, weight, bias, gate, grad_out):
    inputs = [t.detach().requires_grad_() for t in (u, v, weight, bias)]
    out = fn(*inputs, gate)
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in inputs]


BILINEAR_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_bilinear_matches_reference(device, u, v, weight, bias, gate, grad_out):
    """Output and the four gradients on ``device`` against the float64 reference on the CPU:
    each error at most twice the reference's own in the inputs' dtype, or the dtype's relative
    tolerance of the largest value (grad_weight sums over the batch, in another order)."""
    got = _bilinear_fwd_bwd(bilinear_fusion, *(t.to(device) for t in (u, v, weight, bias)),
                            gate, grad_out.to(device))
    same_dtype = _bilinear_fwd_bwd(reference.bilinear_fusion, u, v, weight, bias, gate, grad_out)
    exact = _bilinear_fwd_bwd(reference.bilinear_fusion,
                              *(t.double() for t in (u, v, weight, bias)), gate,
                              grad_out.double())
    names = ("out", "grad_u", "grad_v", "grad_weight", "grad_bias")
    for name, g, r, e in zip(names, got, same_dtype, exact):
        assert g.device.type == torch.device(device).type, name
        assert g.shape == e.shape and g.dtype == u.dtype, name
        if not e.numel():
            continue
        error = (g.cpu().double() - e).abs().max().item()
        allowed = max(2 * (r.double() - e).abs().max().item(),
                      BILINEAR_RTOL[u.dtype] * max(e.abs().max().item(), 1.0))
        assert error <= allowed, (name, error, allowed)


@pytest.mark.parametrize("batch,in1,in2,out", [
    (8193, 3, 4, 2),  # two row tiles, the second of one row
    # two row tiles x two p blocks (float32: 64 MiB / (8192 x 16 x 4 B) = 128 values of p;
    # float64: 64, so three blocks)
    (8200, 130, 16, 3),
])
@pytest.mark.parametrize("gate", ["none", "first", "second"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bilinear_row_tiles_and_p_blocks(device, batch, in1, in2, out, gate, dtype):
    u, v, weight, bias, grad_out = _bilinear_problem(batch, in1, in2, out, dtype)
    assert_bilinear_matches_reference(device, u, v, weight, bias, gate, grad_out)


@pytest.mark.parametrize("batch,in1,in2,out", [
    (5, 0, 4, 3),  # no p: the bias alone, grad_u empty
    (5, 4, 0, 3),  # no q
    (5, 4, 3, 0),  # no classes: empty output, zero input gradients
    (9000, 0, 4, 2),  # no p over two row tiles
])
@pytest.mark.parametrize("gate", ["none", "first", "second"])
def test_bilinear_empty_dimensions(device, batch, in1, in2, out, gate):
    u, v, weight, bias, grad_out = _bilinear_problem(batch, in1, in2, out, torch.float64)
    assert_bilinear_matches_reference(device, u, v, weight, bias, gate, grad_out)
    got = bilinear_fusion(u.to(device), v.to(device), weight.to(device), bias.to(device), gate)
    # Sums over nothing are exact zeros: the output is the bias (or empty).
    if in1 == 0 or in2 == 0:
        assert torch.equal(got.cpu(), bias.expand(batch, out))


# ---- cross_attention_cosine
def _attention_problem(batch, regions, words, dim, lengths, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(batch, regions, dim, generator=g)
    T = 0.5 * torch.randn(batch, words, dim, generator=g)
    T += V[:, torch.randint(regions, (words,), generator=g)]  # peaked attention
    t_lengths = None if lengths is None else torch.tensor(lengths)
    return V.to(dtype), T.to(dtype), t_lengths, dim**-0.5


def _attention_fwd_bwd(fn, V, T, t_lengths, scale, seed=1):
    V, T = V.detach().requires_grad_(), T.detach().requires_grad_()
    v_bar, t_bar = fn(V, T, t_lengths, scale)
    g = torch.Generator().manual_seed(seed)
    grad_v = torch.randn(v_bar.shape, generator=g, dtype=v_bar.dtype).to(v_bar.device)
    grad_t = torch.randn(t_bar.shape, generator=g, dtype=t_bar.dtype).to(t_bar.device)
    grad_V, grad_T = torch.autograd.grad((v_bar * grad_v).sum() + (t_bar * grad_t).sum(), (V, T))
    return v_bar, t_bar, grad_V, grad_T


def _on(device, V, T, t_lengths, scale):
    return V.to(device), T.to(device), None if t_lengths is None else t_lengths.to(device), scale


@pytest.mark.parametrize("batch,regions,words,dim,lengths", [
    (3, 5, 7, 16, [7, 3, 0]),  # N d <= Kr (d + N): That formed
    (2, 2, 30, 16, [30, 11]),  # the other route: That's dot and norm through the region Gram
    (2, 36, 40, 64, None),
    (1, 1, 1, 1, [1]),
])
def test_attention_float64_forward_and_backward(device, batch, regions, words, dim, lengths):
    problem = _attention_problem(batch, regions, words, dim, lengths)
    got = _attention_fwd_bwd(cross_attention_cosine, *_on(device, *problem))
    want = _attention_fwd_bwd(reference.cross_attention_cosine, *problem)
    for name, a, b in zip(("v_bar", "t_bar", "grad_V", "grad_T"), got, want):
        assert a.dtype == torch.float64 and a.device.type == torch.device(device).type, name
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10, msg=name)


def test_attention_float64_gradcheck(device):
    V, T, _, _ = _attention_problem(2, 4, 5, 6, None)
    V, T = V.to(device).requires_grad_(), T.to(device).requires_grad_()
    for t_lengths in (None, torch.tensor([5, 2], device=device)):
        assert torch.autograd.gradcheck(
            lambda V, T: cross_attention_cosine(V, T, t_lengths, 0.7), (V, T))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_padded_words_are_ignored(device, dtype):
    # NaN, infinities and huge values past t_lengths change nothing and get no gradient.
    V, T, t_lengths, scale = _attention_problem(3, 4, 6, 8, [6, 2, 0], dtype=dtype)
    garbage = T.clone()
    garbage[1, 2:] = float("nan")
    garbage[1, 4, 0] = float("inf")
    garbage[2, :3] = -float("inf")
    garbage[2, 3:] = 1e30
    clean = _attention_fwd_bwd(cross_attention_cosine, *_on(device, V, T, t_lengths, scale))
    dirty = _attention_fwd_bwd(cross_attention_cosine, *_on(device, V, garbage, t_lengths, scale))
    want = _attention_fwd_bwd(reference.cross_attention_cosine, V, T, t_lengths, scale)
    tolerance = {"rtol": 1e-4, "atol": 2e-5} if dtype == torch.float32 else {}
    for a, b, c in zip(dirty, clean, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)  # (GEMMs on another GPU may round apart)
        torch.testing.assert_close(a.cpu(), c, **tolerance)
    padded = torch.arange(6) >= t_lengths[:, None]
    assert (dirty[1].cpu()[padded] == 0).all() and (dirty[3].cpu()[padded] == 0).all()


def test_attention_value_errors_match_the_cpu(device):
    V, T, _, scale = _attention_problem(2, 3, 4, 5, None, dtype=torch.float32)
    V, T = V.to(device), T.to(device)
    nan_V, inf_T, big_V, big_T = V.clone(), T.clone(), V.clone(), T.clone()
    nan_V[1, 2, 0] = float("nan")
    inf_T[0, 1, 3] = float("inf")
    big_V[1, 0] = 1e20  # finite, but its squared norm overflows float32
    big_T[0, 2] = 1e20
    padded_nan = T.clone()
    padded_nan[0, 3] = float("nan")  # past t_lengths[0] = 2: no error
    backward = torch.ops.mmfast._cross_attention_cosine_backward
    grads = (torch.zeros(2, 3, device=device), torch.zeros(2, 4, device=device))

    def lengths(*values):
        return torch.tensor(values, device=device)

    cases = [
        (r"t_lengths values must be in \[0, 4\] \(N = T.size\(1\)\), got values from 1 to 5",
         cross_attention_cosine, V, T, lengths(5, 1)),
        (r"t_lengths values must be in \[0, 4\] \(N = T.size\(1\)\), got values from -1 to 2",
         cross_attention_cosine, V, T, lengths(2, -1)),
        (r"V must be finite, but V\[1, 2\] has a NaN or infinite value",
         cross_attention_cosine, nan_V, T, None),
        (r"T must be finite, but T\[0, 1\] \(a valid word\) has a NaN or infinite value",
         cross_attention_cosine, V, inf_T, lengths(2, 4)),
        (r"the squared norm of V\[1, 0\] overflows float32", cross_attention_cosine, big_V, T,
         None),
        (r"the squared norm of T\[0, 2\] overflows float32", cross_attention_cosine, V, big_T,
         None),
        (r"the squared norm of V\[1, 0\] overflows float64", cross_attention_cosine,
         big_V.double() * 1e150, T.double(), None),
        # The backward op reads V and T again: it checks them as the forward does.
        (r"cross_attention_cosine_backward: t_lengths values must be in \[0, 4\] .*from 1 to 5",
         backward, *grads, V, T, lengths(5, 1)),
        (r"V must be finite, but V\[1, 2\] has a NaN or infinite value",
         backward, *grads, nan_V, T, None),
    ]
    for pattern, fn, *args in cases:
        assert_raises_as_on_cpu(ValueError, pattern, fn, *args, scale)
    v_bar, t_bar = cross_attention_cosine(V, padded_nan, lengths(3, 4), scale)
    assert torch.isfinite(v_bar).all() and torch.isfinite(t_bar).all()
    # The reference backend checks with the kernels' messages.
    with mmfast.backend("reference"):
        assert_raises_as_on_cpu(ValueError, r"V must be finite, but V\[1, 2\]",
                                cross_attention_cosine, nan_V, T, None, scale)
        assert_raises_as_on_cpu(ValueError, r"t_lengths values must be in \[0, 4\]",
                                cross_attention_cosine, V, T, lengths(5, 1), scale)


# ---- CACNet
def _cacnet_problem(activation="relu", dtype=torch.float32, batch=13, seed=0):
    torch.manual_seed(seed)
    model = CACNet(21, 17, 18, 11, activation).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x_img = torch.randn(batch, 21, generator=g, dtype=dtype)
    x_txt = torch.randn(batch, 17, generator=g, dtype=dtype)
    targets = (torch.rand(batch, 11, generator=g) < 0.3).to(dtype)
    return model, x_img, x_txt, targets


CACNET_TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}


def _named_params(params):
    return dict(zip(cacnet_ops.PARAM_NAMES, params))


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cacnet_forward_and_backward_match_reference(device, activation, dtype):
    # cacnet_forward and its backward op (_cacnet_forward_backward) on the device, every
    # activation's slope, inputs' gradients included.
    model, x_img, x_txt, _ = _cacnet_problem(activation, dtype)
    rtol, atol = CACNET_TOLERANCES[dtype]
    g = torch.Generator().manual_seed(9)
    grad_logits = torch.randn(13, 11, generator=g, dtype=dtype)

    def run(fn, device):
        inputs = [t.detach().to(device).requires_grad_()
                  for t in (x_img, x_txt, *model.op_params())]
        logits = fn(inputs[0], inputs[1], inputs[2:])
        logits.backward(grad_logits.to(device))
        return [logits.detach()] + [t.grad for t in inputs]

    got = run(lambda a, b, p: cacnet_ops.cacnet_forward(a, b, p, activation), device)
    want = run(lambda a, b, p: cacnet_reference.full_logits(a, b, _named_params(p), activation),
               "cpu")
    names = ("logits", "x_img", "x_txt", *cacnet_ops.PARAM_NAMES)
    for name, a, b in zip(names, got, want):
        assert a.dtype == dtype and a.device.type == torch.device(device).type, name
        torch.testing.assert_close(a.cpu(), b, rtol=rtol, atol=atol, msg=name)


def _phase_ops_against_reference(device, model, x_img, x_txt, targets, activation, rtol, atol,
                                 finite=False):
    """Every phase op on the device against autograd over the literal reference on the CPU:
    losses, beta and gradients (``finite``: each also finite)."""
    params = [p.detach().to(device) for p in model.op_params()]
    named = {n: p.detach().requires_grad_() for n, p in _named_params(model.op_params()).items()}
    on = [t.to(device) for t in (x_img, x_txt, targets)]

    def close(got, want, name):
        assert got.device.type == torch.device(device).type, name
        if finite:
            assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.cpu(), want.detach(), rtol=rtol, atol=atol, msg=name)

    def close_grads(got, objective, what):
        want = cacnet_reference.gradients(objective, named)
        assert set(got) == set(want), what
        for name in want:
            close(got[name], want[name], f"{what} {name}")

    step = cacnet_ops.cacnet_phase1(*on, params, activation)
    image, text = cacnet_reference.pair_losses("passive", x_img, x_txt, targets, named,
                                               activation)
    close(step.image_loss, image, "phase1 image loss")
    close(step.text_loss, text, "phase1 text loss")
    close_grads(step.grads, image.mean() + text.mean(), "phase1")

    forward = cacnet_ops.cacnet_phase2_forward(*on, params, activation)
    full = cacnet_reference.per_sample_loss(
        cacnet_reference.full_logits(x_img, x_txt, named, activation), targets)
    close(forward.full_loss, full, "full loss")
    close(forward.passive_image_loss, image, "phase2 image loss")
    close(forward.passive_text_loss, text, "phase2 text loss")
    close(forward.beta, cacnet_reference.beta(full, image, text), "beta")
    close_grads(cacnet_ops.cacnet_phase2_full_backward(*on, params, forward, activation),
                full.mean(), "case 1")
    for train_output in (True, False):
        cross = cacnet_ops.cacnet_phase2_cross_active(*on, params, forward, activation,
                                                      train_output)
        image, text = cacnet_reference.pair_losses("cross_active", x_img, x_txt, targets, named,
                                                   activation, train_output)
        close(cross.image_loss, image, "case 2 image loss")
        close(cross.text_loss, text, "case 2 text loss")
        close_grads(cross.grads, image.mean() + text.mean(), f"case 2 ({train_output})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cacnet_sigmoid_phase_ops_match_reference(device, dtype):
    # The sigmoid's slope out * (1 - out) in every phase's backward.
    model, x_img, x_txt, targets = _cacnet_problem("sigmoid", dtype)
    _phase_ops_against_reference(device, model, x_img, x_txt, targets, "sigmoid",
                                 *CACNET_TOLERANCES[dtype])


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cacnet_saturated_bce_is_finite(device, activation, dtype):
    # Output biases of +-100 (and +-200) push every logit to about +-100, on both sides of
    # each target: exp(z) would overflow float32 at 89; the stable BCE stays finite and equal
    # to the reference's, and so do the gradients.
    model, x_img, x_txt, targets = _cacnet_problem(activation, dtype)
    with torch.no_grad():
        model.b_y.copy_(torch.tensor([100.0, -100.0] * 5 + [200.0]))
        model.b_y[3] = -200.0
    logits = cacnet_ops.cacnet_forward(*(t.to(device) for t in (x_img, x_txt)),
                                       [p.detach().to(device) for p in model.op_params()],
                                       activation)
    assert (logits.abs() > 90).all()
    rtol, atol = CACNET_TOLERANCES[dtype]
    # The losses are ~50 per sample: tolerances relative to them.
    _phase_ops_against_reference(device, model, x_img, x_txt, targets, activation, rtol,
                                 atol * 100, finite=True)


def test_cacnet_value_errors_match_the_cpu(device):
    model, x_img, x_txt, targets = _cacnet_problem()
    params = [p.detach().to(device) for p in model.op_params()]
    x_img, x_txt, targets = x_img.to(device), x_txt.to(device), targets.to(device)
    nan_img, inf_txt, two_targets, half_targets = (x_img.clone(), x_txt.clone(), targets.clone(),
                                                   targets.clone())
    nan_img[5, 1] = float("nan")
    inf_txt[9, 0] = -float("inf")
    two_targets[12, 3] = 2.0
    half_targets[4, 2] = 0.5
    nan_targets = targets.clone()
    nan_targets[7, 0] = float("nan")
    finite = "must be finite, but row {} has a NaN or infinite value"
    binary = "targets must hold only 0 and 1, but row {} has another value"
    # The ops that take new inputs check them; phase 2's backward ops take phase2_forward's,
    # checked there, and do not check again.
    ops = {"cacnet_phase1": cacnet_ops.cacnet_phase1,
           "cacnet_phase2_forward": cacnet_ops.cacnet_phase2_forward}
    for name, fn in ops.items():
        for args, message in (
            ((nan_img, x_txt, targets), "x_img " + finite.format(5)),
            ((x_img, inf_txt, targets), "x_txt " + finite.format(9)),
            ((x_img, x_txt, two_targets), binary.format(12)),
            ((x_img, x_txt, half_targets), binary.format(4)),
            ((x_img, x_txt, nan_targets), binary.format(7)),
        ):
            assert_raises_as_on_cpu(ValueError, re.escape(f"{name}: {message}"),
                                    fn, *args, params)
    for backend in ("fused", "reference"):
        with mmfast.backend(backend):
            assert_raises_as_on_cpu(ValueError, re.escape("cacnet_forward: x_img " +
                                                          finite.format(5)),
                                    cacnet_ops.cacnet_forward, nan_img, x_txt, params)
            assert_raises_as_on_cpu(ValueError, re.escape("cacnet_forward: x_txt " +
                                                          finite.format(9)),
                                    cacnet_ops.cacnet_forward, x_img, inf_txt, params)
