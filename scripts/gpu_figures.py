"""Per-op figures on one device, as one JSON: for each fused op (forward, and forward + backward
where it has one) its time, achieved FLOP/s and bytes/s, the fraction of its roofline bound, and
its reference's time eager and under ``torch.compile``.

    python scripts/gpu_figures.py --device cuda --out figures.json   # what gpu_check.sh runs
    python scripts/gpu_figures.py --device cpu --quick --no-compile  # a smoke run anywhere

The roofline is the device's, measured here rather than read from a data sheet: the peak FLOP/s
of a large float32 matmul (TF32 off: the ops compute in float32) and the bandwidth of a large
device-to-device copy. An op's bound is ``max(flops / peak FLOP/s, bytes / bandwidth)``; its
fraction of the roofline is that bound over its measured time (1.0: at the machine's limit).
FLOPs and bytes are the op's essential work: multiply-adds of its math and one read of each
input and one write of each output.
"""

import argparse
import json
import statistics
import time

import torch

import mmfast
from mmfast import ops, reference


def _timer(device: torch.device, function, repeats: int) -> float:
    """The median seconds of ``function()`` over ``repeats`` runs after two warm-ups."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peaks(device: torch.device, quick: bool) -> dict:
    """Measured peak float32 FLOP/s (matmul) and bytes/s (copy) of ``device``."""
    size = 1024 if quick else 8192
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    matmul = _timer(device, lambda: a @ b, 3 if quick else 10)
    source = torch.empty((2**24 if quick else 2**28) // 4, device=device)
    target = torch.empty_like(source)
    copy = _timer(device, lambda: target.copy_(source), 3 if quick else 10)
    return {"flops_per_s": 2 * size**3 / matmul, "bytes_per_s": 2 * source.numel() * 4 / copy}


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def cases(device: torch.device, quick: bool):
    """``(name, fused, reference, flops, bytes)`` per op and pass: ``fused`` and ``reference``
    take no arguments and run the op (forward, or forward and backward)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, grad=False):
        return torch.randn(*shape, device=device, generator=generator).requires_grad_(grad)

    # pq_encode: distances to every centroid of every subspace
    batch, dim, subspaces, centroids = (4096, 128, 8, 64) if quick else (65536, 512, 8, 256)
    x, codebooks = randn(batch, dim), randn(subspaces, centroids, dim // subspaces)
    codes = torch.empty(batch, subspaces, dtype=torch.uint8)
    yield ("pq_encode", lambda: ops.pq_encode(x, codebooks),
           lambda: reference.pq_encode(x, codebooks), 2 * batch * centroids * dim,
           _nbytes(x, codebooks, codes))

    # bilinear_fusion: K bilinear forms of [B, P] x [B, Q]
    batch, p, q, k = (512, 32, 32, 16) if quick else (8192, 100, 100, 101)
    u, v, weight, bias = randn(batch, p, grad=True), randn(batch, q, grad=True), \
        randn(k, p, q, grad=True), randn(k, grad=True)
    out = torch.empty(batch, k)
    forward_flops = 2 * batch * k * p * q
    yield ("bilinear_fusion forward", lambda: ops.bilinear_fusion(u, v, weight, bias),
           lambda: reference.bilinear_fusion(u, v, weight, bias), forward_flops,
           _nbytes(u, v, weight, bias, out))

    def both(function, *args):
        def run():
            result = function(*args)
            outputs = result if isinstance(result, tuple) else (result,)
            torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        return run

    # backward: the gradients of u, v and the weight, each another pass of the same size
    yield ("bilinear_fusion forward+backward", both(ops.bilinear_fusion, u, v, weight, bias),
           both(reference.bilinear_fusion, u, v, weight, bias), 3 * forward_flops,
           2 * _nbytes(u, v, weight, bias, out))

    # cross_attention_cosine: S = V T^T, softmax both ways, V_hat = S T, T_hat = S^T V
    batch, regions, words, width = (32, 16, 12, 64) if quick else (512, 36, 32, 768)
    V, T = randn(batch, regions, width, grad=True), randn(batch, words, width, grad=True)
    lengths = torch.full((batch,), words, dtype=torch.long, device=device)
    forward_flops = 6 * batch * regions * words * width
    outputs = torch.empty(batch, regions + words)
    yield ("cross_attention_cosine forward",
           lambda: ops.cross_attention_cosine(V, T, lengths),
           lambda: reference.cross_attention_cosine(V, T, lengths), forward_flops,
           _nbytes(V, T, lengths, outputs))
    yield ("cross_attention_cosine forward+backward",
           both(ops.cross_attention_cosine, V, T, lengths),
           both(reference.cross_attention_cosine, V, T, lengths), 3 * forward_flops,
           2 * _nbytes(V, T, outputs))

    # CACNet's full network: [x', x''] -> hidden 1 -> hidden 2 -> logits, in its subsections
    batch, image_dim, text_dim, hidden, classes = (256, 32, 32, 64, 16) if quick else \
        (4096, 300, 300, 600, 300)
    model = mmfast.nn.CACNet(image_dim, text_dim, hidden, classes).to(device)
    x_img, x_txt = randn(batch, image_dim), randn(batch, text_dim)
    params = model.op_params()
    flops = sum(2 * batch * p.numel() for p in params if p.dim() == 2)
    yield ("cacnet forward", lambda: ops.cacnet.cacnet_forward(x_img, x_txt, params),
           lambda: reference.cacnet.full_logits(x_img, x_txt, dict(zip(
               ops.cacnet.PARAM_NAMES, params))),
           flops, _nbytes(x_img, x_txt, *params) + batch * classes * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="gpu_figures.json")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile of the references")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 3 if args.quick else 20
    roof = peaks(device, args.quick)
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "mmfast": mmfast.__version__, "peaks": roof,
               "ops": {}}
    for name, fused, eager, flops, nbytes in cases(device, args.quick):
        seconds = _timer(device, fused, repeats)
        bound = max(flops / roof["flops_per_s"], nbytes / roof["bytes_per_s"])
        row = {"seconds": seconds, "flops_per_s": flops / seconds,
               "bytes_per_s": nbytes / seconds, "roofline_fraction": bound / seconds,
               "bound": "compute" if flops / roof["flops_per_s"] > nbytes / roof["bytes_per_s"]
               else "memory",
               "reference_eager_seconds": _timer(device, eager, repeats)}
        if not args.no_compile:
            compiled = torch.compile(eager)
            row["reference_compiled_seconds"] = _timer(device, compiled, repeats)
            row["speedup_vs_compiled_reference"] = row["reference_compiled_seconds"] / seconds
        figures["ops"][name] = row
        print(f"{name:<42} {seconds * 1e3:9.3f} ms  {row['flops_per_s'] / 1e12:7.2f} TFLOP/s "
              f"{row['bytes_per_s'] / 1e9:8.1f} GB/s  roofline {row['roofline_fraction']:6.1%}"
              + (f"  vs compiled reference {row['speedup_vs_compiled_reference']:.2f}x"
                 if "speedup_vs_compiled_reference" in row else ""), flush=True)
    with open(args.out, "w") as out:
        json.dump(figures, out, indent=1)
    print(f"figures -> {args.out}")


if __name__ == "__main__":
    main()
