// Argument checks and output dtype of pq_encode, shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common/checks.h"

namespace mmfast {

struct PqEncodeShape {
  int64_t batch, dim, subspaces, centroids, dsub, subspaces_per_rep;
};

// Code dtype by codebook size (DESIGN 2.1): the narrowest integer that holds every index.
inline at::ScalarType pq_code_dtype(int64_t centroids) {
  if (centroids <= 256) return at::kByte;
  if (centroids <= 32768) return at::kShort;
  return at::kInt;
}

inline PqEncodeShape check_pq_encode_args(const at::Tensor& x, const at::Tensor& codebooks,
                                          const std::optional<at::Tensor>& perm) {
  constexpr const char* op = "pq_encode";
  MMFAST_CHECK_DIM(op, "x", x, 2);
  MMFAST_CHECK_DIM(op, "codebooks", codebooks, 3);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16,
                   op, ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  MMFAST_CHECK_FLOATING(op, "codebooks", codebooks);
  MMFAST_CHECK_SAME_DEVICE(op, "codebooks", codebooks, x);
  PqEncodeShape shape{x.size(0), x.size(1), codebooks.size(0), codebooks.size(1),
                      codebooks.size(2), 0};
  TORCH_CHECK_VALUE(shape.centroids >= 2 && shape.centroids <= 65536, op,
                    ": codebooks.size(1) (centroids) must be in [2, 65536], got ", shape.centroids);
  int64_t repetitions = 1;
  if (perm) {
    MMFAST_CHECK_DIM(op, "perm", *perm, 2);
    MMFAST_CHECK_SAME_DEVICE(op, "perm", *perm, x);
    TORCH_CHECK_TYPE(perm->scalar_type() == at::kLong, op, ": perm must be int64, got ",
                     perm->scalar_type());
    TORCH_CHECK_VALUE(perm->size(1) == shape.dim, op, ": perm must have shape [R, ", shape.dim,
                      "] to match x, got ", perm->sizes());
    repetitions = perm->size(0);
  }
  TORCH_CHECK_VALUE(repetitions > 0 && shape.subspaces % repetitions == 0, op,
                    ": codebooks.size(0)=", shape.subspaces,
                    " must be a multiple of the repetitions R=", repetitions);
  shape.subspaces_per_rep = shape.subspaces / repetitions;
  TORCH_CHECK_VALUE(shape.subspaces_per_rep * shape.dsub == shape.dim, op, ": codebooks of shape ",
                    codebooks.sizes(), " cover ", shape.subspaces_per_rep, " x ", shape.dsub, " = ",
                    shape.subspaces_per_rep * shape.dsub, " dimensions per repetition, but x has ",
                    shape.dim);
  return shape;
}

// Value checks that read the data: run only when there is work to do. Finiteness is skipped in
// the "shapes" checks mode (checks.h); the perm range guards memory and is not.
// One reduction (one sync on CUDA); only the failure path looks for the first bad row.
inline void check_pq_x_finite(const at::Tensor& x) {
  if (at::isfinite(x).all().item<bool>()) return;
  const int64_t row = (~at::isfinite(x)).any(1).nonzero()[0][0].item<int64_t>();
  TORCH_CHECK_VALUE(false, "pq_encode: x must be finite, but row ", row,
                    " has a NaN or infinite value");
}

inline void check_pq_codebooks_finite(const at::Tensor& codebooks) {
  TORCH_CHECK_VALUE(at::isfinite(codebooks).all().item<bool>(),
                    "pq_encode: codebooks must be finite, found a NaN or infinite value");
}

inline void check_pq_perm_columns(const at::Tensor& perm_contiguous, int64_t dim) {
  if (!perm_contiguous.defined() || perm_contiguous.numel() == 0) return;
  const auto [low, high] = min_max(perm_contiguous);
  TORCH_CHECK_VALUE(low >= 0 && high < dim,
                    "pq_encode: perm values must be column indices in [0, ", dim, ")");
}

}  // namespace mmfast
