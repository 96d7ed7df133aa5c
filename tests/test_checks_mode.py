"""``mmfast.set_checks``: "full" checks values, "shapes" skips the value checks that cost a pass
over the data or a device sync, index ranges are checked in both, and a CUDA stream that
captures a graph gets the "shapes" behaviour on its own."""

import subprocess
import sys

import pytest
import torch

import mmfast
from mmfast import ops
from mmfast.ops.cacnet import PARAM_NAMES, param_shapes

BACKENDS = ("fused", "reference")


def _cacnet_inputs(device, classes=3):
    generator = torch.Generator().manual_seed(0)
    x_img, x_txt = torch.randn(4, 5, generator=generator), torch.randn(4, 6, generator=generator)
    shapes = param_shapes(5, 6, 4, classes)
    params = [torch.randn(shapes[name], generator=generator) * 0.3 for name in PARAM_NAMES]
    targets = torch.zeros(4, classes)
    targets[:, 0] = 1
    return [t.to(device) for t in (x_img, x_txt, targets)] + [[p.to(device) for p in params]]


def _pq_with_nan_codebooks(device):
    codebooks = torch.randn(2, 16, 4, device=device)
    codebooks[1, 3, 2] = float("nan")
    return ops.pq_encode(torch.randn(5, 8, device=device), codebooks)


def _pq_with_nan_x_and_perm(device):
    """The bad value sits in a column perm does not gather: only the full check, a pass of its
    own over x, sees it (the CPU kernel checks what it gathers at no cost, in every mode)."""
    x = torch.randn(5, 8, device=device)
    x[3, 7] = float("inf")
    perm = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 6]], device=device)
    return ops.pq_encode(x, torch.randn(2, 16, 4, device=device), perm)


def _cacnet_with_soft_targets(device):
    x_img, x_txt, targets, params = _cacnet_inputs(device)
    targets[2, 1] = 0.5
    return ops.cacnet.cacnet_phase1(x_img, x_txt, targets, params)


def _ova_with_soft_labels(device):
    embedding, weight = torch.randn(10, 4), torch.zeros(3, 4)
    labels = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    return ops.fasttext_sgd_(embedding, weight, None, torch.tensor([1, 2, 3]),
                             torch.tensor([0, 2, 3]), None, labels, 0.1, 0.1)


# (op call, message) for values that only a full check catches, on the CPU kernels' path too.
VALUE_CASES = {
    "pq_encode codebooks": (_pq_with_nan_codebooks, "codebooks must be finite"),
    "pq_encode x under perm": (_pq_with_nan_x_and_perm, "x must be finite, but row 3"),
    "cacnet targets": (_cacnet_with_soft_targets, "targets must hold only 0 and 1, but row 2"),
    "fasttext_sgd_ ova labels": (_ova_with_soft_labels, "one-vs-all labels must hold only 0 and 1"),
}


def test_set_checks_takes_the_two_modes_and_names_the_bad_one():
    assert mmfast.get_checks() == "full"
    with pytest.raises(ValueError, match=r"checks must be one of \('full', 'shapes'\), got 'off'"):
        mmfast.set_checks("off")
    assert mmfast.get_checks() == "full"


def test_checks_context_restores_the_mode_after_an_error():
    with pytest.raises(RuntimeError), mmfast.checks("shapes"):
        assert mmfast.get_checks() == "shapes"
        raise RuntimeError
    assert mmfast.get_checks() == "full"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", VALUE_CASES)
def test_full_checks_values_and_shapes_skips_them(case, backend):
    call, message = VALUE_CASES[case]
    with mmfast.backend(backend):
        with pytest.raises(ValueError, match=message):
            call("cpu")
        with mmfast.checks("shapes"):
            call("cpu")  # no error: the values go unchecked


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_skips_the_finite_check_of_the_reference_cross_attention(backend):
    V, T = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    V[1, 2, 0] = float("nan")
    with mmfast.backend(backend), pytest.raises(ValueError, match=r"V\[1, 2\] has a NaN"):
        ops.cross_attention_cosine(V, T)
    if backend == "reference":
        with mmfast.backend(backend), mmfast.checks("shapes"):
            v_bar, _ = ops.cross_attention_cosine(V, T)
        assert torch.isnan(v_bar[1, 2])


