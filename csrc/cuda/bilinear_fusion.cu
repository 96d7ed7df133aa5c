// bilinear_fusion on CUDA (DESIGN 2.2). The algorithm (slices of the outer product, cuBLAS GEMMs
// against W viewed as [K, P*Q]) is common/bilinear_fusion_tiled.h; this file holds the kernels
// around the GEMMs: building a slice of T, and reducing a slice of G to grad_u and grad_v.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bilinear_fusion_tiled.h"

namespace mmfast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// Grid-stride loops: a tile can hold more elements than a grid dimension allows.
inline unsigned blocks_for(int64_t work_items, int64_t items_per_block) {
  const int64_t blocks = (work_items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t(1) << 20));
}

// outer[b, j*Q + q] = u_block[b, j] * v[b, q]; consecutive threads write consecutive q.
template <typename acc_t>
__global__ void outer_product_kernel(const acc_t* __restrict__ u_block, int64_t u_stride,
                                     const acc_t* __restrict__ v, int64_t v_stride, int64_t rows,
                                     int64_t p_block, int64_t in2, acc_t* __restrict__ outer,
                                     int64_t outer_stride) {
  const int64_t row_elements = p_block * in2;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * row_elements;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / row_elements, jq = i % row_elements, j = jq / in2, q = jq % in2;
    outer[b * outer_stride + jq] = u_block[b * u_stride + j] * v[b * v_stride + q];
  }
}

// grad_u_block[b,j] = sum_q G[b,j,q] v[b,q]: one warp per (b, j), its lanes reading consecutive q.
template <typename acc_t>
__global__ void grad_first_kernel(const acc_t* __restrict__ grad_outer, int64_t grad_outer_stride,
                                  const acc_t* __restrict__ v, int64_t v_stride, int64_t rows,
                                  int64_t p_block, int64_t in2, acc_t* __restrict__ grad_u,
                                  int64_t grad_u_stride) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t bj = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; bj < rows * p_block;
       bj += warps) {
    const int64_t b = bj / p_block, j = bj % p_block;
    const acc_t* g = grad_outer + b * grad_outer_stride + j * in2;
    acc_t dot = 0;
    for (int64_t q = lane; q < in2; q += kWarp) dot += g[q] * v[b * v_stride + q];
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      dot += __shfl_down_sync(0xffffffffu, dot, offset);
    }
    if (lane == 0) grad_u[b * grad_u_stride + j] = dot;
  }
}

// grad_v[b,q] += sum_j G[b,j,q] u_block[b,j]: one thread per (b, q), consecutive threads reading
// consecutive q of each G row.
template <typename acc_t>
__global__ void grad_second_kernel(const acc_t* __restrict__ grad_outer, int64_t grad_outer_stride,
                                   const acc_t* __restrict__ u_block, int64_t u_stride,
                                   int64_t rows, int64_t p_block, int64_t in2,
                                   acc_t* __restrict__ grad_v, int64_t grad_v_stride) {
  for (int64_t bq = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; bq < rows * in2;
       bq += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = bq / in2, q = bq % in2;
    const acc_t* g = grad_outer + b * grad_outer_stride + q;
    acc_t sum = 0;
    for (int64_t j = 0; j < p_block; ++j) sum += g[j * in2] * u_block[b * u_stride + j];
    grad_v[b * grad_v_stride + q] += sum;
  }
}

struct CudaKernels {
  // Large tiles and slices keep the cuBLAS GEMMs big; 64 MiB is small next to a GPU's memory.
  static constexpr int64_t kTileRows = 8192;
  static constexpr int64_t kSliceBytes = int64_t(64) << 20;

  // No fused forward here: the tiled one, whose GEMMs are cuBLAS's.
  static void add_forward(const at::Tensor& u_gated, const at::Tensor& v_gated,
                          const at::Tensor& weight_flat, at::Tensor& out) {
    bilinear_tiled_forward<CudaKernels>(u_gated, v_gated, weight_flat, out);
  }

  // One stream of work: the GPU's parallelism is inside each kernel and GEMM.
  static int64_t workers(int64_t) { return 1; }

  template <typename Fn>
  static void run_workers(int64_t, const Fn& fn) { fn(0); }

  static void outer_product(const at::Tensor& u_block, const at::Tensor& v, at::Tensor& outer) {
    const int64_t rows = u_block.size(0), p_block = u_block.size(1), in2 = v.size(1);
    if (outer.numel() == 0) return;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(outer.scalar_type(), "bilinear_fusion_outer_product_cuda", [&] {
      outer_product_kernel<scalar_t><<<blocks_for(outer.numel(), kThreads), kThreads, 0, stream>>>(
          u_block.const_data_ptr<scalar_t>(), u_block.stride(0), v.const_data_ptr<scalar_t>(),
          v.stride(0), rows, p_block, in2, outer.data_ptr<scalar_t>(), outer.stride(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void contract(const at::Tensor& grad_outer, const at::Tensor& u_block,
                       const at::Tensor& v, at::Tensor& grad_u_block, at::Tensor& grad_v) {
    const int64_t rows = u_block.size(0), p_block = u_block.size(1), in2 = v.size(1);
    if (rows * p_block * in2 == 0) {
      grad_u_block.zero_();  // an empty sum over q
      return;
    }
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(grad_outer.scalar_type(), "bilinear_fusion_contract_cuda", [&] {
      grad_first_kernel<scalar_t>
          <<<blocks_for(rows * p_block, kThreads / kWarp), kThreads, 0, stream>>>(
              grad_outer.const_data_ptr<scalar_t>(), grad_outer.stride(0),
              v.const_data_ptr<scalar_t>(), v.stride(0), rows, p_block, in2,
              grad_u_block.data_ptr<scalar_t>(), grad_u_block.stride(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_second_kernel<scalar_t><<<blocks_for(rows * in2, kThreads), kThreads, 0, stream>>>(
          grad_outer.const_data_ptr<scalar_t>(), grad_outer.stride(0),
          u_block.const_data_ptr<scalar_t>(), u_block.stride(0), rows, p_block, in2,
          grad_v.data_ptr<scalar_t>(), grad_v.stride(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

at::Tensor bilinear_fusion_cuda(const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, c10::string_view gate) {
  // The checks (again inside) before the guard: with u on the CPU beside CUDA inputs, the guard
  // would fail on the CPU device with a message about guards, not about u.
  check_bilinear_fusion_args(u, v, weight, bias);
  const c10::cuda::CUDAGuard guard(u.device());
  return bilinear_fusion_forward<CudaKernels>(u, v, weight, bias, gate);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_fusion_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
    c10::string_view gate) {
  check_bilinear_fusion_backward_args(grad_out, u, v, weight);  // before the guard, as above
  const c10::cuda::CUDAGuard guard(u.device());
  return bilinear_fusion_backward_tiled<CudaKernels>(grad_out, u, v, weight, gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("bilinear_fusion", &bilinear_fusion_cuda);
  m.impl("_bilinear_fusion_backward", &bilinear_fusion_backward_cuda);
}

}  // namespace mmfast
