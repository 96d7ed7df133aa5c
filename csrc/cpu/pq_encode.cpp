// pq_encode on the CPU (DESIGN 2.1): for every subspace, the nearest centroid of each row.
//
// The distance |x - c|^2 = |x|^2 - 2 x.c + |c|^2 needs only |c|^2 - 2 x.c for an argmin, which is
// a GEMM tile with a running-minimum epilogue. Rows are processed in blocks; for each block and
// subspace, centroids are swept in register-sized panels and the B x C distance matrix is never
// materialized (faiss writes it whole and reads it back, which is what this kernel avoids).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/pq_encode_args.h"
#include "common/simd.h"

namespace mmfast {
namespace {

using simd::kLanes;
using simd::vfloat;
using simd::vint;

// Register tile of the micro-kernel: kRows rows of x against kVecs vectors of centroids.
#if defined(__AVX512F__)
constexpr int kRows = 6, kVecs = 4;  // 24 accumulators + 4 centroid vectors of 32 zmm registers
#else
constexpr int kRows = 4, kVecs = 2;  // 8 accumulators + 2 centroid vectors of 16 registers
#endif
constexpr int kPanel = kLanes * kVecs;  // centroids per panel
constexpr int kRowBlock = kRows * 4;    // rows per parallel work item
constexpr int kDepth = 64;              // dimensions per pass: a [kDepth, kPanel] slice is 16 KB

// Codebooks repacked for the micro-kernel. For subspace s and panel p:
// weights[s][p][k][j] = -2 * c[p*kPanel + j][k], norms[s][p][j] = |c|^2, +inf for the padding
// centroids past C so that they never win.
struct PackedCodebooks {
  int64_t dsub = 0;
  int64_t panels = 0;
  std::vector<float> weights;  // [S, panels, dsub, kPanel]
  std::vector<float> norms;    // [S, panels, kPanel]

  const float* panel(int64_t s, int64_t p) const {
    return weights.data() + (s * panels + p) * dsub * kPanel;
  }
  const float* bias(int64_t s, int64_t p) const { return norms.data() + (s * panels + p) * kPanel; }
};

PackedCodebooks pack_codebooks(const at::Tensor& codebooks) {
  const at::Tensor cb = codebooks.to(at::kFloat).contiguous();  // [S, C, dsub]
  const int64_t subspaces = cb.size(0), centroids = cb.size(1), dsub = cb.size(2);
  PackedCodebooks packed;
  packed.dsub = dsub;
  packed.panels = (centroids + kPanel - 1) / kPanel;
  packed.weights.resize(subspaces * packed.panels * dsub * kPanel);
  packed.norms.resize(subspaces * packed.panels * kPanel);
  const float* src = cb.data_ptr<float>();
  at::parallel_for(0, subspaces * packed.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t sp = begin; sp < end; ++sp) {
      const int64_t s = sp / packed.panels, p = sp % packed.panels;
      float* weights = packed.weights.data() + sp * dsub * kPanel;
      float* norms = packed.norms.data() + sp * kPanel;
      for (int j = 0; j < kPanel; ++j) {
        const int64_t c = p * kPanel + j;
        if (c >= centroids) {
          for (int64_t k = 0; k < dsub; ++k) weights[k * kPanel + j] = 0.f;
          norms[j] = std::numeric_limits<float>::infinity();
          continue;
        }
        const float* centroid = src + (s * centroids + c) * dsub;
        double norm = 0.0;
        for (int64_t k = 0; k < dsub; ++k) {
          weights[k * kPanel + j] = -2.f * centroid[k];
          norm += double(centroid[k]) * centroid[k];
        }
        norms[j] = static_cast<float>(norm);
      }
    }
  });
  return packed;
}

