// The algorithm of bilinear_fusion shared by the CPU and CUDA kernels: the backward, the forward's
// set-up, and the tiled forward for a backend without a fused kernel of its own (the CPU has one,
// cpu/bilinear_fusion.cpp).
//
// With T[b, p*Q + q] = g(u)[b,p] * g'(v)[b,q] (the gated outer product of one row), every product
// of the op is a GEMM against W viewed as [K, P*Q]:
//   forward    o       = T @ W^T + bias                  2*B*K*P*Q flops
//   backward   grad_W  = grad_o^T @ T                    2*B*K*P*Q
//              G       = grad_o @ W       [B, P*Q]       2*B*K*P*Q
//              grad_u[b,p] = sum_q G[b,p,q] g'(v)[b,q],  grad_v[b,q] = sum_p G[b,p,q] g(u)[b,p]
// (then the sigmoid's slope for the gated input), so the heavy part runs at BLAS speed and G is
// shared by grad_u and grad_v. T and G exist only as slices: a tile of rows times a block of p,
// sized so that a slice is still in cache when the GEMM reads it, while the tile of rows is tall
// enough for each element of W to be reused across many rows. The B x P x Q outer product is never
// materialized.
//
// A backend supplies `Kernels` with static members working on compute-dtype tensors:
//   outer_product(u_block [rows, pb], v [rows, Q], outer [rows, pb*Q])       writes a T slice
//   contract(grad_outer [rows, pb*Q], u_block, v, grad_u_block [rows, pb], grad_v [rows, Q])
//       writes grad_u_block and adds into grad_v
//   add_forward(u_gated, v_gated, weight_flat, out [B, K])   adds T @ W^T to out
//   workers(batch)            how many workers share the backward
//   run_workers(n, fn)        calls fn(worker) for every worker in [0, n), concurrently if it can
// and the constants kTileRows (rows per tile) and kSliceBytes (the size a slice aims for).
// In the backward each worker owns a contiguous share of the rows (of grad_u and grad_v) and a
// contiguous share of p (the columns of grad_W, summed over all rows), so no two workers write the
// same element.
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

struct BilinearTiling {
  int64_t workers;  // run concurrently, each on a contiguous share of the rows and of p
  int64_t rows;     // rows of a tile
  int64_t p_block;  // values of p in a slice

  // Worker w's share of [0, n) is [share_begin(w, n), share_begin(w + 1, n)).
  int64_t share_begin(int64_t worker, int64_t n) const {
    return std::min(worker * ((n + workers - 1) / workers), n);
  }
};

template <typename Kernels>
BilinearTiling bilinear_tiling(const BilinearShape& shape, at::ScalarType compute_dtype) {
  BilinearTiling tiling{std::max<int64_t>(1, Kernels::workers(shape.batch))};
  const int64_t share = tiling.share_begin(1, shape.batch);  // rows of the largest share
  tiling.rows = std::max<int64_t>(1, std::min(Kernels::kTileRows, share));
  const int64_t slice_row_bytes = tiling.rows * std::max<int64_t>(1, shape.in2) *
                                  static_cast<int64_t>(c10::elementSize(compute_dtype));
  tiling.p_block = std::clamp<int64_t>(Kernels::kSliceBytes / slice_row_bytes, 1,
                                       std::max<int64_t>(1, shape.in1));
  return tiling;
}

// The operands of every kernel, in the compute dtype and contiguous.
struct BilinearOperands {
  at::Tensor u_gated, v_gated;  // [B, P], [B, Q], through the sigmoid where gated
  at::Tensor weight_flat;       // [K, P*Q]
};

// The inputs are gated here, once: [B, P] and [B, Q] are tiny next to the B*K*P*Q work, and
// gating once spares every slice its own exponentials.
inline BilinearOperands bilinear_operands(const at::Tensor& u, const at::Tensor& v,
                                          const at::Tensor& weight, BilinearGate gate,
                                          at::ScalarType compute_dtype) {
  at::Tensor u_gated = u.to(compute_dtype).contiguous();
  at::Tensor v_gated = v.to(compute_dtype).contiguous();
  if (gate == BilinearGate::kFirst) u_gated = at::sigmoid(u_gated);
  if (gate == BilinearGate::kSecond) v_gated = at::sigmoid(v_gated);
  const at::Tensor weight_flat = weight.to(compute_dtype).contiguous().view(
      {weight.size(0), weight.size(1) * weight.size(2)});
  return {u_gated, v_gated, weight_flat};
}

