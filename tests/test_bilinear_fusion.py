"""bilinear_fusion (DESIGN 2.2) against its reference and torch.nn.functional.bilinear, its
gradients, torch.compile, mmfast.nn.Bilinear, and bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import mmfast
from mmfast import reference
from mmfast.ops import bilinear_fusion

GATES = ["none", "first", "second"]
TOLERANCES = {  # dtype: (rtol, atol) on outputs and gradients of unit-scale problems
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float64: (1e-10, 1e-10),
}


def _problem(batch, in1, in2, out, bias=True, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    # Weight scaled like torch.nn.Bilinear's initialization keeps outputs of order 1.
    scale = in1**-0.5 if in1 else 1.0
    u = torch.randn(batch, in1, generator=g)
    v = torch.randn(batch, in2, generator=g)
    weight = (torch.rand(out, in1, in2, generator=g) * 2 - 1) * scale
    b = torch.randn(out, generator=g) if bias else None
    tensors = (u, v, weight, b)
    return tuple(t.to(device, dtype) if t is not None else None for t in tensors)


def _grads(function, u, v, weight, bias, gate, grad_out):
    inputs = [t.detach().requires_grad_() for t in (u, v, weight)]
    if bias is not None:
        inputs.append(bias.detach().requires_grad_())
    out = function(*inputs[:3], inputs[3] if bias is not None else None, gate)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in inputs]


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def assert_as_accurate_as_reference(u, v, weight, bias, gate, grad_out):
    """The output's and every gradient's largest error against a float64 reference: at most
    twice that of the reference in the inputs' own dtype (flash-attention's rule), or the dtype's
    relative tolerance of the largest value. (grad_W sums over the batch, and mmfast sums in
    another order than the einsum, so a fixed absolute tolerance would not scale.)"""
    got = _grads(bilinear_fusion, u, v, weight, bias, gate, grad_out)
    same_dtype = _grads(reference.bilinear_fusion, u, v, weight, bias, gate, grad_out)
    exact = _grads(reference.bilinear_fusion, *(t.double() if t is not None else None
                                                for t in (u, v, weight, bias)),
                   gate, grad_out.double())
    for g, r, e in zip([got[0], *got[1]], [same_dtype[0], *same_dtype[1]], [exact[0], *exact[1]]):
        assert g.shape == e.shape and g.dtype == u.dtype
        error = (g.double() - e).abs().max().item() if e.numel() else 0.0
        reference_error = (r.double() - e).abs().max().item() if e.numel() else 0.0
        scale = e.abs().max().item() if e.numel() else 0.0
        allowed = max(2 * reference_error, TOLERANCES[u.dtype][0] * max(scale, 1.0))
        assert error <= allowed, (error, reference_error, scale)


SHAPES = [  # batch, P, Q, K
    (1, 5, 7, 3),
    (3, 1, 4, 2),
    (9, 6, 1, 1),
    (37, 20, 20, 50),
    (70, 13, 29, 11),
    (300, 40, 24, 7),
]


@pytest.mark.parametrize("batch,in1,in2,out", SHAPES)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_match_reference(device, batch, in1, in2, out, gate, bias):
    u, v, weight, b = _problem(batch, in1, in2, out, bias, device=device)
    grad_out = torch.randn(batch, out, device=device)
    assert_as_accurate_as_reference(u, v, weight, b, gate, grad_out)


@pytest.mark.parametrize("intra_op_threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_shares_tiles_and_slices_match_reference(intra_op_threads, dtype):
    # 1100 rows at P = Q = 40: several 512-row tiles and two p blocks per tile on one thread; on
    # two and three, a share of the rows (grad_u, grad_v) and of p (grad_W) per thread.
    u, v, weight, b = _problem(1100, 40, 40, 5, dtype=dtype)
    grad_out = torch.randn(1100, 5, dtype=dtype)
    assert_as_accurate_as_reference(u, v, weight, b, "first", grad_out)


@pytest.mark.parametrize("batch,in1,in2,out", [
    (65, 120, 120, 13),  # two chunks of p, a partial block of classes, a partial block of rows
    (33, 7, 5, 24),  # whole blocks of classes only
    (5, 0, 4, 3),  # sums over no p: the bias alone
    (5, 4, 0, 3),  # and over no q
    (5, 4, 3, 0),  # no classes
])
@pytest.mark.parametrize("intra_op_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_chunks_and_empty_dimensions_match_reference(batch, in1, in2, out,
                                                           intra_op_threads, dtype):
    # The CPU forward's register tiles cover blocks of rows and of classes, and its weights go
    # through the cache in chunks of p; these shapes reach each edge of that blocking.
    u, v, weight, b = _problem(batch, in1, in2, out, dtype=dtype)
    grad_out = torch.randn(batch, out, dtype=dtype)
    assert_as_accurate_as_reference(u, v, weight, b, "second", grad_out)


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_functional_bilinear(device, bias):
    u, v, weight, b = _problem(64, 17, 23, 19, bias, device=device)
    grad_out = torch.randn(64, 19, device=device)
    got, got_grads = _grads(bilinear_fusion, u, v, weight, b, "none", grad_out)
    want, want_grads = _grads(lambda *a: F.bilinear(*a[:4]), u, v, weight, b, "none", grad_out)
    assert_close(got, want, torch.float32)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, torch.float32)


def test_gates_apply_a_sigmoid_to_their_input():
    u, v, weight, b = _problem(16, 8, 5, 4)
    torch.testing.assert_close(bilinear_fusion(u, v, weight, b, "first"),
                               F.bilinear(torch.sigmoid(u), v, weight, b))
    torch.testing.assert_close(bilinear_fusion(u, v, weight, b, "second"),
                               F.bilinear(u, torch.sigmoid(v), weight, b))


def test_empty_batch(device):
    u, v, weight, b = _problem(0, 6, 4, 3, device=device)
    got, (gu, gv, gw, gb) = _grads(bilinear_fusion, u, v, weight, b, "first",
                                   torch.empty(0, 3, device=device))
    assert got.shape == (0, 3)
    assert gu.shape == (0, 6) and gv.shape == (0, 4)
    assert torch.equal(gw, torch.zeros_like(gw)) and torch.equal(gb, torch.zeros_like(gb))


@pytest.mark.parametrize("gate", GATES)
def test_non_contiguous_inputs(device, gate):
    u, v, weight, b = _problem(80, 24, 18, 9, device=device)
    strided_u = u[::2, ::2]  # [40, 12], both strides > 1
    column_major_v = v[:40].t().contiguous().t()  # [40, 18]
    weight_t = weight[:, ::2].transpose(1, 2).contiguous().transpose(1, 2)  # [9, 12, 18]
    bias_strided = torch.randn(18, device=device)[::2]
    grad_out = torch.randn(40, 9, device=device)
    for t in (strided_u, column_major_v, weight_t, bias_strided):
        assert not t.is_contiguous()
    got, got_grads = _grads(bilinear_fusion, strided_u, column_major_v, weight_t, bias_strided,
                            gate, grad_out)
    want, want_grads = _grads(reference.bilinear_fusion, strided_u.contiguous(),
                              column_major_v.contiguous(), weight_t.contiguous(),
                              bias_strided.contiguous(), gate, grad_out)
    assert_close(got, want, torch.float32)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate", ["none", "second"])
def test_half_precision(device, dtype, gate):
    u, v, weight, b = _problem(50, 32, 16, 12, dtype=dtype, device=device)
    grad_out = torch.randn(50, 12, device=device, dtype=dtype)
    got, got_grads = _grads(bilinear_fusion, u, v, weight, b, gate, grad_out)
    assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)
    # Reference in float32 from the same rounded inputs: only the output rounding differs.
    want, want_grads = _grads(reference.bilinear_fusion, u.float(), v.float(), weight.float(),
                              b.float(), gate, grad_out.float())
    assert_close(got, want, dtype)
    for g, w in zip(got_grads, want_grads):
        rtol, atol = TOLERANCES[dtype]
        # grad_weight and grad_bias sum over the batch: scale the tolerance with their magnitude.
        torch.testing.assert_close(g.float(), w, rtol=rtol, atol=atol * w.abs().max().item())


@pytest.mark.parametrize("gate", GATES)
def test_gradcheck_float64(device, gate):
    u, v, weight, b = _problem(5, 4, 3, 2, dtype=torch.float64, device=device)
    inputs = tuple(t.requires_grad_() for t in (u, v, weight, b))
    assert torch.autograd.gradcheck(lambda *t: bilinear_fusion(*t, gate=gate), inputs)


@pytest.mark.parametrize("gate", GATES)
def test_opcheck(device, gate):
    u, v, weight, b = _problem(21, 7, 5, 4, device=device)
    opcheck(torch.ops.mmfast.bilinear_fusion.default, (u, v, weight, b, gate))
    opcheck(torch.ops.mmfast.bilinear_fusion.default, (u, v, weight, None, gate))
    args = tuple(t.clone().requires_grad_() for t in (u, v, weight, b))
    opcheck(torch.ops.mmfast.bilinear_fusion.default, (*args, gate))
    grad_out = torch.randn(21, 4, device=device)
    opcheck(torch.ops.mmfast._bilinear_fusion_backward.default, (grad_out, u, v, weight, gate))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, backend):
    u, v, weight, b = _problem(32, 10, 6, 5, device=device)

    def classify(u, v, weight, b):
        return torch.log_softmax(bilinear_fusion(u * 2.0, v, weight, b, "first"), dim=1)

    compiled = torch.compile(classify, fullgraph=True, backend=backend)
    grad_out = torch.randn(32, 5, device=device)
    got, got_grads = _grads(lambda u, v, w, b, _: compiled(u, v, w, b), u, v, weight, b, None,
                            grad_out)
    want, want_grads = _grads(lambda u, v, w, b, _: classify(u, v, w, b), u, v, weight, b, None,
                              grad_out)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_nan_propagates_to_its_row_only():
    u, v, weight, b = _problem(8, 5, 4, 3)
    u[2, 1] = float("nan")
    v[5, 0] = float("inf")
    out = bilinear_fusion(u, v, weight, b)
    assert out[2].isnan().all() and not out[5].isfinite().any()
    finite_rows = [0, 1, 3, 4, 6, 7]
    assert out[finite_rows].isfinite().all()
    torch.testing.assert_close(out[finite_rows], F.bilinear(u, v, weight, b)[finite_rows])


def test_reference_backend_switch(monkeypatch):
    u, v, weight, b = _problem(4, 3, 2, 2)
    calls = []
    monkeypatch.setattr(reference, "bilinear_fusion", lambda *a: calls.append(a) or a[0])
    with mmfast.backend("reference"):
        bilinear_fusion(u, v, weight, b, "second")
    assert len(calls) == 1 and calls[0][4] == "second"
    bilinear_fusion(u, v, weight, b)
    assert len(calls) == 1


def test_bad_inputs():
    u, v, weight, b = _problem(6, 4, 3, 2)
    with pytest.raises(TypeError, match="u must be a torch.Tensor, got list"):
        bilinear_fusion([[1.0]], v, weight)
    with pytest.raises(TypeError, match="u must be one of float32, .* got torch.int64"):
        bilinear_fusion(u.long(), v, weight)
    with pytest.raises(TypeError, match=r"v must have the dtype of the first input \(torch.float32\), got torch.float64"):
        bilinear_fusion(u, v.double(), weight)
    with pytest.raises(TypeError, match="weight must have the dtype of the first input"):
        bilinear_fusion(u, v, weight.half())
    with pytest.raises(TypeError, match="bias must have the dtype of the first input"):
        bilinear_fusion(u, v, weight, b.double())
    with pytest.raises(ValueError, match=r"u must have 2 dimensions, got shape \(24,\)"):
        bilinear_fusion(u.flatten(), v, weight)
    with pytest.raises(ValueError, match=r"weight must have 3 dimensions, got shape \(2, 12\)"):
        bilinear_fusion(u, v, weight.flatten(1))
    with pytest.raises(ValueError, match=r"v must have the batch size of u \(6\), got shape \(5, 3\)"):
        bilinear_fusion(u, v[:5], weight)
    with pytest.raises(ValueError, match=r"weight must have shape \[K, 4, 3\] to match u and v, got \(2, 3, 3\)"):
        bilinear_fusion(u, v, weight[:, :3])
    with pytest.raises(ValueError, match=r"weight must have shape \[K, 4, 2\] to match u and v, got \(2, 4, 3\)"):
        bilinear_fusion(u, v[:, :2], weight)
    with pytest.raises(ValueError, match=r"bias must have shape \[2\] to match weight, got \(3,\)"):
        bilinear_fusion(u, v, weight, torch.zeros(3))
    with pytest.raises(ValueError, match=r"bias must have 1 dimensions, got shape \(1, 2\)"):
        bilinear_fusion(u, v, weight, b[None])
    with pytest.raises(ValueError, match=r"gate must be one of \('none', 'first', 'second'\), got 'both'"):
        bilinear_fusion(u, v, weight, b, gate="both")
    with pytest.raises(ValueError, match="weight must be on cpu like the first input, got meta"):
        bilinear_fusion(u, v, weight.to("meta"))


def test_direct_op_calls_are_checked_by_the_kernel():
    # torch.ops.mmfast.* skips the Python checks; the kernels still refuse what they cannot run.
    u, v, weight, b = _problem(6, 4, 3, 2)
    op = torch.ops.mmfast.bilinear_fusion
    with pytest.raises(ValueError, match=r"weight must have shape \[K, 4, 3\] to match u and v"):
        op(u, v, weight[:, :3], b, "none")
    with pytest.raises(ValueError, match=r"bias must have shape \[2\]"):
        op(u, v, weight, b[:1], "none")
    with pytest.raises(TypeError, match="v must have the dtype of u"):
        op(u, v.double(), weight, b, "none")
    with pytest.raises(ValueError, match="gate must be 'none', 'first' or 'second', got 'up'"):
        op(u, v, weight, b, "up")
    with pytest.raises(ValueError, match=r"grad_out must have shape \[6, 2\], got \[6, 3\]"):
        torch.ops.mmfast._bilinear_fusion_backward(torch.ones(6, 3), u, v, weight, "none")


@pytest.mark.parametrize("bias", [True, False])
def test_nn_bilinear_matches_and_loads_torch_state_dicts(bias):
    torch.manual_seed(0)
    theirs = torch.nn.Bilinear(7, 5, 3, bias=bias)
    ours = mmfast.nn.Bilinear(7, 5, 3, bias=bias)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    x1, x2 = torch.randn(2, 4, 7), torch.randn(2, 4, 5)  # leading dimensions, as F.bilinear
    torch.testing.assert_close(ours(x1, x2), theirs(x1, x2))
    theirs.load_state_dict(mmfast.nn.Bilinear(7, 5, 3, bias=bias).state_dict())
    with pytest.raises(ValueError, match="same leading dimensions"):
        ours(x1, x2[:1])


def test_nn_bilinear_initialization_follows_torch():
    torch.manual_seed(3)
    theirs = torch.nn.Bilinear(9, 4, 6)
    torch.manual_seed(3)
    ours = mmfast.nn.Bilinear(9, 4, 6)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


@pytest.mark.parametrize("gate", GATES)
def test_nn_bilinear_fusion(gate):
    module = mmfast.nn.BilinearFusion(6, 4, 3, gate=gate)
    assert f"gate='{gate}'" in repr(module)
    u, v = torch.randn(10, 6), torch.randn(10, 4)
    expected = reference.bilinear_fusion(u, v, module.weight, module.bias, gate)
    torch.testing.assert_close(module(u, v), expected)
    with mmfast.backend("reference"):
        torch.testing.assert_close(module(u, v), expected)
    with pytest.raises(ValueError, match="gate must be one of"):
        mmfast.nn.BilinearFusion(6, 4, 3, gate="sigmoid")


def test_inputs_are_left_untouched():
    # A one-row batch once made the output alias the bias; nothing may write to the inputs.
    u, v, weight, b = _problem(1, 5, 7, 3)
    copies = [t.clone() for t in (u, v, weight, b)]
    bilinear_fusion(u, v, weight, b, "first")
    for t, c in zip((u, v, weight, b), copies):
        assert torch.equal(t, c)


def test_double_backward_is_refused_clearly():
    """The backward kernel has no derivative: create_graph=True says so instead of an unclear
    mm() error or silently constant second derivatives."""
    u, v = torch.randn(3, 4, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    weight = torch.randn(2, 4, 5, requires_grad=True)
    out = mmfast.ops.bilinear_fusion(u, v, weight)
    with pytest.raises(NotImplementedError, match="bilinear_fusion: double backward"):
        torch.autograd.grad(out.sum(), u, create_graph=True)
    (grad_u,) = torch.autograd.grad(mmfast.ops.bilinear_fusion(u, v, weight).sum(), u)
    assert grad_u.shape == u.shape  # the first derivative still works


@pytest.mark.cuda
def test_mixed_devices_name_the_argument():
    """u on the CPU beside CUDA inputs is an argument error, not a failed CUDA guard."""
    u, v = torch.randn(4, 3), torch.randn(4, 5, device="cuda")
    weight = torch.randn(2, 3, 5, device="cuda")
    with pytest.raises(ValueError, match="v must be on cpu like u, got cuda:0"):
        torch.ops.mmfast.bilinear_fusion(u, v, weight, None, "none")
    with pytest.raises(ValueError, match="must be on cpu like u, got cuda:0"):
        torch.ops.mmfast._bilinear_fusion_backward(torch.ones(4, 2, device="cuda"), u, v, weight,
                                                   "none")