def test_shapes_keeps_the_index_range_checks_on_the_cpu():
    """They guard memory: a perm column, a word count, an embedding row past the end."""
    V, T = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with mmfast.checks("shapes"):
        with pytest.raises(ValueError, match=r"perm values must be column indices in \[0, 8\)"):
            ops.pq_encode(torch.randn(5, 8), torch.randn(2, 16, 4),
                          torch.tensor([[0, 1, 2, 3, 4, 5, 6, 8]]))
        with pytest.raises(ValueError, match=r"t_lengths values must be in \[0, 5\]"):
            ops.cross_attention_cosine(V, T, torch.tensor([6, 2]))
        with pytest.raises(IndexError, match=r"indices must be in \[0, 10\)"):
            ops.fasttext_sgd_(torch.randn(10, 4), torch.zeros(3, 4), None,
                              torch.tensor([1, 10]), torch.tensor([0, 1, 2]), None,
                              torch.tensor([0, 1]), 0.1, 0.1)


def test_a_mode_set_before_the_extension_loads_reaches_the_kernels():
    """``mmfast.set_checks`` is torch-free, so it can come first; the kernels read the mode
    when the extension loads."""
    script = (
        "import sys, mmfast\n"
        "mmfast.set_checks('shapes')\n"
        "assert 'mmfast._native' not in sys.modules\n"
        "import torch\n"
        "from mmfast import ops\n"
        "codebooks = torch.randn(2, 16, 4)\n"
        "codebooks[0, 0, 0] = float('nan')\n"
        "ops.pq_encode(torch.randn(3, 8), codebooks)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


# ---- CUDA: no host sync in "shapes", capture works in "full"
def _cuda_calls():
    """One call of each op with device-side value checks, on well-formed CUDA inputs."""
    x_img, x_txt, targets, params = _cacnet_inputs("cuda")
    V = torch.randn(3, 4, 8, device="cuda", requires_grad=True)
    T = torch.randn(3, 6, 8, device="cuda", requires_grad=True)
    lengths = torch.tensor([6, 2, 0], device="cuda")
    x, codebooks = torch.randn(64, 16, device="cuda"), torch.randn(4, 32, 4, device="cuda")
    perm = torch.stack([torch.randperm(16), torch.randperm(16)]).cuda()
    return {
        "pq_encode": lambda: ops.pq_encode(x, codebooks),
        "pq_encode perm": lambda: ops.pq_encode(x, torch.randn(8, 32, 4, device="cuda"), perm),
        "cross_attention_cosine fwd+bwd": lambda: sum(
            out.sum() for out in ops.cross_attention_cosine(V, T, lengths)).backward(),
        "cacnet_forward": lambda: ops.cacnet.cacnet_forward(x_img, x_txt, params),
        "cacnet_phase1": lambda: ops.cacnet.cacnet_phase1(x_img, x_txt, targets, params),
    }


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["pq_encode", "pq_encode perm", "cross_attention_cosine fwd+bwd",
                                  "cacnet_forward", "cacnet_phase1"])
def test_shapes_mode_makes_no_host_sync_on_cuda(name):
    call = _cuda_calls()[name]
    call()  # warm-up: lazy initialisation may synchronize once
    torch.cuda.synchronize()
    with mmfast.checks("shapes"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["pq_encode", "pq_encode perm", "cacnet_forward"])
def test_ops_capture_into_a_cuda_graph_in_full_mode(name):
    """Capture sees the "shapes" behaviour without being asked; replay equals an eager call."""
    call = _cuda_calls()[name]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()  # warm-up on a side stream, as torch.cuda.graph asks
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, call())
    assert mmfast.get_checks() == "full"