// out += T @ W^T, one tile of rows and one p block at a time: add_forward for a backend without a
// fused kernel.
template <typename Kernels>
void bilinear_tiled_forward(const at::Tensor& u_gated, const at::Tensor& v_gated,
                            const at::Tensor& weight_flat, at::Tensor& out) {
  const BilinearShape shape{u_gated.size(0), u_gated.size(1), v_gated.size(1), out.size(1)};
  const BilinearTiling tiling = bilinear_tiling<Kernels>(shape, u_gated.scalar_type());
  const int64_t in2 = shape.in2;
  at::Tensor outer = at::empty({tiling.rows, tiling.p_block * in2}, u_gated.options());  // T slice
  for (int64_t row0 = 0; row0 < shape.batch; row0 += tiling.rows) {
    const int64_t rows = std::min(tiling.rows, shape.batch - row0);
    const at::Tensor v_tile = v_gated.narrow(0, row0, rows);
    at::Tensor out_tile = out.narrow(0, row0, rows);  // [rows, K]
    for (int64_t p0 = 0; p0 < shape.in1; p0 += tiling.p_block) {
      const int64_t p_block = std::min(tiling.p_block, shape.in1 - p0);
      at::Tensor outer_slice = outer.narrow(0, 0, rows).narrow(1, 0, p_block * in2);
      Kernels::outer_product(u_gated.narrow(0, row0, rows).narrow(1, p0, p_block), v_tile,
                             outer_slice);
      out_tile.addmm_(outer_slice, weight_flat.narrow(1, p0 * in2, p_block * in2).t());
    }
  }
}

// grad_u and grad_v of rows [begin, end): G = grad_o @ W one slice at a time, each reduced to
// grad_u and grad_v while it is still in cache.
template <typename Kernels>
void bilinear_input_grads_rows(const at::Tensor& grad_out, const at::Tensor& u_gated,
                               const at::Tensor& v_gated, const at::Tensor& weight_flat,
                               const BilinearTiling& tiling, int64_t begin, int64_t end,
                               at::Tensor& grad_u, at::Tensor& grad_v) {
  const int64_t in1 = u_gated.size(1), in2 = v_gated.size(1);
  at::Tensor grad_outer = at::empty({tiling.rows, tiling.p_block * in2}, u_gated.options());  // G
  for (int64_t row0 = begin; row0 < end; row0 += tiling.rows) {
    const int64_t rows = std::min(tiling.rows, end - row0);
    const at::Tensor grad_out_tile = grad_out.narrow(0, row0, rows);  // [rows, K]
    const at::Tensor v_tile = v_gated.narrow(0, row0, rows);
    at::Tensor grad_v_tile = grad_v.narrow(0, row0, rows);
    for (int64_t p0 = 0; p0 < in1; p0 += tiling.p_block) {
      const int64_t p_block = std::min(tiling.p_block, in1 - p0);
      at::Tensor grad_outer_slice = grad_outer.narrow(0, 0, rows).narrow(1, 0, p_block * in2);
      at::mm_out(grad_outer_slice, grad_out_tile, weight_flat.narrow(1, p0 * in2, p_block * in2));
      at::Tensor grad_u_block = grad_u.narrow(0, row0, rows).narrow(1, p0, p_block);
      Kernels::contract(grad_outer_slice, u_gated.narrow(0, row0, rows).narrow(1, p0, p_block),
                        v_tile, grad_u_block, grad_v_tile);
    }
  }
}

