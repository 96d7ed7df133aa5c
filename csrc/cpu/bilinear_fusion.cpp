// bilinear_fusion on the CPU (DESIGN 2.2).
//
// The forward is one fused kernel: each register tile of outputs (a block of classes times a block
// of batch rows) sums w[k,p,q] * u[b,p] * v[b,q] over all (p, q), forming each product u*v in a
// register right before the FMAs that use it, so the outer product is never written anywhere.
// The set-up and the backward are common/bilinear_fusion_tiled.h (shared with CUDA), a tiled GEMM
// algorithm; this file holds its two per-row kernels: building a slice of T, and reducing a slice
// of G to grad_u and grad_v.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bilinear_fusion_tiled.h"
#include "common/simd.h"

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

// The fused forward's register tile: kClasses classes times kRowVectors vectors of batch rows,
// kClasses * kRowVectors accumulators, the kRowVectors products u*v and the kRowVectors values of
// u in registers (24 + 2 + 2 of the 32 on AVX-512). Per (p, q) the tile does kRowVectors multiplies for kClasses * kRowVectors FMAs.
template <typename scalar_t>
struct ForwardTile {
  using Vec = typename simd::Vector<scalar_t>::type;
  static constexpr int64_t kLanes = simd::Vector<scalar_t>::kLanes;
  static constexpr int64_t kRowVectors = 2;
  static constexpr int64_t kRows = kLanes * kRowVectors;
  static constexpr int64_t kClasses = (simd::kVectorRegisters - 8) / kRowVectors;
  // A block of classes' weights for a chunk of p aims at this size, so that it stays in L2 while
  // every block of rows streams past it.
  static constexpr int64_t kPanelBytes = int64_t(512) << 10;
  // The outputs of a group of row blocks aim at this size, to stay in L2 beside the panel.
  static constexpr int64_t kOutputBytes = int64_t(512) << 10;

  // out[r, c] += sum over p in [p_begin, p_end) and all q of w[c, p*Q + q] u[r,p] v[r,q], for
  // r < rows of one block of rows and c < classes of one block of classes (out's row stride is
  // out_stride; the tile computes all kRows x kClasses and drops the rest):
  //   u_rows [P][kRows], v_rows [Q][kRows]  the block's inputs, transposed: a vector is kLanes rows
  //   w [kClasses][w_stride]                the classes' rows of W viewed as [K, P*Q]
  // Not inlined: on its own the loop gets all the general registers for its kClasses row offsets
  // into W; inlined into the caller's loops, some of them spill to mask registers and the stack,
  // and moving them back costs the FMA ports (measured 10% on AVX-512).
  __attribute__((noinline)) static void run(const scalar_t* __restrict u_rows,
                                            const scalar_t* __restrict v_rows,
                                            const scalar_t* __restrict w, int64_t w_stride,
                                            int64_t in2, int64_t p_begin, int64_t p_end,
                                            scalar_t* __restrict out, int64_t out_stride,
                                            int64_t rows, int64_t classes) {
    Vec acc[kClasses][kRowVectors] = {};
    w += p_begin * in2;
    for (int64_t p = p_begin; p < p_end; ++p) {
      Vec u_p[kRowVectors];
#pragma GCC unroll 4
      for (int64_t j = 0; j < kRowVectors; ++j) {
        u_p[j] = simd::load(u_rows + p * kRows + j * kLanes);
      }
      const scalar_t* v_q = v_rows;
      for (int64_t q = 0; q < in2; ++q, ++w, v_q += kRows) {
        Vec uv[kRowVectors];
#pragma GCC unroll 4
        for (int64_t j = 0; j < kRowVectors; ++j) uv[j] = u_p[j] * simd::load(v_q + j * kLanes);
#pragma GCC unroll 16
        for (int64_t c = 0; c < kClasses; ++c) {
#pragma GCC unroll 4
          for (int64_t j = 0; j < kRowVectors; ++j) acc[c][j] += uv[j] * w[c * w_stride];
        }
      }
    }
    // The accumulators hold classes by rows; out is rows by classes.
    scalar_t sums[kClasses][kRows];
    __builtin_memcpy(sums, acc, sizeof(sums));
    for (int64_t r = 0; r < rows; ++r) {
      scalar_t* out_row = out + r * out_stride;
      for (int64_t c = 0; c < classes; ++c) out_row[c] += sums[c][r];
    }
  }
};

