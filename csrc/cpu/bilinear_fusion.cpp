// bilinear_fusion on the CPU (DESIGN 2.2). The algorithm (slices of the outer product, GEMMs
// against W viewed as [K, P*Q]) is common/bilinear_fusion_tiled.h; this file holds the two per-row
// kernels around the GEMMs: building a slice of T, and reducing a slice of G to grad_u and grad_v.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bilinear_fusion_tiled.h"

namespace mmfast {
namespace {

// Rows per parallel work item: about at::internal::GRAIN_SIZE elements of a slice each.
inline int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, row_elements));
}

// outer[b, j*Q + q] = u_block[b, j] * v[b, q]. u_block is a column block of a contiguous [B, P]
// tensor and outer a column block of the slice buffer, hence their row strides.
template <typename acc_t>
void outer_product_rows(const at::Tensor& u_block, const at::Tensor& v, at::Tensor& outer) {
  const int64_t rows = u_block.size(0), p_block = u_block.size(1), in2 = v.size(1);
  const int64_t u_stride = u_block.stride(0), v_stride = v.stride(0), outer_stride = outer.stride(0);
  const acc_t* u_data = u_block.const_data_ptr<acc_t>();
  const acc_t* v_data = v.const_data_ptr<acc_t>();
  acc_t* outer_data = outer.data_ptr<acc_t>();
  at::parallel_for(0, rows, rows_per_task(p_block * in2), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* __restrict v_row = v_data + b * v_stride;
      for (int64_t j = 0; j < p_block; ++j) {
        const acc_t u_value = u_data[b * u_stride + j];
        acc_t* __restrict dst = outer_data + b * outer_stride + j * in2;
#pragma omp simd
        for (int64_t q = 0; q < in2; ++q) dst[q] = u_value * v_row[q];
      }
    }
  });
}

// grad_u_block[b,j] = sum_q G[b,j,q] v[b,q] and grad_v[b,q] += sum_j G[b,j,q] u_block[b,j], in one
// pass over the G slice while it is still in cache.
template <typename acc_t>
void contract_rows(const at::Tensor& grad_outer, const at::Tensor& u_block, const at::Tensor& v,
                   at::Tensor& grad_u_block, at::Tensor& grad_v) {
  const int64_t rows = u_block.size(0), p_block = u_block.size(1), in2 = v.size(1);
  const int64_t grad_outer_stride = grad_outer.stride(0), u_stride = u_block.stride(0),
                v_stride = v.stride(0), grad_u_stride = grad_u_block.stride(0),
                grad_v_stride = grad_v.stride(0);
  const acc_t* grad_outer_data = grad_outer.const_data_ptr<acc_t>();
  const acc_t* u_data = u_block.const_data_ptr<acc_t>();
  const acc_t* v_data = v.const_data_ptr<acc_t>();
  acc_t* grad_u_data = grad_u_block.data_ptr<acc_t>();
  acc_t* grad_v_data = grad_v.data_ptr<acc_t>();
  at::parallel_for(0, rows, rows_per_task(p_block * in2), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* __restrict v_row = v_data + b * v_stride;
      acc_t* __restrict gv = grad_v_data + b * grad_v_stride;
      for (int64_t j = 0; j < p_block; ++j) {
        const acc_t* __restrict g = grad_outer_data + b * grad_outer_stride + j * in2;
        const acc_t u_value = u_data[b * u_stride + j];
        acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t q = 0; q < in2; ++q) {
          dot += g[q] * v_row[q];
          gv[q] += g[q] * u_value;
        }
        grad_u_data[b * grad_u_stride + j] = dot;
      }
    }
  });
}

struct CpuKernels {
  // 512 rows reuse each element of W 512 times per load; a 2 MiB slice (T or G) stays in L2
  // (measured best of 256/512 rows x 1/2 MiB on an AVX-512 Xeon with 2 MiB L2 per core).
  static constexpr int64_t kTileRows = 512;
  static constexpr int64_t kSliceBytes = int64_t(2) << 20;
  // Below this many rows per thread a worker's GEMMs get too short to reuse W; one worker then
  // leaves the threads to the BLAS inside each GEMM instead.
  static constexpr int64_t kMinWorkerRows = 128;

  // One worker per thread, each on its own rows with single-threaded GEMMs: no BLAS fork-join
  // per slice, and each thread's slices stay in its own core's L2.
  static int64_t workers(int64_t batch) {
    if (at::in_parallel_region()) return 1;
    return std::clamp<int64_t>(batch / kMinWorkerRows, 1, at::get_num_threads());
  }

  template <typename Fn>
  static void run_workers(int64_t workers, const Fn& fn) {
    if (workers == 1) {
      fn(0);
      return;
    }
    // Pool threads start without the caller's dispatch state (autograd already handled, grad
    // mode): without it the GEMMs on views of a requires-grad W would refuse out=.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(caller_state);
      for (int64_t worker = begin; worker < end; ++worker) fn(worker);
    });
  }

  static void outer_product(const at::Tensor& u_block, const at::Tensor& v, at::Tensor& outer) {
    AT_DISPATCH_FLOATING_TYPES(outer.scalar_type(), "bilinear_fusion_outer_product_cpu",
                               [&] { outer_product_rows<scalar_t>(u_block, v, outer); });
  }

  static void contract(const at::Tensor& grad_outer, const at::Tensor& u_block,
                       const at::Tensor& v, at::Tensor& grad_u_block, at::Tensor& grad_v) {
    AT_DISPATCH_FLOATING_TYPES(grad_outer.scalar_type(), "bilinear_fusion_contract_cpu", [&] {
      contract_rows<scalar_t>(grad_outer, u_block, v, grad_u_block, grad_v);
    });
  }
};

at::Tensor bilinear_fusion_cpu(const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, c10::string_view gate) {
  return bilinear_fusion_tiled<CpuKernels>(u, v, weight, bias, gate);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_fusion_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
    c10::string_view gate) {
  return bilinear_fusion_backward_tiled<CpuKernels>(grad_out, u, v, weight, gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("bilinear_fusion", &bilinear_fusion_cpu);
  m.impl("_bilinear_fusion_backward", &bilinear_fusion_backward_cpu);
}

}  // namespace mmfast
