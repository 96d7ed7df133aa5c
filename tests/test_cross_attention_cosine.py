"""cross_attention_cosine (DESIGN 2.3) against its reference, forward and backward, and bad inputs."""

import pytest
import torch
from torch.library import opcheck

import mmfast
from mmfast import reference
from mmfast.ops import cross_attention_cosine

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}


def _problem(batch, regions, words, dim, lengths="random", dtype=torch.float32, device="cpu",
             seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(batch, regions, dim, generator=g)
    # Words correlated with the regions, so attention is peaked and cosines spread over [-1, 1].
    T = 0.5 * torch.randn(batch, words, dim, generator=g)
    if regions:
        T += V[:, torch.randint(regions, (words,), generator=g)]
    if lengths == "random":
        t_lengths = torch.randint(0, words + 1, (batch,), generator=g)
    elif lengths is None:
        t_lengths = None
    else:
        t_lengths = torch.tensor(lengths)
    if t_lengths is not None:
        t_lengths = t_lengths.to(device)
    scale = 1.0 / dim**0.5
    return V.to(device, dtype), T.to(device, dtype), t_lengths, scale


def _fwd_bwd(fn, V, T, t_lengths, scale, seed=1):
    V = V.detach().requires_grad_()
    T = T.detach().requires_grad_()
    v_bar, t_bar = fn(V, T, t_lengths, scale)
    g = torch.Generator().manual_seed(seed)
    grad_v = torch.randn(v_bar.shape, generator=g).to(v_bar)
    grad_t = torch.randn(t_bar.shape, generator=g).to(t_bar)
    grad_V, grad_T = torch.autograd.grad((v_bar * grad_v).sum() + (t_bar * grad_t).sum(), (V, T))
    return v_bar, t_bar, grad_V, grad_T


SHAPES = [  # batch, Kr, N, d, t_lengths
    (3, 5, 7, 16, "random"),
    (4, 36, 100, 64, "random"),
    (2, 7, 1, 33, None),
    (2, 1, 9, 17, [9, 4]),
    (3, 13, 11, 40, [0, 11, 0]),  # samples without any word
    (5, 36, 32, 48, None),
    (0, 36, 10, 8, None),
]


@pytest.mark.parametrize("batch,regions,words,dim,lengths", SHAPES)
def test_matches_reference(device, batch, regions, words, dim, lengths):
    problem = _problem(batch, regions, words, dim, lengths, device=device)
    got = _fwd_bwd(cross_attention_cosine, *problem)
    want = _fwd_bwd(reference.cross_attention_cosine, *problem)
    for name, a, b in zip(("v_bar", "t_bar", "grad V", "grad T"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    t_lengths = problem[2]
    if t_lengths is not None and batch:
        padded = torch.arange(words, device=device) >= t_lengths[:, None]
        assert (got[1][padded] == 0).all() and (got[3][padded] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    # The flash-attention rule: the op's error against float64 at most twice (plus a tolerance)
    # that of the reference run in the same precision.
    problem = _problem(4, 36, 50, 64, dtype=dtype, device=device)
    exact = _fwd_bwd(reference.cross_attention_cosine,
                     *((x.double() if torch.is_tensor(x) and x.is_floating_point() else x)
                       for x in problem))
    got = _fwd_bwd(cross_attention_cosine, *problem)
    plain = _fwd_bwd(reference.cross_attention_cosine, *problem)
    for a, b, e in zip(got, plain, exact):
        assert a.dtype == dtype
        error, baseline = (a.double() - e).abs().max(), (b.double() - e).abs().max()
        assert error <= 2 * baseline + TOLERANCE[dtype]


def test_gradcheck():
    V, T, _, _ = _problem(2, 4, 5, 6, dtype=torch.float64)
    for t_lengths in (None, torch.tensor([5, 2])):
        assert torch.autograd.gradcheck(
            lambda V, T: cross_attention_cosine(V, T, t_lengths, 0.7),
            (V.requires_grad_(), T.requires_grad_()),
        )


def test_gradient_at_zero_vectors_follows_the_clamp():
    V, T, t_lengths, scale = _problem(2, 5, 6, 8, [6, 3], dtype=torch.float64)
    V[0, 1] = 0.0  # |V| below eps: the clamp is constant there
    T[1, 0] = 0.0
    got = _fwd_bwd(cross_attention_cosine, V, T, t_lengths, scale)
    want = _fwd_bwd(reference.cross_attention_cosine, V, T, t_lengths, scale)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lengths", [None, [4, 0, 2]])
def test_opcheck(device, lengths):
    V, T, t_lengths, scale = _problem(3, 5, 4, 8, lengths, device=device)
    op = torch.ops.mmfast.cross_attention_cosine.default
    opcheck(op, (V, T, t_lengths, scale))
    opcheck(op, (V.requires_grad_(), T.requires_grad_(), t_lengths, scale))
    grads = (torch.randn(3, 5, device=device), torch.randn(3, 4, device=device))
    opcheck(torch.ops.mmfast._cross_attention_cosine_backward.default,
            (*grads, V.detach(), T.detach(), t_lengths, scale))


def test_torch_compile_fullgraph(device):
    V, T, t_lengths, scale = _problem(4, 6, 9, 16, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def score(V, T, t_lengths):
        v_bar, t_bar = cross_attention_cosine(V * 2.0, T, t_lengths, scale)
        return torch.cat([t_bar, v_bar], 1).sum()

    V1, T1 = V.clone().requires_grad_(), T.clone().requires_grad_()
    V2, T2 = V.clone().requires_grad_(), T.clone().requires_grad_()
    score(V1, T1, t_lengths).backward()
    v_bar, t_bar = cross_attention_cosine(V2 * 2.0, T2, t_lengths, scale)
    torch.cat([t_bar, v_bar], 1).sum().backward()
    torch.testing.assert_close(V1.grad, V2.grad)
    torch.testing.assert_close(T1.grad, T2.grad)


def test_non_contiguous_inputs(device):
    V, T, t_lengths, scale = _problem(6, 10, 14, 40, device=device)
    cases = [
        (V[::2, :, ::2], T[::2, :, ::2], t_lengths[::2]),  # inner stride 2
        (V.transpose(1, 2).contiguous().transpose(1, 2), T[:, ::2], t_lengths.clamp(max=7)),
    ]
    for Vs, Ts, lengths in cases:
        assert not Vs.is_contiguous()
        got = _fwd_bwd(cross_attention_cosine, Vs, Ts, lengths, scale)
        want = _fwd_bwd(reference.cross_attention_cosine, Vs.contiguous(), Ts.contiguous(),
                        lengths, scale)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_padding_content_is_ignored():
    V, T, t_lengths, scale = _problem(3, 4, 6, 8, [6, 2, 0])
    garbage = T.clone()
    garbage[1, 2:] = float("nan")
    garbage[2] = 1e3
    for a, b in zip(_fwd_bwd(cross_attention_cosine, V, T, t_lengths, scale),
                    _fwd_bwd(cross_attention_cosine, V, garbage, t_lengths, scale)):
        torch.testing.assert_close(a, b, equal_nan=False)


def test_reference_backend_switch(monkeypatch):
    V, T, t_lengths, scale = _problem(2, 3, 4, 5)
    calls = []
    monkeypatch.setattr(reference, "cross_attention_cosine",
                        lambda *args: calls.append(args) or (None, None))
    with mmfast.backend("reference"):
        cross_attention_cosine(V, T, t_lengths, scale)
    assert len(calls) == 1
    cross_attention_cosine(V, T, t_lengths, scale)
    assert len(calls) == 1


def test_backward_saves_at_most_a_tenth_of_the_reference():
    """Bytes autograd keeps for the backward, beyond the inputs, at the paper's shapes (scaled
    down in d and B to stay fast; every saved tensor scales as B x d or B x Kr x N)."""
    V, T, t_lengths, scale = _problem(8, 36, 100, 256)

    def saved_bytes(fn):
        V_, T_ = V.clone().requires_grad_(), T.clone().requires_grad_()
        inputs = {V_.untyped_storage().data_ptr(), T_.untyped_storage().data_ptr(),
                  t_lengths.untyped_storage().data_ptr()}
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in inputs:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            v_bar, t_bar = fn(V_, T_, t_lengths, scale)
        (v_bar.sum() + t_bar.sum()).backward()
        return sum(storages.values())

    fused = saved_bytes(cross_attention_cosine)
    eager = saved_bytes(reference.cross_attention_cosine)
    assert eager > 0 and fused <= eager / 10, (fused, eager)


def test_bad_inputs():
    V, T, t_lengths, scale = _problem(2, 3, 4, 5)
    with pytest.raises(TypeError, match="V must be one of float32, float16, bfloat16, float64, got torch.int64"):
        cross_attention_cosine(V.long(), T)
    with pytest.raises(TypeError, match="T must be one of float32, got torch.float64"):
        cross_attention_cosine(V, T.double())
    with pytest.raises(ValueError, match=r"V must have 3 dimensions, got shape \(3, 5\)"):
        cross_attention_cosine(V[0], T)
    with pytest.raises(ValueError, match=r"T must have shape \[2, N, 5\] to match V, got \(2, 4, 6\)"):
        cross_attention_cosine(V, torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match=r"T must have shape \[2, N, 5\] to match V, got \(3, 4, 5\)"):
        cross_attention_cosine(V, torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="t_lengths must be one of int64, got torch.int32"):
        cross_attention_cosine(V, T, t_lengths.int())
    with pytest.raises(ValueError, match=r"t_lengths must have shape \[2\], got \(3,\)"):
        cross_attention_cosine(V, T, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="T must be on cpu like the first input, got meta"):
        cross_attention_cosine(V, T.to("meta"))
    with pytest.raises(ValueError, match="t_lengths must be on cpu like the first input, got meta"):
        cross_attention_cosine(V, T, t_lengths.to("meta"))
    with pytest.raises(ValueError, match="scale must be a finite float, got nan"):
        cross_attention_cosine(V, T, None, float("nan"))


def test_bad_values_raise_from_the_kernel():
    V, T, _, scale = _problem(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"t_lengths values must be in \[0, 4\] \(N = T.size\(1\)\), got values from 1 to 5"):
        cross_attention_cosine(V, T, torch.tensor([5, 1]))
    with pytest.raises(ValueError, match=r"t_lengths values must be in \[0, 4\].*from -1 to 2"):
        cross_attention_cosine(V, T, torch.tensor([2, -1]))
    bad = V.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"V must be finite, but V\[1, 2\] has a NaN or infinite value"):
        cross_attention_cosine(bad, T)
    bad = T.clone()
    bad[0, 1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"T must be finite, but T\[0, 1\] \(a valid word\)"):
        cross_attention_cosine(V, bad, torch.tensor([2, 4]))
    # A direct call skips the Python checks; the kernel still refuses mismatched shapes.
    with pytest.raises(ValueError, match=r"T must have shape \[2, N, 5\] to match V"):
        torch.ops.mmfast.cross_attention_cosine(V, T[..., :4], None, scale)
    with pytest.raises(ValueError, match=r"grad_v_bar must have shape \[2, 3\], got \[2, 4\]"):
        torch.ops.mmfast._cross_attention_cosine_backward(
            torch.zeros(2, 4), torch.zeros(2, 4), V, T, None, scale)


def test_double_backward_is_refused_clearly():
    """gradgradcheck used to pass through a silently None second derivative."""
    V, T = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True)
    v_bar, t_bar = mmfast.ops.cross_attention_cosine(V, T)
    with pytest.raises(NotImplementedError, match="cross_attention_cosine: double backward"):
        torch.autograd.grad(v_bar.sum() + t_bar.sum(), V, create_graph=True)


@pytest.mark.parametrize("dtype,magnitude", [(torch.float32, 1e10), (torch.float64, 1e18)])
@pytest.mark.parametrize("scale", [0.37, 3.0])
def test_large_finite_inputs_with_a_scale_stay_finite(device, dtype, magnitude, scale):
    """The softmax shift and the exponent used to round scale * V.T differently (an FMA in one
    of them), and exp of the difference overflowed: NaN where the reference is finite."""
    V, T, _, _ = _problem(3, 5, 7, 16, None, dtype=dtype, device=device)
    V = V * magnitude
    got = cross_attention_cosine(V, T, None, scale)
    want = reference.cross_attention_cosine(V, T, None, scale)
    for a, b in zip(got, want):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, atol=TOLERANCE[dtype] * 10, rtol=0)


def test_one_dimensional_gradients_are_as_accurate_as_the_reference():
    """At d = 1 every cosine is +-1 and its exact gradient 0; the word side's attended vector
    often nearly cancels, and its norm taken through the region Gram lost to rounding what the
    gradient then divided by: errors of 5e-3 where the float32 reference has 1e-5."""
    worst = {"fused": 0.0, "reference": 0.0}
    for seed in range(20):
        problem = _problem(3, 5, 7, 1, None, seed=seed)
        exact = _fwd_bwd(reference.cross_attention_cosine, problem[0].double(),
                         problem[1].double(), *problem[2:])
        for name, fn in (("fused", cross_attention_cosine),
                         ("reference", reference.cross_attention_cosine)):
            got = _fwd_bwd(fn, *problem)
            worst[name] = max(worst[name], *(float((g.double() - e).abs().max())
                                             for g, e in zip(got[2:], exact[2:])))
    assert worst["fused"] < 5e-4 and worst["reference"] < 5e-5, worst


@pytest.mark.cuda
def test_mixed_devices_name_the_argument():
    """A CPU tensor beside CUDA ones is refused by name, gradients included (the backward
    kernels would otherwise read a host pointer)."""
    V, T = torch.randn(2, 3, 4, device="cuda"), torch.randn(2, 5, 4, device="cuda")
    with pytest.raises(ValueError, match="T must be on cuda:0 like V, got cpu"):
        torch.ops.mmfast.cross_attention_cosine(V, T.cpu(), None, 1.0)
    for name, grads in (("grad_v_bar", (torch.ones(2, 3), torch.ones(2, 5, device="cuda"))),
                        ("grad_t_bar", (torch.ones(2, 3, device="cuda"), torch.ones(2, 5)))):
        with pytest.raises(ValueError, match=f"{name} must be on cuda:0 like V, got cpu"):
            torch.ops.mmfast._cross_attention_cosine_backward(*grads, V, T, None, 1.0)
