"""bilinear_fusion against torch.nn.functional.bilinear, the einsum reference and torch.compile of
the reference, on the shapes of Kiela et al. (DESIGN 3.1: embedding H = 20 or 100, K classes).

    pytest benchmarks/bench_bilinear_fusion.py --benchmark-enable -s

One group per (shape, pass, threads), so pytest-benchmark prints the four side by side and the
summary their times as ratios to mmfast's; each run also prints its GFLOP/s (forward 2*B*K*P*Q
flops, forward + backward three times that).

Measured (fwd+bwd, B=1024, quiet 2-core AVX-512 Xeon; ms, then the peer's time over mmfast's):
H=100 K=101: 1 thread 47.6 (F.bilinear 37x, einsum 2.11x, torch.compile 2.08x), 2 threads 23.0
(55x, 2.50x, 2.30x). H=100 K=1000: 392 (48x, 2.87x, 2.62x), 201 (66x, 3.09x, 2.83x).
H=20 K=1000: 17.4 (14.0x, 7.76x, 7.32x), 9.2 (18.5x, 9.11x, 8.71x). The forward alone runs at
150-175 GFLOP/s per core.
"""

import time

import pytest
import torch
import torch.nn.functional as F

from mmfast import ops, reference

BATCH = 1024
# Every (shape, threads) pair is its own graph for dynamo (the thread count is guarded global
# state): 12 of them, past the default limit of 8, after which the torch.compile runs would be
# eager.
torch._dynamo.config.recompile_limit = 32
CASES = [(100, 101), (100, 1000), (20, 1000)]  # (H = P = Q, K)
_compiled_reference = torch.compile(reference.bilinear_fusion)
IMPLEMENTATIONS = {
    "mmfast": ops.bilinear_fusion,
    "F.bilinear": lambda u, v, weight, bias: F.bilinear(u, v, weight, bias),
    "einsum": reference.bilinear_fusion,
    "torch.compile": _compiled_reference,
}


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("hidden,classes", CASES)
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_bilinear_fusion(benchmark, record, name, hidden, classes, direction, threads):
    function = IMPLEMENTATIONS[name]
    g = torch.Generator().manual_seed(0)
    backward = direction == "fwd+bwd"
    u = torch.randn(BATCH, hidden, generator=g).requires_grad_(backward)
    v = torch.randn(BATCH, hidden, generator=g).requires_grad_(backward)
    weight = (torch.rand(classes, hidden, hidden, generator=g) / hidden).requires_grad_(backward)
    bias = torch.randn(classes, generator=g).requires_grad_(backward)
    grad_out = torch.randn(BATCH, classes, generator=g)

    def run():
        out = function(u, v, weight, bias)
        if backward:
            torch.autograd.grad(out, (u, v, weight, bias), grad_out)

    record(benchmark, f"H={hidden} K={classes} B={BATCH} {direction} {threads}thr", name)
    # As many rounds as fit in about a second, 3 to 30: F.bilinear's fwd+bwd at H=100, K=1000
    # takes seconds a call, while the minimum of a few milliseconds-long calls needs more rounds
    # to be steady. A first call warms up (torch.compile compiles there); the second is timed.
    rounds, warmup_rounds = 3, 1
    if not benchmark.disabled:
        run()
        start = time.perf_counter()
        run()
        rounds = int(min(30, max(3, 1.0 / (time.perf_counter() - start))))
        warmup_rounds = 0
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    if benchmark.disabled:  # a plain `pytest` run: the call above was a smoke test
        return
    flops = 2 * BATCH * classes * hidden * hidden * (3 if backward else 1)
    gflops = flops / benchmark.stats.stats.min / 1e9
    benchmark.extra_info["gflops"] = round(gflops, 1)
    print(f"\n{benchmark.group:45s} {name:10s} {benchmark.stats.stats.min * 1e3:9.1f} ms "
          f"{gflops:7.1f} GFLOP/s")
