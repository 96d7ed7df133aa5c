// bilinear_fusion on the CPU (DESIGN 2.2). The algorithm (batch tiles, GEMMs against W viewed as
// [K, P*Q]) is common/bilinear_fusion_tiled.h; this file holds the two per-row kernels around the
// GEMMs, which read u and v in their own dtype and strides and apply the gate on the fly.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/bilinear_fusion_tiled.h"

namespace mmfast {
namespace {

template <typename acc_t>
inline acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + std::exp(-x));
}

// dst[i] = x[i], through a sigmoid when kGated; the row may be strided and of a narrower dtype.
template <bool kGated, typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* row, int64_t stride, int64_t n, acc_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t x = static_cast<acc_t>(row[i * stride]);
    dst[i] = kGated ? sigmoid(x) : x;
  }
}

// Rows per parallel work item: about at::internal::GRAIN_SIZE elements of outer product each.
inline int64_t rows_per_task(int64_t features) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, features));
}

template <typename scalar_t, BilinearGate kGate>
void outer_product_rows(const at::Tensor& u, const at::Tensor& v, at::Tensor& outer) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = u.size(0), in1 = u.size(1), in2 = v.size(1);
  const scalar_t* u_data = u.const_data_ptr<scalar_t>();
  const scalar_t* v_data = v.const_data_ptr<scalar_t>();
  acc_t* outer_data = outer.data_ptr<acc_t>();
  at::parallel_for(0, rows, rows_per_task(in1 * in2), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> u_row(in1), v_row(in2);
    for (int64_t b = begin; b < end; ++b) {
      load_row<kGate == BilinearGate::kFirst>(u_data + b * u.stride(0), u.stride(1), in1,
                                              u_row.data());
      load_row<kGate == BilinearGate::kSecond>(v_data + b * v.stride(0), v.stride(1), in2,
                                               v_row.data());
      acc_t* dst = outer_data + b * in1 * in2;
      for (int64_t p = 0; p < in1; ++p) {
        const acc_t up = u_row[p];
        acc_t* __restrict dst_p = dst + p * in2;
        const acc_t* __restrict vq = v_row.data();
#pragma omp simd
        for (int64_t q = 0; q < in2; ++q) dst_p[q] = up * vq[q];
      }
    }
  });
}

// grad_u[b,p] = sum_q G[b,p,q] g'(v)[b,q] and grad_v[b,q] = sum_p G[b,p,q] g(u)[b,p], one pass
// over G, then the chain rule through the sigmoid of the gated input.
template <typename scalar_t, BilinearGate kGate>
void contract_rows(const at::Tensor& grad_outer, const at::Tensor& u, const at::Tensor& v,
                   at::Tensor& grad_u, at::Tensor& grad_v) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = u.size(0), in1 = u.size(1), in2 = v.size(1);
  const scalar_t* u_data = u.const_data_ptr<scalar_t>();
  const scalar_t* v_data = v.const_data_ptr<scalar_t>();
  const acc_t* grad_outer_data = grad_outer.const_data_ptr<acc_t>();
  acc_t* grad_u_data = grad_u.data_ptr<acc_t>();  // contiguous [rows, P]
  acc_t* grad_v_data = grad_v.data_ptr<acc_t>();  // contiguous [rows, Q]
  at::parallel_for(0, rows, rows_per_task(in1 * in2), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> u_row(in1), v_row(in2);
    for (int64_t b = begin; b < end; ++b) {
      load_row<kGate == BilinearGate::kFirst>(u_data + b * u.stride(0), u.stride(1), in1,
                                              u_row.data());
      load_row<kGate == BilinearGate::kSecond>(v_data + b * v.stride(0), v.stride(1), in2,
                                               v_row.data());
      const acc_t* grad_row = grad_outer_data + b * in1 * in2;
      acc_t* __restrict gu = grad_u_data + b * in1;
      acc_t* __restrict gv = grad_v_data + b * in2;
      std::fill(gv, gv + in2, acc_t(0));
      for (int64_t p = 0; p < in1; ++p) {
        const acc_t* __restrict g = grad_row + p * in2;
        const acc_t* __restrict vq = v_row.data();
        const acc_t up = u_row[p];
        acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t q = 0; q < in2; ++q) {
          dot += g[q] * vq[q];
          gv[q] += g[q] * up;
        }
        gu[p] = dot;
      }
      // The loaded row already holds s = sigmoid(x); ds/dx = s (1 - s).
      if constexpr (kGate == BilinearGate::kFirst) {
        for (int64_t p = 0; p < in1; ++p) gu[p] *= u_row[p] * (acc_t(1) - u_row[p]);
      } else if constexpr (kGate == BilinearGate::kSecond) {
        for (int64_t q = 0; q < in2; ++q) gv[q] *= v_row[q] * (acc_t(1) - v_row[q]);
      }
    }
  });
}

struct CpuKernels {
  // One T tile of this size (and one G tile in the backward) stays within a core's L2.
  static constexpr int64_t kTileBytes = int64_t(1) << 20;

  static void outer_product(const at::Tensor& u, const at::Tensor& v, BilinearGate gate,
                            at::Tensor& outer) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(),
                                    "bilinear_fusion_outer_product_cpu", [&] {
      dispatch_bilinear_gate(gate, [&](auto kGate) {
        outer_product_rows<scalar_t, decltype(kGate)::value>(u, v, outer);
      });
    });
  }

  static void contract(const at::Tensor& grad_outer, const at::Tensor& u, const at::Tensor& v,
                       BilinearGate gate, at::Tensor& grad_u, at::Tensor& grad_v) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(),
                                    "bilinear_fusion_contract_cpu", [&] {
      dispatch_bilinear_gate(gate, [&](auto kGate) {
        contract_rows<scalar_t, decltype(kGate)::value>(grad_outer, u, v, grad_u, grad_v);
      });
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
