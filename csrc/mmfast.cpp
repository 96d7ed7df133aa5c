// Every mmfast operator schema, in one place, and the pybind11 module that reports build facts.
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fakes and autograd in mmfast/ops/<op>.py.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

TORCH_LIBRARY(mmfast, m) {
  // Each family's fake kernels and autograd live in mmfast/ops/<family>.py; naming the module
  // before its schemas lets torch import it (and check it) when a fake is needed.
  m.set_python_module("mmfast.ops.pq_encode");
  // DESIGN 2.1. codebooks [R*M, C, D/M]; perm [R, D] or None; codes [B, R*M] (uint8/int16/int32 by C).
  m.def("pq_encode(Tensor x, Tensor codebooks, Tensor? perm) -> Tensor");

  m.set_python_module("mmfast.ops.bilinear_fusion");
  // DESIGN 2.2. u [B, P], v [B, Q], weight [K, P, Q], bias [K] or None; gate "none", "first"
  // (sigmoid on u) or "second" (sigmoid on v); out [B, K].
  m.def("bilinear_fusion(Tensor u, Tensor v, Tensor weight, Tensor? bias, str gate) -> Tensor");
  // Gradients for u, v, weight and bias (the last is grad_out summed over the batch).
  m.def("_bilinear_fusion_backward(Tensor grad_out, Tensor u, Tensor v, Tensor weight, str gate)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {

std::string cpu_isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE4_2__)
  return "sse4.2";
#elif defined(__ARM_FEATURE_SVE)
  return "sve";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "generic";
#endif
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  namespace py = pybind11;
  module.doc() = "mmfast native extension: operators are registered under torch.ops.mmfast";
  module.def("build_info", [] {
    py::dict info;
    info["version"] = MMFAST_VERSION;
    info["torch_built_with"] = TORCH_VERSION;
    info["compiler"] = compiler();
    info["cxx_standard"] = static_cast<long>(__cplusplus);
    info["cpu_isa"] = cpu_isa();
    info["cpu_arch_flag"] = MMFAST_CPU_ARCH;
#if defined(_OPENMP)
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
#if defined(MMFAST_WITH_CUDA)
    info["cuda_kernels"] = true;
#else
    info["cuda_kernels"] = false;
#endif
    info["cuda_architectures"] = MMFAST_CUDA_ARCHS;
    return info;
  }, "Facts fixed when the extension was compiled.");
  module.def("intra_op_threads", [] { return at::get_num_threads(); },
             "Threads at::parallel_for uses in mmfast's CPU kernels.");
}
