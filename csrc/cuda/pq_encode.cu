// pq_encode on CUDA (DESIGN 2.1). One thread per row and one grid row per subspace: the block
// sweeps the subspace's centroids in chunks staged through shared memory, keeping a running
// argmin in registers, so the B x C distance matrix never exists in global memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "common/pq_encode_args.h"
#include "cuda/value_checks.cuh"

namespace mmfast {
namespace {

constexpr int kThreads = 128;  // rows per block, one per thread
constexpr int kChunk = 32;     // centroids per shared-memory chunk (one accumulator each)
constexpr int64_t kMaxGridY = 65535;

// kDepth: dimensions per shared-memory stage, the smallest of 8, 16 and 32 that holds dsub (32
// for longer sub-vectors, staged in several passes): a fixed 32 would spend 75% of the FMAs on
// zero padding at dsub = 8.
template <typename scalar_t, typename code_t, int kDepth>
__global__ void pq_encode_kernel(const scalar_t* __restrict__ x, int64_t batch, int64_t dim,
                                 int64_t row_stride, int64_t col_stride,
                                 const float* __restrict__ codebooks,  // [S, C, dsub]
                                 int64_t subspaces, int64_t centroids, int64_t dsub,
                                 const int64_t* __restrict__ perm,  // [R, D] or null
                                 int64_t subspaces_per_rep, code_t* __restrict__ codes) {
  __shared__ float x_tile[kDepth][kThreads + 1];  // +1: rows written along a column, no conflicts
  __shared__ float c_tile[kDepth][kChunk + 1];  // +1: a warp stores one centroid's column
  __shared__ float c_norm[kChunk];

  const int64_t row0 = int64_t(blockIdx.x) * kThreads;
  const int tid = threadIdx.x;

  // Grid rows stride over the subspaces: gridDim.y stops at 65535, large RSPQ has more. The
  // bound is the block's, so every thread takes the same trips and the barriers stay uniform.
  for (int64_t s = blockIdx.y; s < subspaces; s += gridDim.y) {
    const int64_t rep = s / subspaces_per_rep, m = s % subspaces_per_rep;
    const float* book = codebooks + s * centroids * dsub;
    float best = FLT_MAX;
    int32_t best_index = 0;

    for (int64_t c0 = 0; c0 < centroids; c0 += kChunk) {
      float acc[kChunk];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) acc[c] = 0.f;
      float norm = 0.f;  // |c|^2 of centroid c0 + tid, summed by the first kChunk threads

      for (int64_t k0 = 0; k0 < dsub; k0 += kDepth) {
        __syncthreads();
        // Stage x[row0 : row0+kThreads, k0 : k0+kDepth] (consecutive threads, consecutive
        // columns).
        for (int e = tid; e < kThreads * kDepth; e += kThreads) {
          const int r = e / kDepth, k = e % kDepth;
          const int64_t row = row0 + r, kk = k0 + k;
          float value = 0.f;
          if (row < batch && kk < dsub) {
            const int64_t col = perm ? perm[rep * dim + m * dsub + kk] : m * dsub + kk;
            // The host checks perm's range in the "full" checks mode; this guards the others.
            CUDA_KERNEL_ASSERT(col >= 0 && col < dim);
            value = static_cast<float>(x[row * row_stride + col * col_stride]);
          }
          x_tile[k][r] = value;
        }
        for (int e = tid; e < kChunk * kDepth; e += kThreads) {
          const int c = e / kDepth, k = e % kDepth;
          const int64_t cc = c0 + c, kk = k0 + k;
          c_tile[k][c] = (cc < centroids && kk < dsub) ? book[cc * dsub + kk] : 0.f;
        }
        __syncthreads();
        if (tid < kChunk) {
#pragma unroll
          for (int k = 0; k < kDepth; ++k) norm = fmaf(c_tile[k][tid], c_tile[k][tid], norm);
        }
#pragma unroll 4
        for (int k = 0; k < kDepth; ++k) {
          const float xv = x_tile[k][tid];
#pragma unroll
          for (int c = 0; c < kChunk; ++c) acc[c] = fmaf(xv, c_tile[k][c], acc[c]);
        }
      }
      // Written only after the k loop's barriers, so no thread still reads the previous chunk's.
      if (tid < kChunk) c_norm[tid] = norm;
      __syncthreads();
      // Ascending centroid order with strict < keeps the lowest index on ties.
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        const float distance = c_norm[c] - 2.f * acc[c];
        if (c0 + c < centroids && distance < best) {
          best = distance;
          best_index = static_cast<int32_t>(c0 + c);
        }
      }
    }
    const int64_t row = row0 + tid;
    if (row < batch) codes[row * subspaces + s] = static_cast<code_t>(best_index);
  }
}

template <int kDepth>
void launch(const at::Tensor& x, const at::Tensor& book, const PqEncodeShape& shape,
            const int64_t* perm, at::Tensor& codes) {
  const dim3 grid(static_cast<unsigned>((shape.batch + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min(shape.subspaces, kMaxGridY)));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // float64 x is refused by the checks, so no float64 kernel is compiled.
  AT_DISPATCH_V2(x.scalar_type(), "pq_encode_cuda", AT_WRAP([&] {
    auto run = [&](auto* out) {
      using code_t = std::remove_pointer_t<decltype(out)>;
      pq_encode_kernel<scalar_t, code_t, kDepth><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), shape.batch, shape.dim, x.stride(0), x.stride(1),
          book.const_data_ptr<float>(), shape.subspaces, shape.centroids, shape.dsub, perm,
          shape.subspaces_per_rep, out);
    };
    switch (codes.scalar_type()) {
      case at::kByte: run(codes.data_ptr<uint8_t>()); break;
      case at::kShort: run(codes.data_ptr<int16_t>()); break;
      default: run(codes.data_ptr<int32_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }), at::kFloat, at::kHalf, at::kBFloat16);
}

at::Tensor pq_encode_cuda(const at::Tensor& x, const at::Tensor& codebooks,
                          const std::optional<at::Tensor>& perm) {
  const PqEncodeShape shape = check_pq_encode_args(x, codebooks, perm);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor codes =
      at::empty({shape.batch, shape.subspaces}, x.options().dtype(pq_code_dtype(shape.centroids)));
  if (shape.batch == 0 || shape.subspaces == 0) return codes;

  const at::Tensor perm_c = perm ? perm->contiguous() : at::Tensor();
  if (cuda_value_checks()) {
    check_pq_x_finite(x);
    check_pq_codebooks_finite(codebooks);
    check_pq_perm_columns(perm_c, shape.dim);
  }
  const at::Tensor book = codebooks.to(at::kFloat).contiguous();
  const int64_t* perm_data = perm ? perm_c.const_data_ptr<int64_t>() : nullptr;
  if (shape.dsub <= 8) {
    launch<8>(x, book, shape, perm_data, codes);
  } else if (shape.dsub <= 16) {
    launch<16>(x, book, shape, perm_data, codes);
  } else {
    launch<32>(x, book, shape, perm_data, codes);
  }
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) { m.impl("pq_encode", &pq_encode_cuda); }

}  // namespace mmfast