// One row tile against one panel over the dimensions [k0, k0 + depth) of the subspace. The
// first chunk starts from |c|^2, later ones from the partial sums the previous chunk left in
// `partial` ([kTileRows, kPanel]); the last folds the distances into each row's lane-wise
// running minimum. Centroid indices grow along a lane, so strict < keeps the lowest index on ties.
template <int kTileRows, bool kFirstChunk, bool kLastChunk>
inline void panel_tile(const float* __restrict xs, int64_t dsub, int64_t depth,
                       const float* __restrict panel, const float* __restrict bias,
                       float* __restrict partial, int32_t first_centroid,
                       vfloat* __restrict best, vint* __restrict best_index) {
  vfloat acc[kTileRows][kVecs];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) {
      acc[r][v] = simd::load((kFirstChunk ? bias : partial + r * kPanel) + v * kLanes);
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    vfloat w[kVecs];
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) w[v] = simd::load(panel + k * kPanel + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const vfloat xv = simd::broadcast(xs[r * dsub + k]);
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) acc[r][v] += xv * w[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) {
      if constexpr (kLastChunk) {
        const vint index = simd::iota(first_centroid + v * kLanes);
        const vint closer = acc[r][v] < best[r];
        best[r] = closer ? acc[r][v] : best[r];
        best_index[r] = closer ? index : best_index[r];
      } else {
        simd::store(partial + r * kPanel + v * kLanes, acc[r][v]);
      }
    }
  }
}

// Turns the runtime (rows, first, last) of a tile into template constants.
template <int kTileRows = kRows>
inline void dispatch_tile(int rows, bool first, bool last, const float* xs, int64_t dsub,
                          int64_t depth, const float* panel, const float* bias, float* partial,
                          int32_t first_centroid, vfloat* best, vint* best_index) {
  if constexpr (kTileRows > 0) {
    if (rows != kTileRows) {
      dispatch_tile<kTileRows - 1>(rows, first, last, xs, dsub, depth, panel, bias, partial,
                                   first_centroid, best, best_index);
    } else if (first && last) {
      panel_tile<kTileRows, true, true>(xs, dsub, depth, panel, bias, partial, first_centroid,
                                        best, best_index);
    } else if (first) {
      panel_tile<kTileRows, true, false>(xs, dsub, depth, panel, bias, partial, first_centroid,
                                         best, best_index);
    } else if (last) {
      panel_tile<kTileRows, false, true>(xs, dsub, depth, panel, bias, partial, first_centroid,
                                         best, best_index);
    } else {
      panel_tile<kTileRows, false, false>(xs, dsub, depth, panel, bias, partial, first_centroid,
                                          best, best_index);
    }
  }
}

// True when every value is finite. Integer tests of the exponent bits vectorize, where
// std::isfinite in a reduction does not.
inline bool all_finite(const float* values, int64_t count) {
  uint32_t non_finite = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    __builtin_memcpy(&bits, values + i, sizeof(bits));
    non_finite |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return non_finite == 0;
}

// The lane holding the smallest distance, the lowest centroid index among equal ones.
inline int32_t nearest(const vfloat& best, const vint& best_index) {
#if defined(__AVX512F__)
  // two reductions by halves: the lane-by-lane chain below took twice the distances' FMAs
  // (dsub 16, 64 centroids). Distances are finite, so some lane equals the minimum.
  const float value = _mm512_reduce_min_ps(best);
  const __mmask16 at_minimum = _mm512_cmp_ps_mask(best, _mm512_set1_ps(value), _CMP_EQ_OQ);
  return _mm512_mask_reduce_min_epi32(at_minimum, reinterpret_cast<__m512i>(best_index));
#else
  float value = best[0];
  int32_t index = best_index[0];
  for (int lane = 1; lane < kLanes; ++lane) {
    const bool take = best[lane] < value || (best[lane] == value && best_index[lane] < index);
    value = take ? best[lane] : value;
    index = take ? best_index[lane] : index;
  }
  return index;
#endif
}

