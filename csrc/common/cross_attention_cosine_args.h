// Argument checks of cross_attention_cosine and its backward, shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common/checks.h"
#include "common/host_device.h"

namespace mmfast {

inline constexpr double kCosineEps = 1e-8;  // cos(a, b) = a.b / (max(|a|, eps) max(|b|, eps))

struct CrossAttentionShape {
  int64_t batch, regions, words, dim;

  // Whether the kernels form That = P^T V (N Kr d multiply-adds), or reach T_j.That_j and
  // |That_j| through the region Gram V V^T (Kr Kr (d + N)): the cheaper of the two. That is
  // also the exact route: a That that nearly cancels loses its norm to rounding in the Gram,
  // and the cosine's gradient divides by that norm.
  bool forms_t_hat() const { return words * dim <= regions * (dim + words); }
};

inline CrossAttentionShape check_cross_attention_cosine_args(
    const char* op, const at::Tensor& V, const at::Tensor& T,
    const std::optional<at::Tensor>& t_lengths) {
  MMFAST_CHECK_DIM(op, "V", V, 3);
  MMFAST_CHECK_DIM(op, "T", T, 3);
  MMFAST_CHECK_FLOATING(op, "V", V);
  MMFAST_CHECK_SAME_DTYPE(op, "T", T, V);
  MMFAST_CHECK_SAME_DEVICE(op, "T", T, V);
  TORCH_CHECK_VALUE(T.size(0) == V.size(0) && T.size(2) == V.size(2), op,
                    ": T must have shape [", V.size(0), ", N, ", V.size(2),
                    "] to match V, got ", T.sizes());
  if (t_lengths) {
    MMFAST_CHECK_DIM(op, "t_lengths", *t_lengths, 1);
    TORCH_CHECK_TYPE(t_lengths->scalar_type() == at::kLong, op, ": t_lengths must be int64, got ",
                     t_lengths->scalar_type());
    MMFAST_CHECK_SAME_DEVICE(op, "t_lengths", *t_lengths, V);
    TORCH_CHECK_VALUE(t_lengths->size(0) == V.size(0), op, ": t_lengths must have shape [",
                      V.size(0), "], got ", t_lengths->sizes());
  }
  return {V.size(0), V.size(1), T.size(1), V.size(2)};
}

// Word counts as a contiguous int64 tensor on the input's device, every value checked to lie in
// [0, N] when `check_range` (CUDA skips the host read in the "shapes" checks mode and while
// capturing a graph, and asserts the range in its kernel instead); None means every word is valid.
inline at::Tensor checked_word_counts(const char* op, const std::optional<at::Tensor>& t_lengths,
                                      const CrossAttentionShape& shape, const at::Tensor& like,
                                      bool check_range) {
  if (!t_lengths) return at::full({shape.batch}, shape.words, like.options().dtype(at::kLong));
  at::Tensor counts = t_lengths->contiguous();
  if (check_range && shape.batch > 0) {
    const auto [low, high] = min_max(counts);
    TORCH_CHECK_VALUE(low >= 0 && high <= shape.words, op, ": t_lengths values must be in [0, ",
                      shape.words, "] (N = T.size(1)), got values from ", low, " to ", high);
  }
  return counts;
}

// Incoming gradients of the backward op: one per output, shaped like it.
inline void check_cross_attention_cosine_grads(const char* op, const at::Tensor& grad_v_bar,
                                               const at::Tensor& grad_t_bar, const at::Tensor& V,
                                               const CrossAttentionShape& shape) {
  // a gradient on another device than V would hand the kernels a pointer they cannot read
  MMFAST_CHECK_SAME_DEVICE(op, "grad_v_bar", grad_v_bar, V);
  MMFAST_CHECK_SAME_DEVICE(op, "grad_t_bar", grad_t_bar, V);
  TORCH_CHECK_VALUE(grad_v_bar.sizes() == at::IntArrayRef({shape.batch, shape.regions}), op,
                    ": grad_v_bar must have shape [", shape.batch, ", ", shape.regions, "], got ",
                    grad_v_bar.sizes());
  TORCH_CHECK_VALUE(grad_t_bar.sizes() == at::IntArrayRef({shape.batch, shape.words}), op,
                    ": grad_t_bar must have shape [", shape.batch, ", ", shape.words, "], got ",
                    grad_t_bar.sizes());
}

// The gradient of c = a.b / (max(|a|, eps) max(|b|, eps)) times g is
// `alpha * b + self * a` for a and `alpha * a + other * b` for b (a norm at or below eps is a
// constant of the clamp and contributes no term). The GEMM routes use those coefficients; one
// element at a time, grad_a and grad_b take the equal form (g/|a|) (b/|b| - c a/|a|), whose two
// terms cancel exactly when a and b are parallel (always at d = 1: a/|a| and c are exactly +-1)
// where alpha * b + self * a rounds each term apart and leaves ~1e-7 g/|a|, large as |a| -> 0.
template <typename acc_t>
struct CosineGrad {
  acc_t alpha, self, other;
  acc_t g, na, nb, cos_a, cos_b;  // clamped norms; cos_a = 0 when |a| <= eps, cos_b likewise

  MMFAST_HOST_DEVICE acc_t grad_a(acc_t a_k, acc_t b_k) const {
    return g / na * (b_k / nb - cos_a * (a_k / na));
  }
  MMFAST_HOST_DEVICE acc_t grad_b(acc_t a_k, acc_t b_k) const {
    return g / nb * (a_k / na - cos_b * (b_k / nb));
  }
};

template <typename acc_t>
MMFAST_HOST_DEVICE inline CosineGrad<acc_t> cosine_grad(acc_t g, acc_t dot, acc_t norm_a, acc_t norm_b) {
  const acc_t eps = static_cast<acc_t>(kCosineEps);
  const acc_t na = norm_a > eps ? norm_a : eps, nb = norm_b > eps ? norm_b : eps;
  const acc_t alpha = g / (na * nb), cos = dot / (na * nb);
  const acc_t cos_a = norm_a > eps ? cos : acc_t(0), cos_b = norm_b > eps ? cos : acc_t(0);
  return {alpha, norm_a > eps ? -alpha * dot / (na * na) : acc_t(0),
          norm_b > eps ? -alpha * dot / (nb * nb) : acc_t(0), g, na, nb, cos_a, cos_b};
}

template <typename acc_t>
MMFAST_HOST_DEVICE inline acc_t cosine(acc_t dot, acc_t norm_a, acc_t norm_b) {
  const acc_t eps = static_cast<acc_t>(kCosineEps);
  return dot / ((norm_a > eps ? norm_a : eps) * (norm_b > eps ? norm_b : eps));
}

}  // namespace mmfast