// out += sum_{p,q} W[:,p,q] u[:,p] v[:,q] through ForwardTile. The inputs are packed by
// blocks of rows, and the last, partial block of classes gets a zero-padded copy of its weights;
// the other classes read W in place. Each thread takes a contiguous range of row blocks and, per
// chunk of p and block of classes, sweeps its row blocks past the same weights.
template <typename scalar_t>
void fused_forward(const at::Tensor& u_gated, const at::Tensor& v_gated,
                   const at::Tensor& weight_flat, at::Tensor& out) {
  using Tile = ForwardTile<scalar_t>;
  constexpr int64_t kRows = Tile::kRows, kClasses = Tile::kClasses;
  const int64_t batch = u_gated.size(0), in1 = u_gated.size(1), in2 = v_gated.size(1),
                classes = weight_flat.size(0), features = in1 * in2;
  const int64_t row_blocks = (batch + kRows - 1) / kRows;
  const int64_t full_class_blocks = classes / kClasses;
  const int64_t class_blocks = (classes + kClasses - 1) / kClasses;

  // [row_blocks, P or Q, kRows]: the rows of a block side by side.
  const auto pack_rows = [&](const at::Tensor& x) {
    return at::constant_pad_nd(x, {0, 0, 0, row_blocks * kRows - batch})
        .view({row_blocks, kRows, x.size(1)})
        .transpose(1, 2)
        .contiguous();
  };
  const at::Tensor u_packed = pack_rows(u_gated), v_packed = pack_rows(v_gated);
  const at::Tensor w_tail = at::constant_pad_nd(
      weight_flat.narrow(0, full_class_blocks * kClasses, classes - full_class_blocks * kClasses),
      {0, 0, 0, class_blocks * kClasses - classes});

  const int64_t p_chunk = std::clamp<int64_t>(
      Tile::kPanelBytes / (kClasses * std::max<int64_t>(1, in2) * int64_t(sizeof(scalar_t))), 1,
      std::max<int64_t>(1, in1));
  const scalar_t* u_data = u_packed.const_data_ptr<scalar_t>();
  const scalar_t* v_data = v_packed.const_data_ptr<scalar_t>();
  const scalar_t* w_data = weight_flat.const_data_ptr<scalar_t>();
  const scalar_t* w_tail_data = w_tail.const_data_ptr<scalar_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  // The rows of a group of row blocks stay in L2 while every chunk of p and block of classes
  // passes over them, so each output is read and written in cache; the group is at least 4 row
  // blocks, so that each weight fetched from memory is used on 4 * kRows rows.
  const int64_t group_blocks = std::max<int64_t>(
      4, Tile::kOutputBytes / (kRows * std::max<int64_t>(1, classes) * int64_t(sizeof(scalar_t))));
  // Each thread takes a contiguous range of at least 4 row blocks: below that the weights' trips
  // through the cache cost more than a second thread saves.
  at::parallel_for(0, row_blocks, 4, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; group += group_blocks) {
      const int64_t group_end = std::min(end, group + group_blocks);
      for (int64_t p0 = 0; p0 < in1; p0 += p_chunk) {
        const int64_t p1 = std::min(in1, p0 + p_chunk);
        for (int64_t class_block = 0; class_block < class_blocks; ++class_block) {
          const int64_t class0 = class_block * kClasses;
          const scalar_t* w = class_block < full_class_blocks ? w_data + class0 * features
                                                              : w_tail_data;
          for (int64_t row_block = group; row_block < group_end; ++row_block) {
            const int64_t row0 = row_block * kRows;
            Tile::run(u_data + row_block * in1 * kRows, v_data + row_block * in2 * kRows, w,
                      features, in2, p0, p1, out_data + row0 * classes + class0, classes,
                      std::min(kRows, batch - row0), std::min(kClasses, classes - class0));
          }
        }
      }
    }
  });
}

struct CpuKernels {
  static void add_forward(const at::Tensor& u_gated, const at::Tensor& v_gated,
                          const at::Tensor& weight_flat, at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bilinear_fusion_cpu", [&] {
      fused_forward<scalar_t>(u_gated, v_gated, weight_flat, out);
    });
  }

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
  return bilinear_fusion_forward<CpuKernels>(u, v, weight, bias, gate);
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
