// The batch-tiled algorithm of bilinear_fusion, shared by the CPU and CUDA kernels.
//
// With T[b, p*Q + q] = g(u)[b,p] * g'(v)[b,q] (the gated outer product of one row), every product
// of the op is a GEMM against W viewed as [K, P*Q]:
//   forward    o       = T @ W^T + bias                  2*B*K*P*Q flops
//   backward   grad_W  = grad_o^T @ T                    2*B*K*P*Q
//              G       = grad_o @ W       [B, P*Q]       2*B*K*P*Q
//              grad_u[b,p] = sum_q G[b,p,q] g'(v)[b,q] * g'(u)[b,p],  grad_v likewise
// so the heavy part runs at BLAS speed and G is shared by grad_u and grad_v. T and G exist only
// for a tile of rows sized to stay in cache: the B x P x Q outer product is never materialized.
//
// A backend supplies `Kernels` with two static members working on one tile of rows:
//   outer_product(u, v, gate, outer)                   writes T            [rows, P*Q]
//   contract(grad_outer, u, v, gate, grad_u, grad_v)    writes grad_u [rows, P], grad_v [rows, Q]
// and `kTileBytes`, the size one T (or G) tile aims for.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/bilinear_fusion_args.h"

namespace mmfast {

// float32 accumulation for float16/bfloat16/float32 inputs; float64 stays float64 (gradcheck).
inline at::ScalarType bilinear_compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename Kernels>
int64_t bilinear_tile_rows(const BilinearShape& shape, at::ScalarType compute_dtype) {
  // Enough rows for the GEMMs to reach full speed even when a row's outer product is large.
  constexpr int64_t kMinRows = 32;
  const int64_t row_bytes = std::max<int64_t>(1, shape.in1 * shape.in2) *
                            static_cast<int64_t>(c10::elementSize(compute_dtype));
  const int64_t rows = std::max(kMinRows, Kernels::kTileBytes / row_bytes);
  return std::min(rows, shape.batch);
}

template <typename Kernels>
at::Tensor bilinear_fusion_tiled(const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, std::string_view gate_name) {
  const BilinearShape shape = check_bilinear_fusion_args(u, v, weight, bias);
  const BilinearGate gate = parse_bilinear_gate(gate_name);
  const at::ScalarType compute_dtype = bilinear_compute_dtype(u.scalar_type());
  const at::TensorOptions compute = u.options().dtype(compute_dtype);
  if (shape.batch == 0) return at::empty({0, shape.out}, u.options());

  const int64_t features = shape.in1 * shape.in2;
  const at::Tensor weight_flat =
      weight.to(compute_dtype).contiguous().view({shape.out, features});  // [K, P*Q]
  const at::Tensor weight_t = weight_flat.t();                            // [P*Q, K]
  const at::Tensor bias_compute = bias ? bias->to(compute_dtype) : at::Tensor();
  at::Tensor out = at::empty({shape.batch, shape.out}, compute);  // [B, K]

  const int64_t tile_rows = bilinear_tile_rows<Kernels>(shape, compute_dtype);
  at::Tensor outer = at::empty({tile_rows, features}, compute);  // [rows, P*Q]
  for (int64_t row0 = 0; row0 < shape.batch; row0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, shape.batch - row0);
    at::Tensor outer_tile = outer.narrow(0, 0, rows);
    Kernels::outer_product(u.narrow(0, row0, rows), v.narrow(0, row0, rows), gate, outer_tile);
    at::Tensor out_tile = out.narrow(0, row0, rows);
    if (bias_compute.defined()) {
      at::addmm_out(out_tile, bias_compute, outer_tile, weight_t);
    } else {
      at::mm_out(out_tile, outer_tile, weight_t);
    }
  }
  return out.to(u.scalar_type());
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_fusion_backward_tiled(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& v, const at::Tensor& weight,
    std::string_view gate_name) {
  const BilinearShape shape = check_bilinear_fusion_backward_args(grad_out, u, v, weight);
  const BilinearGate gate = parse_bilinear_gate(gate_name);
  const at::ScalarType dtype = u.scalar_type();
  const at::ScalarType compute_dtype = bilinear_compute_dtype(dtype);
  const at::TensorOptions compute = u.options().dtype(compute_dtype);
  const int64_t features = shape.in1 * shape.in2;

  const at::Tensor grad_out_compute = grad_out.to(compute_dtype).contiguous();  // [B, K]
  at::Tensor grad_u = at::empty({shape.batch, shape.in1}, compute);
  at::Tensor grad_v = at::empty({shape.batch, shape.in2}, compute);
  at::Tensor grad_weight_flat = at::zeros({shape.out, features}, compute);  // [K, P*Q]
  const at::Tensor grad_bias = grad_out_compute.sum(0);                     // [K]

  if (shape.batch > 0) {
    const at::Tensor weight_flat =
        weight.to(compute_dtype).contiguous().view({shape.out, features});  // [K, P*Q]
    const int64_t tile_rows = bilinear_tile_rows<Kernels>(shape, compute_dtype);
    at::Tensor outer = at::empty({tile_rows, features}, compute);       // T tile [rows, P*Q]
    at::Tensor grad_outer = at::empty({tile_rows, features}, compute);  // G tile [rows, P*Q]
    for (int64_t row0 = 0; row0 < shape.batch; row0 += tile_rows) {
      const int64_t rows = std::min(tile_rows, shape.batch - row0);
      const at::Tensor u_tile = u.narrow(0, row0, rows), v_tile = v.narrow(0, row0, rows);
      const at::Tensor grad_out_tile = grad_out_compute.narrow(0, row0, rows);  // [rows, K]
      at::Tensor outer_tile = outer.narrow(0, 0, rows);
      at::Tensor grad_outer_tile = grad_outer.narrow(0, 0, rows);
      Kernels::outer_product(u_tile, v_tile, gate, outer_tile);
      grad_weight_flat.addmm_(grad_out_tile.t(), outer_tile);
      at::mm_out(grad_outer_tile, grad_out_tile, weight_flat);
      at::Tensor grad_u_tile = grad_u.narrow(0, row0, rows);
      at::Tensor grad_v_tile = grad_v.narrow(0, row0, rows);
      Kernels::contract(grad_outer_tile, u_tile, v_tile, gate, grad_u_tile, grad_v_tile);
    }
  }
  return {grad_u.to(dtype), grad_v.to(dtype),
          grad_weight_flat.view({shape.out, shape.in1, shape.in2}).to(dtype), grad_bias.to(dtype)};
}

}  // namespace mmfast
