// CACNet on CUDA (DESIGN 2.4): the elementwise epilogues of csrc/common/cacnet.h's schedule as
// grid-stride kernels on the current stream; the GEMMs are ATen's (cuBLAS).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cacnet.h"
#include "cuda/value_checks.cuh"

namespace mmfast::cacnet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, 65535));
}

template <Activation A, typename T>
__device__ inline T activate(T v) {
  if constexpr (A == Activation::kRelu) return v <= T(0) ? T(0) : v;  // NaN stays NaN, as torch.relu
  if constexpr (A == Activation::kTanh) return tanh(v);
  if constexpr (A == Activation::kSigmoid) return T(1) / (T(1) + exp(-v));
}

// out may alias pre (bias_activation's contract), so neither is __restrict__: the promise would
// be false and lets the compiler reorder the read of pre[i] past another element's write.
template <typename T, Activation A>
__global__ void bias_activation_kernel(T* out, const T* pre,
                                       const T* __restrict__ pre2, const T* __restrict__ bias,
                                       int64_t numel, int64_t cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T v = pre[i] + (pre2 ? pre2[i] : T(0)) + bias[i % cols];
    out[i] = activate<A>(v);
  }
}

template <typename T, Activation A>
__global__ void activation_backward_kernel(T* __restrict__ grad, const T* __restrict__ out,
                                           int64_t numel) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    grad[i] *= activation_slope<A>(out[i]);
  }
}

// One warp per row: BCE(z, t) = max(z, 0) - z t + log1p(e), sigmoid(z) = (z >= 0 ? 1 : e) / (1 + e)
// with e = exp(-|z|), so neither overflows.
template <typename T>
__global__ void bce_with_logits_kernel(T* __restrict__ logits, const T* __restrict__ bias,
                                       const T* __restrict__ targets, T* __restrict__ loss,
                                       T* __restrict__ grad, int64_t rows, int64_t cols,
                                       T grad_scale) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / 32; r < rows;
       r += int64_t(gridDim.x) * kWarpsPerBlock) {
    T total = 0;
    for (int64_t c = lane; c < cols; c += 32) {
      const int64_t i = r * cols + c;
      T z = logits[i];
      if (bias) {
        z += bias[c];
        logits[i] = z;
      }
      const T t = targets[i];
      const T e = exp(-abs(z));
      total += (z > T(0) ? z : T(0)) - z * t + log1p(e);
      if (grad) grad[i] = ((z >= T(0) ? T(1) : e) / (T(1) + e) - t) * grad_scale;
    }
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_down_sync(0xffffffffu, total, offset);
    if (loss && lane == 0) loss[r] = total / T(cols);
  }
}

struct CudaKernels {
  using DeviceGuard = c10::cuda::CUDAGuard;

  static bool checks_values() { return cuda_value_checks(); }

  static bool all_valid(const at::Tensor& t, bool binary) {
    return (binary ? (t == 0) | (t == 1) : at::isfinite(t)).all().item<bool>();
  }

  static void bias_activation(const at::Tensor& out, const at::Tensor& pre, const at::Tensor& pre2,
                              const at::Tensor& bias, Activation activation) {
    const int64_t numel = out.numel(), cols = bias.numel();
    if (numel == 0) return;
    const at::Tensor bias_c = bias.contiguous();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cacnet_bias_activation_cuda", [&] {
      dispatch_activation(activation, [&](auto act) {
        bias_activation_kernel<scalar_t, decltype(act)::value><<<blocks_for(numel), kThreads, 0, stream>>>(
            out.data_ptr<scalar_t>(), pre.const_data_ptr<scalar_t>(),
            pre2.defined() ? pre2.const_data_ptr<scalar_t>() : nullptr,
            bias_c.const_data_ptr<scalar_t>(), numel, cols);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void activation_backward_(const at::Tensor& grad, const at::Tensor& out,
                                   Activation activation) {
    const int64_t numel = grad.numel();
    if (numel == 0) return;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "cacnet_activation_backward_cuda", [&] {
      dispatch_activation(activation, [&](auto act) {
        activation_backward_kernel<scalar_t, decltype(act)::value>
            <<<blocks_for(numel), kThreads, 0, stream>>>(grad.data_ptr<scalar_t>(),
                                                         out.const_data_ptr<scalar_t>(), numel);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void bce_with_logits(const at::Tensor& logits, const at::Tensor& bias,
                              const at::Tensor& targets, const at::Tensor& loss,
                              const at::Tensor& grad, double grad_scale) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    if (rows == 0) return;
    const at::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const unsigned blocks = static_cast<unsigned>(
        std::clamp<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, 65535));
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cacnet_bce_with_logits_cuda", [&] {
      bce_with_logits_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          // Without a bias the kernel only reads the logits.
          const_cast<scalar_t*>(logits.const_data_ptr<scalar_t>()),
          bias.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr,
          targets.const_data_ptr<scalar_t>(), loss.defined() ? loss.data_ptr<scalar_t>() : nullptr,
          grad.defined() ? grad.data_ptr<scalar_t>() : nullptr, rows, cols,
          static_cast<scalar_t>(grad_scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

using CudaSchedule = Schedule<CudaKernels>;

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("cacnet_forward", &CudaSchedule::forward);
  m.impl("_cacnet_forward_backward", &CudaSchedule::forward_backward);
  m.impl("cacnet_phase1", &CudaSchedule::phase1);
  m.impl("cacnet_phase2_forward", &CudaSchedule::phase2_forward);
  m.impl("cacnet_phase2_full_backward", &CudaSchedule::phase2_full_backward);
  m.impl("cacnet_phase2_cross_active", &CudaSchedule::phase2_cross_active);
}

}  // namespace mmfast::cacnet
