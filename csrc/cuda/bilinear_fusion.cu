// bilinear_fusion on CUDA (DESIGN 2.2). The algorithm (batch tiles, cuBLAS GEMMs against W viewed
// as [K, P*Q]) is common/bilinear_fusion_tiled.h; this file holds the per-row kernels around the
// GEMMs, which read u and v in their own dtype and strides and apply the gate on the fly.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bilinear_fusion_tiled.h"

namespace mmfast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t x) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return 1.0 / (1.0 + exp(-x));
  } else {
    return 1.f / (1.f + expf(-x));
  }
}

template <bool kGated, typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t load(const scalar_t* data, int64_t offset) {
  const acc_t x = static_cast<acc_t>(data[offset]);
  return kGated ? sigmoid(x) : x;
}

// Grid-stride loops: a tile can hold more rows than a grid dimension allows.
inline unsigned blocks_for(int64_t work_items, int64_t items_per_block) {
  const int64_t blocks = (work_items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t(1) << 20));
}

// outer[b, p*Q + q] = g(u)[b,p] * g'(v)[b,q]; consecutive threads write consecutive q.
template <typename scalar_t, typename acc_t, BilinearGate kGate>
__global__ void outer_product_kernel(const scalar_t* __restrict__ u, int64_t u_stride0,
                                     int64_t u_stride1, const scalar_t* __restrict__ v,
                                     int64_t v_stride0, int64_t v_stride1, int64_t rows,
                                     int64_t in1, int64_t in2, acc_t* __restrict__ outer) {
  const int64_t features = in1 * in2, total = rows * features;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / features, p = (i % features) / in2, q = i % in2;
    outer[i] = load<kGate == BilinearGate::kFirst, acc_t>(u, b * u_stride0 + p * u_stride1) *
               load<kGate == BilinearGate::kSecond, acc_t>(v, b * v_stride0 + q * v_stride1);
  }
}

// grad_u[b,p] = sum_q G[b,p,q] g'(v)[b,q] (times the sigmoid's slope when u is gated): one warp
// per (b, p), its lanes reading consecutive q.
template <typename scalar_t, typename acc_t, BilinearGate kGate>
__global__ void grad_first_kernel(const acc_t* __restrict__ grad_outer,
                                  const scalar_t* __restrict__ u, int64_t u_stride0,
                                  int64_t u_stride1, const scalar_t* __restrict__ v,
                                  int64_t v_stride0, int64_t v_stride1, int64_t rows, int64_t in1,
                                  int64_t in2, acc_t* __restrict__ grad_u) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t bp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; bp < rows * in1;
       bp += warps) {
    const int64_t b = bp / in1, p = bp % in1;
    const acc_t* g = grad_outer + bp * in2;
    acc_t dot = 0;
    for (int64_t q = lane; q < in2; q += kWarp) {
      dot += g[q] * load<kGate == BilinearGate::kSecond, acc_t>(v, b * v_stride0 + q * v_stride1);
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      dot += __shfl_down_sync(0xffffffffu, dot, offset);
    }
    if (lane == 0) {
      if constexpr (kGate == BilinearGate::kFirst) {
        const acc_t s = load<true, acc_t>(u, b * u_stride0 + p * u_stride1);
        dot *= s * (acc_t(1) - s);
      }
      grad_u[bp] = dot;
    }
  }
}

// grad_v[b,q] = sum_p G[b,p,q] g(u)[b,p] (times the sigmoid's slope when v is gated): one thread
// per (b, q), consecutive threads reading consecutive q of each G row.
template <typename scalar_t, typename acc_t, BilinearGate kGate>
__global__ void grad_second_kernel(const acc_t* __restrict__ grad_outer,
                                   const scalar_t* __restrict__ u, int64_t u_stride0,
                                   int64_t u_stride1, const scalar_t* __restrict__ v,
                                   int64_t v_stride0, int64_t v_stride1, int64_t rows,
                                   int64_t in1, int64_t in2, acc_t* __restrict__ grad_v) {
  for (int64_t bq = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; bq < rows * in2;
       bq += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = bq / in2, q = bq % in2;
    const acc_t* g = grad_outer + b * in1 * in2 + q;
    acc_t sum = 0;
    for (int64_t p = 0; p < in1; ++p) {
      sum += g[p * in2] * load<kGate == BilinearGate::kFirst, acc_t>(u, b * u_stride0 + p * u_stride1);
    }
    if constexpr (kGate == BilinearGate::kSecond) {
      const acc_t s = load<true, acc_t>(v, b * v_stride0 + q * v_stride1);
      sum *= s * (acc_t(1) - s);
    }
    grad_v[bq] = sum;
  }
}

struct CudaKernels {
  // Large tiles keep the cuBLAS GEMMs big; 64 MiB is small next to any supported GPU's memory.
  static constexpr int64_t kTileBytes = int64_t(64) << 20;

  static void outer_product(const at::Tensor& u, const at::Tensor& v, BilinearGate gate,
                            at::Tensor& outer) {
    const int64_t rows = u.size(0), in1 = u.size(1), in2 = v.size(1);
    if (outer.numel() == 0) return;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(),
                                    "bilinear_fusion_outer_product_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_bilinear_gate(gate, [&](auto kGate) {
        outer_product_kernel<scalar_t, acc_t, decltype(kGate)::value>
            <<<blocks_for(outer.numel(), kThreads), kThreads, 0, stream>>>(
                u.const_data_ptr<scalar_t>(), u.stride(0), u.stride(1),
                v.const_data_ptr<scalar_t>(), v.stride(0), v.stride(1), rows, in1, in2,
                outer.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void contract(const at::Tensor& grad_outer, const at::Tensor& u, const at::Tensor& v,
                       BilinearGate gate, at::Tensor& grad_u, at::Tensor& grad_v) {
    const int64_t rows = u.size(0), in1 = u.size(1), in2 = v.size(1);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(),
                                    "bilinear_fusion_contract_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_bilinear_gate(gate, [&](auto kGate) {
        constexpr BilinearGate kGateValue = decltype(kGate)::value;
        if (rows * in1 > 0) {
          grad_first_kernel<scalar_t, acc_t, kGateValue>
              <<<blocks_for(rows * in1, kThreads / kWarp), kThreads, 0, stream>>>(
                  grad_outer.const_data_ptr<acc_t>(), u.const_data_ptr<scalar_t>(), u.stride(0),
                  u.stride(1), v.const_data_ptr<scalar_t>(), v.stride(0), v.stride(1), rows, in1,
                  in2, grad_u.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (rows * in2 > 0) {
          grad_second_kernel<scalar_t, acc_t, kGateValue>
              <<<blocks_for(rows * in2, kThreads), kThreads, 0, stream>>>(
                  grad_outer.const_data_ptr<acc_t>(), u.const_data_ptr<scalar_t>(), u.stride(0),
                  u.stride(1), v.const_data_ptr<scalar_t>(), v.stride(0), v.stride(1), rows, in1,
                  in2, grad_v.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  }
};

at::Tensor bilinear_fusion_cuda(const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, c10::string_view gate) {
  const c10::cuda::CUDAGuard guard(u.device());
  return bilinear_fusion_tiled<CudaKernels>(u, v, weight, bias, gate);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_fusion_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
    c10::string_view gate) {
  const c10::cuda::CUDAGuard guard(u.device());
  return bilinear_fusion_backward_tiled<CudaKernels>(grad_out, u, v, weight, gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("bilinear_fusion", &bilinear_fusion_cuda);
  m.impl("_bilinear_fusion_backward", &bilinear_fusion_backward_cuda);
}

}  // namespace mmfast
