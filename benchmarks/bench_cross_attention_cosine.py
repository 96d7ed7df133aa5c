"""cross_attention_cosine: mmfast vs its eager reference vs torch.compile of the reference.

    pytest benchmarks/bench_cross_attention_cosine.py --benchmark-enable

The paper's shapes: B = 64, Kr = 36 regions, N in {100, 32} words (random lengths, padded to N),
d = 1024, float32; forward alone and forward + backward, 1 and 2 threads. Each run also records
``extra_info["peak_mb"]``: the most memory held at op boundaries on top of the inputs.
"""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mmfast import reference
from mmfast.ops import cross_attention_cosine

BATCH, REGIONS, DIM = 64, 36, 1024

_compiled_reference = torch.compile(reference.cross_attention_cosine)
IMPLS = {
    "mmfast": cross_attention_cosine,
    "reference": reference.cross_attention_cosine,
    "torch.compile": _compiled_reference,
}


@pytest.fixture(scope="module", params=[100, 32], ids=lambda n: f"N{n}")
def inputs(request):
    num_words = request.param
    g = torch.Generator().manual_seed(0)
    V = torch.randn(BATCH, REGIONS, DIM, generator=g)
    T = torch.randn(BATCH, num_words, DIM, generator=g) / DIM**0.5
    t_lengths = torch.randint(1, num_words + 1, (BATCH,), generator=g)
    return V, T, t_lengths, 1.0 / DIM**0.5


def _peak_bytes(fn) -> int:
    """Peak bytes held during ``fn()`` beyond what was held before it, replayed from the
    profiler's per-op net allocations (the CPU allocator keeps no peak statistic). Scratch an op
    allocates and frees inside itself is not seen: mmfast's per-thread workspace (~1 MB at these
    shapes), or the buffers inside one compiled graph."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocated = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        allocated += event.self_cpu_memory_usage  # allocations by the op that made them, frees
        peak = max(peak, allocated)
    return peak


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_cross_attention_cosine(benchmark, record, inputs, threads, mode, impl):
    V, T, t_lengths, scale = inputs
    fn = IMPLS[impl]
    record(benchmark, f"{mode} N={T.shape[1]} {threads}thr", impl)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(V, T, t_lengths, scale)
    else:
        V_, T_ = V.clone().requires_grad_(), T.clone().requires_grad_()

        def run():
            v_bar, t_bar = fn(V_, T_, t_lengths, scale)
            (v_bar.sum() + t_bar.sum()).backward()
            V_.grad = T_.grad = None
    run()  # warm up (and compile)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["peak_mb"] = _peak_bytes(run) / 2**20