template <typename scalar_t, typename code_t>
void encode_cpu(const at::Tensor& x, const PackedCodebooks& packed, int64_t subspaces,
                const int64_t* perm, int64_t subspaces_per_rep, at::Tensor& codes) {
  const int64_t batch = x.size(0), dim = x.size(1), dsub = packed.dsub;
  const int64_t row_stride = x.stride(0), col_stride = x.stride(1);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  code_t* codes_data = codes.data_ptr<code_t>();
  const int64_t blocks = (batch + kRowBlock - 1) / kRowBlock;

  // Sub-vector of one row as float32: permuted columns, a unit-stride span, or a strided one.
  const auto gather = [&](const scalar_t* row, const int64_t* columns, int64_t first_column,
                          float* __restrict dst) {
    if (columns) {
      for (int64_t k = 0; k < dsub; ++k) dst[k] = static_cast<float>(row[columns[k] * col_stride]);
    } else if (col_stride == 1) {
      for (int64_t k = 0; k < dsub; ++k) dst[k] = static_cast<float>(row[first_column + k]);
    } else {
      for (int64_t k = 0; k < dsub; ++k) {
        dst[k] = static_cast<float>(row[(first_column + k) * col_stride]);
      }
    }
  };

  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<float> xs(kRowBlock * dsub);  // [rows, dsub] sub-vectors of one subspace
    std::vector<vfloat> best(kRowBlock);
    std::vector<vint> best_index(kRowBlock);
    std::vector<float> partial(kRowBlock * kPanel);  // distances carried between depth chunks
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t row0 = block * kRowBlock;
      const int rows = static_cast<int>(std::min<int64_t>(kRowBlock, batch - row0));

      for (int64_t s = 0; s < subspaces; ++s) {
        const int64_t rep = s / subspaces_per_rep, m = s % subspaces_per_rep;
        const int64_t* columns = perm ? perm + rep * dim + m * dsub : nullptr;
        for (int i = 0; i < rows; ++i) {
          gather(x_data + (row0 + i) * row_stride, columns, m * dsub, xs.data() + i * dsub);
          best[i] = simd::broadcast(std::numeric_limits<float>::infinity());
          best_index[i] = vint{};
        }
        if (!all_finite(xs.data(), rows * dsub)) {
          for (int i = 0; i < rows; ++i) {
            TORCH_CHECK_VALUE(all_finite(xs.data() + i * dsub, dsub),
                              "pq_encode: x must be finite, but row ", row0 + i,
                              " has a NaN or infinite value");
          }
        }

        // Panel-outer order with the dimensions in chunks keeps one [kDepth, kPanel] slice of
        // the panel hot in L1 while every row tile of the block passes over it.
        for (int64_t p = 0; p < packed.panels; ++p) {
          const float* bias = packed.bias(s, p);
          const int32_t first = static_cast<int32_t>(p * kPanel);
          for (int64_t k0 = 0; k0 < dsub; k0 += kDepth) {
            const int64_t depth = std::min<int64_t>(kDepth, dsub - k0);
            const float* panel = packed.panel(s, p) + k0 * kPanel;
            for (int i = 0; i < rows; i += kRows) {
              dispatch_tile(std::min(kRows, rows - i), k0 == 0, k0 + depth == dsub,
                            xs.data() + i * dsub + k0, dsub, depth, panel, bias,
                            partial.data() + i * kPanel, first, &best[i], &best_index[i]);
            }
          }
        }

        for (int i = 0; i < rows; ++i) {
          const int32_t code = nearest(best[i], best_index[i]);
          codes_data[(row0 + i) * subspaces + s] = static_cast<code_t>(code);
        }
      }
    }
  });
}

at::Tensor pq_encode_cpu(const at::Tensor& x, const at::Tensor& codebooks,
                         const std::optional<at::Tensor>& perm) {
  const PqEncodeShape shape = check_pq_encode_args(x, codebooks, perm);
  at::Tensor codes = at::empty({shape.batch, shape.subspaces},
                               x.options().dtype(pq_code_dtype(shape.centroids)));
  if (shape.batch == 0 || shape.subspaces == 0) return codes;
  const at::Tensor perm_c = perm ? perm->contiguous() : at::Tensor();
  check_pq_perm_columns(perm_c, shape.dim);
  if (full_checks()) {
    check_pq_codebooks_finite(codebooks);
    // The blocks below check only the columns perm gathers (at no cost, in every checks mode);
    // with a perm a row is refused whole, as on CUDA.
    if (perm) check_pq_x_finite(x);
  }

  const PackedCodebooks packed = pack_codebooks(codebooks);
  const int64_t* perm_data = perm ? perm_c.const_data_ptr<int64_t>() : nullptr;
  const int64_t subspaces = shape.subspaces, per_rep = shape.subspaces_per_rep;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pq_encode_cpu", [&] {
    switch (codes.scalar_type()) {
      case at::kByte:
        encode_cpu<scalar_t, uint8_t>(x, packed, subspaces, perm_data, per_rep, codes);
        break;
      case at::kShort:
        encode_cpu<scalar_t, int16_t>(x, packed, subspaces, perm_data, per_rep, codes);
        break;
      default:
        encode_cpu<scalar_t, int32_t>(x, packed, subspaces, perm_data, per_rep, codes);
    }
  });
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) { m.impl("pq_encode", &pq_encode_cpu); }

}  // namespace mmfast