// Columns [p_begin * Q, p_end * Q) of grad_W = grad_o^T @ T, summed over all rows one slice of T
// at a time: workers own disjoint columns, so none needs a private copy of grad_W.
template <typename Kernels>
void bilinear_weight_grad_columns(const at::Tensor& grad_out, const at::Tensor& u_gated,
                                  const at::Tensor& v_gated, const BilinearTiling& tiling,
                                  int64_t p_begin, int64_t p_end, at::Tensor& grad_weight_flat) {
  const int64_t batch = u_gated.size(0), in2 = v_gated.size(1);
  at::Tensor outer = at::empty({tiling.rows, tiling.p_block * in2}, u_gated.options());  // T
  for (int64_t row0 = 0; row0 < batch; row0 += tiling.rows) {
    const int64_t rows = std::min(tiling.rows, batch - row0);
    const at::Tensor grad_out_tile_t = grad_out.narrow(0, row0, rows).t();  // [K, rows]
    const at::Tensor v_tile = v_gated.narrow(0, row0, rows);
    for (int64_t p0 = p_begin; p0 < p_end; p0 += tiling.p_block) {
      const int64_t p_block = std::min(tiling.p_block, p_end - p0);
      at::Tensor outer_slice = outer.narrow(0, 0, rows).narrow(1, 0, p_block * in2);
      Kernels::outer_product(u_gated.narrow(0, row0, rows).narrow(1, p0, p_block), v_tile,
                             outer_slice);
      at::Tensor grad_weight_block = grad_weight_flat.narrow(1, p0 * in2, p_block * in2);
      // The first tile of rows writes the block (no zero fill of grad_W), the others add to it.
      if (row0 == 0) {
        at::mm_out(grad_weight_block, grad_out_tile_t, outer_slice);
      } else {
        grad_weight_block.addmm_(grad_out_tile_t, outer_slice);
      }
    }
  }
}

template <typename Kernels>
at::Tensor bilinear_fusion_forward(const at::Tensor& u, const at::Tensor& v,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  std::string_view gate_name) {
  const BilinearShape shape = check_bilinear_fusion_args(u, v, weight, bias);
  const BilinearGate gate = parse_bilinear_gate(gate_name);
  if (shape.batch == 0) return at::empty({0, shape.out}, u.options());
  const at::ScalarType compute_dtype = bilinear_compute_dtype(u.scalar_type());
  const auto [u_gated, v_gated, weight_flat] =
      bilinear_operands(u, v, weight, gate, compute_dtype);
  // The backend adds the bilinear form onto the bias. (A fresh buffer: expand().contiguous() of a
  // one-row batch would alias the caller's bias.)
  at::Tensor out = at::empty({shape.batch, shape.out}, u.options().dtype(compute_dtype));
  if (bias) {
    out.copy_(bias->expand({shape.batch, shape.out}));
  } else {
    out.zero_();
  }
  Kernels::add_forward(u_gated, v_gated, weight_flat, out);
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
  const int64_t in2 = shape.in2, features = shape.in1 * in2;

  const at::Tensor grad_out_compute = grad_out.to(compute_dtype).contiguous();  // [B, K]
  at::Tensor grad_u = at::empty({shape.batch, shape.in1}, compute);
  at::Tensor grad_v = at::zeros({shape.batch, in2}, compute);  // sum over p blocks
  // Every column block is written by its first tile of rows (zeros when there are none).
  at::Tensor grad_weight_flat = at::empty({shape.out, features}, compute);  // [K, P*Q]
  const at::Tensor grad_bias = grad_out_compute.sum(0);                     // [K]

  if (shape.batch > 0) {
    const auto [u_gated, v_gated, weight_flat] =
        bilinear_operands(u, v, weight, gate, compute_dtype);
    const BilinearTiling tiling = bilinear_tiling<Kernels>(shape, compute_dtype);
    // Each worker takes a share of the rows for grad_u and grad_v, and a share of p for grad_W.
    Kernels::run_workers(tiling.workers, [&](int64_t worker) {
      bilinear_input_grads_rows<Kernels>(grad_out_compute, u_gated, v_gated, weight_flat, tiling,
                                         tiling.share_begin(worker, shape.batch),
                                         tiling.share_begin(worker + 1, shape.batch), grad_u,
                                         grad_v);
      bilinear_weight_grad_columns<Kernels>(grad_out_compute, u_gated, v_gated, tiling,
                                            tiling.share_begin(worker, shape.in1),
                                            tiling.share_begin(worker + 1, shape.in1),
                                            grad_weight_flat);
    });
    // Chain rule through the gate: d sigmoid(x) / dx = s (1 - s).
    if (gate == BilinearGate::kFirst) grad_u.mul_(u_gated * (1 - u_gated));
    if (gate == BilinearGate::kSecond) grad_v.mul_(v_gated * (1 - v_gated));
  } else {
    grad_weight_flat.zero_();  // a sum over no rows
  }
  return {grad_u.to(dtype), grad_v.to(dtype),
          grad_weight_flat.view({shape.out, shape.in1, in2}).to(dtype), grad_bias.to(dtype)};
}

}  // namespace mmfast
